"""A local cache of manifests already read, so that listing a large backend again reads none.

A backend of 10,000 tenants x 30 snapshots holds 300,000 manifests, and picking each tenant's
latest needs the ``tenant_id`` and ``created_at_unix_micros`` inside every one of them. A listing
already sees each manifest object's version for free (S3 returns the ETag with each key, a folder
gives inode, size and times: :class:`backends.base.ManifestRef`), so a manifest read once is kept
here, keyed by (store, snapshot id, version), and reused for as long as the listing reports the
same version. What the cache may do, and what it may not:

- It is only ever asked about snapshots the backend's listing names, at the version the listing
  gives: a snapshot deleted from the backend is gone from the next listing whatever the cache
  holds, and a manifest rewritten in place has a new version, so it is read again.
- It keeps the manifest's bytes as they were read, and hands them back to be parsed again, with
  every check of FORMAT.md, when a manifest is asked for. Beside them it keeps what picking the
  latest needs (tenant, creation time), each row with a checksum; a row whose checksum fails is
  treated as absent, and a parsed manifest that disagrees with its row is not used.
- A file that is not a SQLite database, or not this cache's (application id, schema version,
  manifest parser), is rebuilt rather than read. Every failure to use it is a
  :class:`ManifestCacheError`, on which callers read the backend instead: a cache never fails a
  listing and never changes what it finds.

The file is ``manifests.sqlite3`` in ``$MEMRESTORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/memrestore``,
else ``~/.cache/memrestore``; ``MEMRESTORE_NO_CACHE=1`` turns it off. It takes about 1 KiB per
snapshot (300 MiB for 300,000) and may be deleted at any time.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import blake3

from memrestore.backends import manifest as manifest_module

log = logging.getLogger(__name__)
T = TypeVar("T")

CACHE_FILE = "manifests.sqlite3"
ENV_CACHE_DIR = "MEMRESTORE_CACHE_DIR"
ENV_NO_CACHE = "MEMRESTORE_NO_CACHE"

#: ``PRAGMA application_id`` of the file ("mrmc"): a SQLite file without it is not ours.
APPLICATION_ID = 0x6D726D63
#: ``PRAGMA user_version``: bump when the tables or the meaning of a row change.
SCHEMA_VERSION = 1
#: How long a process waits for another one's write to the file before going without the cache.
BUSY_TIMEOUT_SECONDS = 10.0
#: Ids per ``IN (...)`` query: well under SQLite's limit on bound parameters.
QUERY_CHUNK = 500

U64_MAX = 2**64 - 1

# SQLite's primary result codes that mean the file is damaged or not a database at all.
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_TABLES = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE stores (id INTEGER PRIMARY KEY, identity TEXT NOT NULL UNIQUE)",
    # u64 values are kept as decimal text: SQLite's integers are signed 64-bit.
    "CREATE TABLE summaries (store INTEGER NOT NULL, snapshot_id TEXT NOT NULL, version TEXT NOT NULL,"
    " tenant_id TEXT NOT NULL, created_at_unix_micros TEXT NOT NULL, row_check INTEGER NOT NULL,"
    " PRIMARY KEY (store, snapshot_id)) WITHOUT ROWID",
    # The bytes apart from the summaries, so that reading every summary reads no manifest.
    "CREATE TABLE bodies (store INTEGER NOT NULL, snapshot_id TEXT NOT NULL, version TEXT NOT NULL,"
    " raw BLOB NOT NULL, raw_check INTEGER NOT NULL, PRIMARY KEY (store, snapshot_id))",
)


def _parser_fingerprint() -> str:
    """Changes whenever the manifest parser's source does: rows parsed by another parser are
    not reused (a stricter parser may refuse what an older one accepted)."""
    try:
        source = Path(manifest_module.__file__).read_bytes()
    except OSError:  # no source file (a zipped install): the installed version says as much (imported here: only such an install needs it)
        from importlib.metadata import PackageNotFoundError, version

        try:
            source = f"memrestore {version('memrestore')}".encode()
        except PackageNotFoundError:
            source = b"unknown"
    return f"{manifest_module.CURRENT_MANIFEST_VERSION}:{blake3.blake3(source).hexdigest()[:32]}"


PARSER_FINGERPRINT = _parser_fingerprint()


class ManifestCacheError(Exception):
    """The cache could not be used; the caller reads the backend instead.

    Not a :class:`~backends.errors.RestoreError`: it never reaches a user, only a log line.
    """


@dataclass(frozen=True, slots=True)
class CachedSummary:
    """What a listing needs of a cached manifest to pick the latest, at the version it was read."""

    version: str
    tenant_id: int
    created_at_unix_micros: int


@dataclass(frozen=True, slots=True)
class CachedManifest:
    """A manifest read from a backend at ``version``: its bytes, and its summary."""

    snapshot_id: str
    version: str
    tenant_id: int
    created_at_unix_micros: int
    raw: bytes


def _is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file is damaged or not a database (not merely busy or read-only)."""
    code = getattr(exc, "sqlite_errorcode", None) or 0
    return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def _row_check(snapshot_id: str, version: str, tenant_id: str, created: str) -> int:
    return zlib.crc32(f"{snapshot_id}\0{version}\0{tenant_id}\0{created}".encode())


