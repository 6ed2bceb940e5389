"""Listing a backend's snapshots, and picking each tenant's latest, at the scale of a fleet.

A backend of 10,000 tenants x 30 snapshots holds 300,000 manifests. Picking a tenant's latest
needs two fields inside each of them (``tenant_id``, ``created_at_unix_micros``); reading them
all for every listing would cost 300,000 GETs. So:

1. One listing of the backend names every finished snapshot with its manifest's version
   (:meth:`Backend.list_manifests`: ETags from S3's own listing pages, a ``stat`` of each file on
   a folder); no manifest is read for that.
2. A manifest already read at that version is taken from the local cache
   (:mod:`backends.manifest_cache`): a warm listing reads no manifest at all.
3. The others (the first run, new snapshots, rewritten manifests) are read concurrently, then
   kept in the cache for the next run.

The listing holds one small :class:`SnapshotEntry` per snapshot, which is what picking the latest
needs, and produces whole manifests only when asked (the latest of a tenant, one tenant's
snapshots, or all of them), from the cached bytes, parsed and checked as any manifest read from
the backend is. The cache never changes what a listing finds: the backend's listing decides what
exists and at which version, and a cached row is used only for that exact version.
"""

from __future__ import annotations

import datetime
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from memrestore.backends.base import Backend, ManifestRef, manifest_key, parse_manifest_of, read_manifest
from memrestore.backends.errors import (BadInputError, InstantSpellingError, ObjectNotFoundError, RestoreError,
                                        TransientBackendError)
from memrestore.backends.manifest import SnapshotManifest
from memrestore.backends.manifest_cache import CachedManifest, ManifestCache, ManifestCacheError, default_cache

log = logging.getLogger(__name__)

