"""SQLite checkpoints built as a service builds them, with the ``sqlite3`` command line, and
snapshots made of them.

- :func:`wal_checkpoint`: a checkpoint of a live WAL-mode database (``PRAGMA journal_mode=WAL``,
  a connection still open with frames in its WAL), taken the two ways a service takes one:
  ``sqlite3 live.db ".backup snap.db"`` while the database is in use, or a file copy after
  ``PRAGMA wal_checkpoint(TRUNCATE)``. Both keep the WAL header (bytes 18-19 are 2, 2).
- :func:`snapshot_with_checkpoint`: a sample snapshot whose checkpoint object is a given file and
  whose manifest carries that file's blake3.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import blake3

from memrestore.backends import Backend
from memrestore.backends.base import put_manifest
from memrestore.backends.manifest import SnapshotManifest
from memrestore.backends.demo_snapshots import make_sqlite_checkpoint, write_sample_snapshot

#: The two ways a service checkpoints a live WAL-mode database.
WAL_WAYS = ("backup-in-use", "copy-after-truncate")
#: Rows the live database holds when its checkpoint is taken: the sample's 100 written before WAL
#: mode, then these written in WAL mode (so they sit in the WAL until a checkpoint moves them).
WAL_ROWS = 40
ROWS_IN_WAL_CHECKPOINT = 100 + WAL_ROWS


def sqlite3_cli(db: Path, sql: str) -> None:
    subprocess.run(["sqlite3", str(db), sql], check=True, capture_output=True)


def header_mode(path: Path) -> tuple[int, int]:
    """Bytes 18-19 of a database file: (1, 1) rollback journal, (2, 2) WAL."""
    with open(path, "rb") as f:
        f.seek(18)
        write, read = f.read(2)
    return write, read


def wal_checkpoint(folder: Path, way: str) -> Path:
    """A checkpoint of a live WAL-mode database with :data:`ROWS_IN_WAL_CHECKPOINT` rows in
    ``memory_commit_log``, taken ``way`` (one of :data:`WAL_WAYS`), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    live = folder / f"live-{way}.db"
    make_sqlite_checkpoint(live, rows=100)
    sqlite3_cli(live, "PRAGMA journal_mode=WAL;")
    service = sqlite3.connect(live)  # the service, still running while its checkpoint is taken
    try:
        service.executemany("INSERT INTO memory_commit_log VALUES (?, 'remember', x'00', 0)",
                            [(101 + i,) for i in range(WAL_ROWS)])
        service.commit()
        snap = folder / f"checkpoint-{way}.sqlite"
        if way == "backup-in-use":
            sqlite3_cli(live, f".backup '{snap}'")
        elif way == "copy-after-truncate":
            sqlite3_cli(live, "PRAGMA wal_checkpoint(TRUNCATE);")
            shutil.copyfile(live, snap)
        else:
            raise ValueError(f"no such way to checkpoint: {way!r}")
    finally:
        service.close()
    assert header_mode(snap) == (2, 2), f"{snap} lost its WAL header"
    return snap


def snapshot_with_checkpoint(backend: Backend, checkpoint: Path, *, tenant_id: int, snapshot_id: str,
                             created_at_unix_micros: int = 1_700_000_000_000_000, **sample) -> SnapshotManifest:
    """A sample snapshot whose SQLite checkpoint is the file ``checkpoint``, its manifest (written
    last, again) naming that file's blake3."""
    manifest = write_sample_snapshot(backend, tenant_id=tenant_id, snapshot_id=snapshot_id,
                                     created_at_unix_micros=created_at_unix_micros, **sample)
    backend.put_object(manifest.sqlite_checkpoint_key, checkpoint)
    manifest = manifest.model_copy(update={
        "sqlite_checkpoint_checksum": blake3.blake3(checkpoint.read_bytes()).hexdigest()})
    put_manifest(backend, manifest)
    return manifest