def default_cache_dir() -> Path | None:
    """Where the cache lives by default, or None when ``MEMRESTORE_NO_CACHE`` turns it off."""
    if os.environ.get(ENV_NO_CACHE, "").strip().lower() not in ("", "0", "false", "no", "off"):
        return None
    explicit = os.environ.get(ENV_CACHE_DIR, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "memrestore"


_shared: dict[Path, ManifestCache] = {}
_shared_lock = threading.Lock()


def default_cache() -> ManifestCache | None:
    """The process's cache at the default place (one per path), or None when it is turned off."""
    directory = default_cache_dir()
    if directory is None:
        return None
    path = (directory / CACHE_FILE).absolute()
    with _shared_lock:
        cache = _shared.get(path)
        if cache is None:
            cache = _shared[path] = ManifestCache(path)
        return cache


class ManifestCache:
    """The cache file at ``path``; opened on first use, safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._pid: int | None = None
        self._lock = threading.RLock()

    # -- what the listing asks ---------------------------------------------------------------

    def summaries(self, identity: str) -> dict[str, CachedSummary]:
        """Every intact row kept for the store ``identity``, by snapshot id."""
        rows = self._run(lambda db: db.execute(
            "SELECT s.snapshot_id, s.version, s.tenant_id, s.created_at_unix_micros, s.row_check"
            " FROM summaries s JOIN stores ON stores.id = s.store WHERE stores.identity = ?",
            (identity,),
        ).fetchall())
        out: dict[str, CachedSummary] = {}
        for sid, version, tenant, created, check in rows:
            try:
                if check != _row_check(sid, version, tenant, created):
                    continue
                tenant_id, created_at = int(tenant), int(created)
            except (TypeError, ValueError, UnicodeEncodeError):
                continue  # a damaged row is no row: the manifest is read again
            if 0 <= tenant_id <= U64_MAX and 0 <= created_at <= U64_MAX:
                out[sid] = CachedSummary(version, tenant_id, created_at)
        return out

    def bodies(self, identity: str, snapshot_ids: Iterable[str]) -> dict[str, tuple[str, bytes]]:
        """``snapshot_id -> (version, bytes)`` for the ids whose bytes are kept and intact."""
        ids = list(dict.fromkeys(snapshot_ids))

        def query(db: sqlite3.Connection) -> dict[str, tuple[str, bytes]]:
            out: dict[str, tuple[str, bytes]] = {}
            store = self._store_id(db, identity, create=False)
            if store is None:
                return out
            for start in range(0, len(ids), QUERY_CHUNK):
                chunk = ids[start:start + QUERY_CHUNK]
                marks = ",".join("?" * len(chunk))
                for sid, version, raw, check in db.execute(
                    f"SELECT snapshot_id, version, raw, raw_check FROM bodies"
                    f" WHERE store = ? AND snapshot_id IN ({marks})",
                    (store, *chunk),
                ):
                    if isinstance(raw, bytes) and isinstance(version, str) and zlib.crc32(raw) == check:
                        out[sid] = (version, raw)
            return out

        return self._run(query)

    def update(self, identity: str, *, forget: Iterable[str] = (), keep: Iterable[CachedManifest] = ()) -> None:
        """In one transaction: drop the rows of ``forget``, then store (or replace) ``keep``."""
        forget = list(forget)
        keep = list(keep)
        if not forget and not keep:
            return
        summaries, bodies = [], []
        for m in keep:
            tenant, created = str(m.tenant_id), str(m.created_at_unix_micros)
            summaries.append((m.snapshot_id, m.version, tenant, created,
                              _row_check(m.snapshot_id, m.version, tenant, created)))
            bodies.append((m.snapshot_id, m.version, m.raw, zlib.crc32(m.raw)))

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                store = self._store_id(db, identity, create=True)
                gone = [(store, sid) for sid in forget]
                db.executemany("DELETE FROM summaries WHERE store = ? AND snapshot_id = ?", gone)
                db.executemany("DELETE FROM bodies WHERE store = ? AND snapshot_id = ?", gone)
                db.executemany("INSERT OR REPLACE INTO summaries VALUES (?, ?, ?, ?, ?, ?)",
                               [(store, *row) for row in summaries])
                db.executemany("INSERT OR REPLACE INTO bodies VALUES (?, ?, ?, ?, ?)",
                               [(store, *row) for row in bodies])
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        self._run(write)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()

    # -- the file ------------------------------------------------------------------------------

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` on the connection, under the lock. A file found damaged on the way is dropped
        and ``work`` done once more on a fresh one; any other failure of the file comes out as
        :class:`ManifestCacheError`."""
        with self._lock:
            for attempt in (1, 2):
                try:
                    return work(self._connection())
                except sqlite3.DatabaseError as exc:
                    if attempt == 1 and _is_damage(exc):
                        self._damaged(exc)
                        continue
                    raise ManifestCacheError(f"manifest cache {self.path}: {exc}") from exc
                except (sqlite3.Error, OSError) as exc:
                    raise ManifestCacheError(f"manifest cache {self.path}: {exc}") from exc
            raise AssertionError("unreachable")

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A connection is never used across a fork: the child opens its own.
        self._conn = None
        try:
            conn = self._open()
        except sqlite3.DatabaseError as exc:
            if not _is_damage(exc):
                raise
            log.warning("manifest cache %s is damaged or not a database (%s); rebuilding it", self.path, exc)
            self._remove_file()
            conn = self._open()
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, check_same_thread=False
        )
        try:
            os.chmod(self.path, 0o600)  # manifests name tenants and their keys' ids
            if not self._schema_is_ours(conn):
                self._reset(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _schema_is_ours(conn: sqlite3.Connection) -> bool:
        if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            return False
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            return False
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'parser'").fetchone()
        except sqlite3.OperationalError:  # no such table
            return False
        return row is not None and row[0] == PARSER_FINGERPRINT

    def _reset(self, conn: sqlite3.Connection) -> None:
        """Make the file an empty cache of this version, under SQLite's own write lock, so that
        a process reading the old file at that moment is not disturbed."""
        conn.execute("BEGIN EXCLUSIVE")
        try:
            if not self._schema_is_ours(conn):  # another process may have just done it
                log.info("manifest cache %s is of another version or not ours; rebuilding it", self.path)
                for kind, name in conn.execute(
                    "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view')"
                    " AND name NOT LIKE 'sqlite_%'"
                ).fetchall():
                    quoted = '"' + name.replace('"', '""') + '"'
                    conn.execute(f"DROP {'VIEW' if kind == 'view' else 'TABLE'} IF EXISTS {quoted}")
                for statement in _TABLES:
                    conn.execute(statement)
                conn.execute("INSERT INTO meta VALUES ('parser', ?)", (PARSER_FINGERPRINT,))
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _remove_file(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass

    def _store_id(self, db: sqlite3.Connection, identity: str, *, create: bool) -> int | None:
        row = db.execute("SELECT id FROM stores WHERE identity = ?", (identity,)).fetchone()
        if row is not None or not create:
            return None if row is None else row[0]
        return db.execute("INSERT INTO stores (identity) VALUES (?)", (identity,)).lastrowid

    def _damaged(self, exc: sqlite3.DatabaseError) -> None:
        """A query found the file damaged: drop it, so that the next use builds a fresh one."""
        log.warning("manifest cache %s is damaged (%s); rebuilding it", self.path, exc)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._remove_file()