#: How many manifests are read at once when the cache does not hold them. On S3 a read is a
#: round trip spent mostly waiting, so threads overlap them; on a folder a read is system calls
#: that release the GIL, then a parse that holds it. Measured (BENCHMARKS.md, "Listing at scale",
#: 1 to 64 threads on 2 cores): 1 to 8 threads slower, 16 and 32 alike, 64 slower again; 32 keeps
#: a remote store with longer round trips busier, within boto3's pool of 32 connections.
LIST_CONCURRENCY = 32
#: Manifests read are written to the cache in batches of this many (one transaction each), so
#: a first run over 300,000 snapshots does not hold all their bytes until the end.
CACHE_BATCH = 5_000


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One snapshot of a listing: what picking the latest needs, without the whole manifest."""

    snapshot_id: str
    tenant_id: int
    created_at_unix_micros: int
    #: The manifest's version when it was listed (:attr:`ManifestRef.version`).
    version: str | None = field(default=None, compare=False)

    @classmethod
    def of(cls, manifest: SnapshotManifest, version: str | None = None) -> SnapshotEntry:
        return cls(manifest.snapshot_id, manifest.tenant_id, manifest.created_at_unix_micros, version)

    def describes(self, manifest: SnapshotManifest) -> bool:
        return (manifest.snapshot_id, manifest.tenant_id, manifest.created_at_unix_micros) == (
            self.snapshot_id, self.tenant_id, self.created_at_unix_micros)


def _listing_order(entry: SnapshotEntry) -> tuple[int, int, str]:
    return (entry.tenant_id, entry.created_at_unix_micros, entry.snapshot_id)


def _newness(entry: SnapshotEntry) -> tuple[int, str]:
    """Newest last: by ``created_at_unix_micros`` (never object times), ties to the greater id."""
    return (entry.created_at_unix_micros, entry.snapshot_id)


class SnapshotListing:
    """Every finished snapshot found, and the ones whose manifest could not be read (with why).

    Each snapshot is held as a :class:`SnapshotEntry`; whole manifests are produced on demand
    and kept once produced. ``SnapshotListing(manifests, unreadable)`` builds one from manifests
    already read.
    """

    def __init__(
        self,
        snapshots: Iterable[SnapshotManifest] = (),
        unreadable: dict[str, str] | None = None,
        *,
        entries: Iterable[SnapshotEntry] | None = None,
        source: _ManifestSource | None = None,
    ) -> None:
        manifests = list(snapshots)
        self.unreadable: dict[str, str] = dict(unreadable or {})
        self._loaded: dict[str, SnapshotManifest] = {m.snapshot_id: m for m in manifests}
        if entries is None:
            entries = [SnapshotEntry.of(m) for m in manifests]
        self._entries = sorted(entries, key=_listing_order)
        self._source = source
        self._by_tenant: dict[int, list[SnapshotEntry]] | None = None
        self._lock = threading.Lock()

    @property
    def entries(self) -> list[SnapshotEntry]:
        """Every snapshot, by tenant, then oldest first."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SnapshotListing({len(self._entries)} snapshots, {len(self.unreadable)} unreadable)"

    def tenant_ids(self) -> list[int]:
        """The tenants with at least one snapshot, ascending (no manifest is produced for this)."""
        return sorted(self._tenants())

    @property
    def snapshots(self) -> list[SnapshotManifest]:
        """Every snapshot's manifest, by tenant, then oldest first. Produces them all: to pick
        the latest, use :meth:`latest` or :meth:`latest_by_tenant` instead."""
        return self._manifests(self._entries)

    def for_tenant(self, tenant_id: int) -> list[SnapshotManifest]:
        """The tenant's snapshots, oldest first."""
        return self._manifests(self._tenants().get(tenant_id, []))

    def tenant_entries(self, tenant_id: int) -> list[SnapshotEntry]:
        """The tenant's snapshots as entries (no manifest produced), oldest first."""
        return list(self._tenants().get(tenant_id, []))

    def latest_entry(self, tenant_id: int, as_of: int | None = None) -> SnapshotEntry | None:
        """The entry of :meth:`latest`."""
        mine = self._tenants().get(tenant_id, [])
        if as_of is not None:
            mine = [e for e in mine if e.created_at_unix_micros <= as_of]
        return max(mine, key=_newness) if mine else None

    def latest(self, tenant_id: int, as_of: int | None = None) -> SnapshotManifest | None:
        """The tenant's newest snapshot by ``created_at_unix_micros`` (never by object mtime);
        with ``as_of`` (unix microseconds), the newest created at or before that instant.

        Ties (two snapshots in the same microsecond) go to the greater snapshot id, so the
        choice is the same on every run and every backend.
        """
        entry = self.latest_entry(tenant_id, as_of)
        return None if entry is None else self._manifests([entry])[0]

    def latest_by_tenant(self) -> dict[int, SnapshotManifest]:
        """Every tenant's :meth:`latest`, producing only those manifests."""
        chosen = [max(mine, key=_newness) for mine in self._tenants().values()]
        return {m.tenant_id: m for m in self._manifests(chosen)}

    def _tenants(self) -> dict[int, list[SnapshotEntry]]:
        if self._by_tenant is None:
            by_tenant: dict[int, list[SnapshotEntry]] = {}
            for entry in self._entries:
                by_tenant.setdefault(entry.tenant_id, []).append(entry)
            self._by_tenant = by_tenant
        return self._by_tenant

    def _manifests(self, entries: list[SnapshotEntry]) -> list[SnapshotManifest]:
        with self._lock:
            missing = [e for e in entries if e.snapshot_id not in self._loaded]
            if missing:
                if self._source is None:
                    raise RuntimeError(f"listing has no manifest for {missing[0].snapshot_id!r} and nowhere to read it")
                self._loaded.update(self._source.load(missing))
            return [self._loaded[e.snapshot_id] for e in entries]

    def __getstate__(self) -> dict:
        # A pickled listing carries its manifests, not a database connection.
        manifests = self.snapshots
        return {"entries": self._entries, "unreadable": self.unreadable, "manifests": manifests}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["manifests"], state["unreadable"], entries=state["entries"])


class _ManifestSource:
    """Where a listing gets the whole manifests it holds only entries of: the bytes kept in the
    cache, parsed and checked as a read from the backend is; else the backend itself."""

    def __init__(self, backend: Backend, cache: ManifestCache | None) -> None:
        self.backend = backend
        self.cache = cache

    def load(self, entries: list[SnapshotEntry]) -> dict[str, SnapshotManifest]:
        bodies: dict[str, tuple[str, bytes]] = {}
        if self.cache is not None:
            try:
                bodies = self.cache.bodies(self.backend.identity, [e.snapshot_id for e in entries])
            except ManifestCacheError as exc:
                log.warning("reading manifests from the backend: %s", exc)
        out = {}
        for entry in entries:
            manifest = None
            version, raw = bodies.get(entry.snapshot_id, (None, b""))
            if version is not None and version == entry.version:
                try:
                    manifest = parse_manifest_of(self.backend, entry.snapshot_id, raw)
                except BadInputError:
                    manifest = None
                if manifest is not None and not entry.describes(manifest):
                    manifest = None
            out[entry.snapshot_id] = manifest if manifest is not None else self._read_again(entry)
        return out

    def _read_again(self, entry: SnapshotEntry) -> SnapshotManifest:
        """The manifest from the backend, which must still say what the listing saw."""
        key = manifest_key(entry.snapshot_id)
        try:
            manifest = read_manifest(self.backend, entry.snapshot_id)
        except (BadInputError, ObjectNotFoundError) as exc:
            raise TransientBackendError(
                f"snapshot {entry.snapshot_id!r} changed in {self.backend.url} while it was being "
                f"listed ({exc}); list it again (a retry does)",
                key=key,
            ) from exc
        if not entry.describes(manifest):
            raise TransientBackendError(
                f"the manifest of snapshot {entry.snapshot_id!r} in {self.backend.url} changed while "
                f"it was being listed (tenant {entry.tenant_id} created at {entry.created_at_unix_micros}, "
                f"now tenant {manifest.tenant_id} created at {manifest.created_at_unix_micros}); list "
                "it again (a retry does)",
                key=key,
            )
        return manifest


def _open_cache(cache: ManifestCache | bool) -> ManifestCache | None:
    if cache is True:
        return default_cache()
    if cache is False:
        return None
    return cache


def list_snapshots(
    backend: Backend,
    tenant_id: int | None = None,
    *,
    cache: ManifestCache | bool = True,
    concurrency: int = LIST_CONCURRENCY,
) -> SnapshotListing:
    """Every finished snapshot of the backend (optionally of one tenant only).

    ``cache``: True for the default manifest cache (:func:`backends.manifest_cache.default_cache`,
    which ``MEMRESTORE_NO_CACHE=1`` turns off), False for none, or a cache to use. Manifests not
    in the cache are read ``concurrency`` at a time.

    A manifest that cannot be read or parsed does not stop the listing: it is reported in
    ``unreadable`` with the reason, so that one bad snapshot never hides the good ones. A backend
    failure that is not about one manifest (the root is unreachable) still raises. Whatever the
    cache holds, the result is the one reading every manifest would give.
    """
    refs = backend.list_manifests()
    store = _open_cache(cache)
    known = {}
    if store is not None:
        try:
            known = store.summaries(backend.identity)
        except ManifestCacheError as exc:
            log.warning("listing without the manifest cache: %s", exc)
            store = None

    entries: list[SnapshotEntry] = []
    to_read: list[ManifestRef] = []
    for ref in refs:
        hit = known.get(ref.snapshot_id) if ref.version is not None else None
        if hit is not None and hit.version == ref.version:
            entries.append(SnapshotEntry(ref.snapshot_id, hit.tenant_id, hit.created_at_unix_micros, ref.version))
        else:
            to_read.append(ref)

    writer = _CacheWriter(backend.identity, store)
    read, loaded, unreadable = _read_manifests(backend, to_read, concurrency, writer)
    entries += read
    # Rows of snapshots gone, now unreadable, or of an older version are dropped.
    writer.finish(forget=known.keys() - {e.snapshot_id for e in entries if e.version is not None})

    if tenant_id is not None:
        entries = [e for e in entries if e.tenant_id == tenant_id]
        loaded = {sid: m for sid, m in loaded.items() if m.tenant_id == tenant_id}
    return SnapshotListing(loaded.values(), unreadable, entries=entries, source=_ManifestSource(backend, store))


class _CacheWriter:
    """Keeps manifests read during a listing in the cache, in batches; gives up (with a warning)
    on the first failure, since a listing never fails for its cache."""

    def __init__(self, identity: str, cache: ManifestCache | None) -> None:
        self.identity = identity
        self.cache = cache
        self._batch: list[CachedManifest] = []
        self._lock = threading.Lock()

    def add(self, ref: ManifestRef, manifest: SnapshotManifest, raw: bytes) -> bool:
        """Keep ``manifest`` for the cache; False when it will not be kept there."""
        if self.cache is None or ref.version is None:
            return False
        row = CachedManifest(ref.snapshot_id, ref.version, manifest.tenant_id, manifest.created_at_unix_micros, raw)
        with self._lock:
            self._batch.append(row)
            if len(self._batch) < CACHE_BATCH:
                return True
            batch, self._batch = self._batch, []
        self._write(keep=batch)
        return True

    def finish(self, forget: Iterable[str]) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
        self._write(keep=batch, forget=forget)

    def _write(self, keep: list[CachedManifest], forget: Iterable[str] = ()) -> None:
        cache = self.cache
        if cache is None:
            return
        try:
            cache.update(self.identity, forget=forget, keep=keep)
        except ManifestCacheError as exc:
            log.warning("manifests read now will be read again next time: %s", exc)
            self.cache = None


def _read_manifests(
    backend: Backend, refs: list[ManifestRef], concurrency: int, writer: _CacheWriter
) -> tuple[list[SnapshotEntry], dict[str, SnapshotManifest], dict[str, str]]:
    """Read and parse ``refs``' manifests, ``concurrency`` at a time: their entries, the parsed
    manifests the cache will not hold (the rest are parsed again from it when asked for, so that
    a first run over 300,000 snapshots does not hold them all in memory), and the unreadable.

    The bytes read are at least as new as the version listed before them, so keeping them under
    that version can only make a later run read them again, never reuse older bytes.
    """
    entries: list[SnapshotEntry] = []
    loaded: dict[str, SnapshotManifest] = {}
    unreadable: dict[str, str] = {}
    failures: list[BaseException] = []
    work: Iterator[ManifestRef] = iter(refs)
    lock = threading.Lock()

    def worker() -> None:
        while not failures:
            with lock:
                ref = next(work, None)
            if ref is None:
                return
            try:
                raw = backend.read_manifest_bytes(ref.snapshot_id)
                manifest = parse_manifest_of(backend, ref.snapshot_id, raw)
            except (BadInputError, ObjectNotFoundError) as exc:
                unreadable[ref.snapshot_id] = str(exc)
                continue
            except BaseException as exc:  # a backend failure that is not about this manifest
                failures.append(exc)
                return
            entries.append(SnapshotEntry.of(manifest, ref.version))
            if not writer.add(ref, manifest, raw):
                loaded[ref.snapshot_id] = manifest

    threads = [threading.Thread(target=worker, name=f"list-snapshots-{i}", daemon=True)
               for i in range(min(concurrency, len(refs)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return entries, loaded, dict(sorted(unreadable.items()))  # the same order whichever read ended first


# --- naming a moment: ``--as-of TIME`` ---------------------------------------------------------

def parse_instant(text: str) -> int:
    """An ISO 8601 time as unix microseconds: ``2026-12-07T14:00:00Z``, ``2026-12-07 14:00+01:00``,
    ``2026-12-07`` (its midnight). A time without a zone is UTC, the zone ``snapshots`` prints."""
    raw = text.strip()
    try:
        moment = datetime.datetime.fromisoformat(raw)
    except ValueError:
        raise InstantSpellingError(
            f"{text!r} is not an ISO 8601 time; write e.g. 2026-12-07T14:00:00Z, "
            "2026-12-07T15:00+01:00 or 2026-12-07 (a time without a zone is read as UTC)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    return delta // datetime.timedelta(microseconds=1)


def format_instant(micros: int) -> str:
    """Unix microseconds as ISO 8601 in UTC: ``2026-12-07T14:00:00Z`` (fractions when there are)."""
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(microseconds=micros)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


# --- sizes, for people --------------------------------------------------------------------------

def snapshot_sizes(backend: Backend, manifests: list[SnapshotManifest],
                   concurrency: int = LIST_CONCURRENCY) -> dict[str, int | None]:
    """Each snapshot's total bytes (its checkpoint and every HNSW blob), from the backend's sizes
    of its objects, ``concurrency`` lookups at a time; None for a snapshot one of whose objects
    cannot be sized (missing, refused): a restore of it would fail too."""
    keys = {m.snapshot_id: [m.sqlite_checkpoint_key, *(e.content_key for e in m.hnsw_snapshots)]
            for m in manifests}

    def size_of(key: str) -> int | None:
        try:
            return backend.object_size(key)
        except RestoreError:
            return None

    every = sorted({k for ks in keys.values() for k in ks})
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(every)))) as pool:
        sized = dict(zip(every, pool.map(size_of, every)))
    totals: dict[str, int | None] = {}
    for sid, ks in keys.items():
        sizes = [sized[k] for k in ks]
        totals[sid] = None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[arg-type]
    return totals
