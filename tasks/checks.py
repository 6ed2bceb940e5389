"""The checks of a restored copy: is the SQLite checkpoint a sound database with the manifest's
tables, and is every HNSW file there with its size?

A blob whose bytes match the manifest's blake3 can still be a damaged database: a torn page or a
truncated checkpoint written by the service when the backup was taken. Two callers run these
checks on the tenant dir of a copy (``root / tenant_<id>``):

- every restore, on its staged copy after every blob is verified and before the commit moves
  anything (``check`` = ``quick``, the default: SQLite's ``quick_check`` plus the tables and
  sizes; ``full``: ``integrity_check``; ``none``: no check), so that a damaged snapshot is refused
  while the data dir is still exactly as it was;
- the drills, on the copy they restored into scratch, with ``integrity_check``
  (:func:`check_restored`).

A check changes neither the copy's bytes nor its folder. SQLite is opened on it with
``immutable=1`` (:func:`open_untouched`): SQLite then takes no lock and creates no ``-wal``,
``-shm`` or ``-journal`` file. A read-only open (``mode=ro``) is not enough: a checkpoint taken
from a live WAL-mode database keeps the WAL header (bytes 18-19 are 2), and SQLite opening such a
file creates ``data.sqlite-wal`` and ``data.sqlite-shm`` beside it, which a read-only connection
cannot remove as it closes, so they would be committed with the tenant and handed to the service
as a stale WAL index. The assumption ``immutable`` makes (nothing changes the file while it is
open) holds here: the staged copy is under the restore's lock, the drill's copy in its own scratch
dir, and neither has a ``-wal`` file of its own (a snapshot holds only ``data.sqlite``), so
SQLite reads exactly what the service will read when it opens the restored file. Last,
:func:`check_layout` holds the copy's tenant dir to FORMAT.md's layout: nothing beside the
snapshot's files.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Mapping

from memrestore.backends import Backend
from memrestore.backends.manifest import SnapshotManifest
from memrestore.tasks.errors import RestoredCopyCheckError
from memrestore.tasks.marker import staging_dir
from memrestore.tasks.modes import CheckLevel  # defined there (no Prefect), importable from here
from memrestore.tasks.plan import ItemKind, RestorePlan, hnsw_destination, sqlite_destination, tenant_dir_name

#: How many of SQLite's complaints a message quotes (``integrity_check`` can list a hundred).
INTEGRITY_PROBLEMS_SHOWN = 3


#: The SQLite check each level runs.
PRAGMA = {CheckLevel.QUICK: "quick_check", CheckLevel.FULL: "integrity_check"}


def open_untouched(path: Path) -> sqlite3.Connection:
    """A read-only connection to the database at ``path`` that writes nothing, beside it or in it:
    no lock, no ``-wal``, ``-shm`` or ``-journal`` file, whatever its journal mode (see the
    module's docstring for why ``immutable=1``)."""
    return sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)


def check_sqlite(path: Path, level: CheckLevel = CheckLevel.FULL, what: str = "restored") -> None:
    """SQLite's own check of the database at ``path``, opened read-only, must say ``ok``."""
    if not path.is_file():
        raise RestoredCopyCheckError(
            f"the {what} SQLite checkpoint {path} is missing; the restore reported success "
            "without writing it. Run the drill again with --keep-failed and inspect the copy."
        )
    pragma = PRAGMA[level]
    try:
        db = open_untouched(path)
        try:
            rows = [row[0] for row in db.execute(f"PRAGMA {pragma}")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    if rows != ["ok"]:
        # quick_check reports its problems as lines of one row, integrity_check as rows.
        problems = [line.strip() for row in rows for line in str(row).splitlines()
                    if line.strip() and not line.startswith("***")]
        shown = "; ".join(problems[:INTEGRITY_PROBLEMS_SHOWN])
        more = (f" (and {len(problems) - INTEGRITY_PROBLEMS_SHOWN} more)"
                if len(problems) > INTEGRITY_PROBLEMS_SHOWN else "")
        raise RestoredCopyCheckError(
            f"SQLite {pragma} of the {what} checkpoint {path} failed: {shown}{more}. The "
            "bytes match the snapshot's checksum, so the checkpoint was damaged when the backup "
            "was taken: restore an older snapshot, and check how the service writes checkpoints."
        )


def check_tables(path: Path, tables: Iterable[str], what: str = "restored") -> None:
    """Every table in ``tables`` (the manifest's ``table_schema_versions``) exists in the database."""
    db = open_untouched(path)
    try:
        present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise RestoredCopyCheckError(f"cannot list the tables of the {what} checkpoint {path}: {exc}") from exc
    finally:
        db.close()
    missing = sorted(set(tables) - present)
    if missing:
        raise RestoredCopyCheckError(
            f"the {what} checkpoint {path} lacks table(s) {', '.join(repr(t) for t in missing)} "
            f"that the manifest's table_schema_versions names (it has: "
            f"{', '.join(sorted(present)) or 'no tables'}). The checkpoint does not match its "
            "manifest: restore an older snapshot, and check the service's backup of this tenant."
        )


def check_hnsw_files(root: Path, manifest: SnapshotManifest, reported_sizes: Mapping[str, int],
                     what: str = "restored") -> None:
    """Every HNSW file is where FORMAT.md puts it under ``root``, with the size the backend reported."""
    for entry in manifest.hnsw_snapshots:
        path = root / hnsw_destination(manifest.tenant_id, entry.embedding_model)
        expected = reported_sizes[entry.content_key]
        if not path.is_file():
            raise RestoredCopyCheckError(
                f"the HNSW file of model {entry.embedding_model!r} is missing at {path} after the "
                "restore reported success. Run the drill again with --keep-failed and inspect the copy."
            )
        actual = path.stat().st_size
        if actual != expected:
            raise RestoredCopyCheckError(
                f"the {what} HNSW file {path} (model {entry.embedding_model!r}) is {actual} bytes, "
                f"but the backend reports {expected} bytes for {entry.content_key!r}. The copy is "
                "incomplete or the object changed during the drill: run the drill again, and "
                "restore an older snapshot if it fails the same way."
            )


def tenant_files(root: Path, tenant_id: int) -> list[str]:
    """Every entry under ``root / tenant_<id>`` that is not a directory, as a path relative to
    ``root`` ('/'-separated, sorted); symlinks are listed, never followed."""
    tenant = root / tenant_dir_name(tenant_id)
    found = []
    for folder, dirs, files in os.walk(tenant):
        rel = Path(folder).relative_to(root)
        found += [(rel / name).as_posix() for name in files]
        found += [(rel / name).as_posix() for name in dirs if os.path.islink(Path(folder, name))]
    return sorted(found)


def check_layout(root: Path, tenant_id: int, expected: Iterable[str], what: str = "restored") -> None:
    """The tenant dir under ``root`` holds exactly ``expected`` (paths relative to ``root``, as
    FORMAT.md lays a snapshot out) and nothing beside them: no SQLite ``-wal``/``-shm``/``-journal``
    file, nothing another process left."""
    extra = sorted(set(tenant_files(root, tenant_id)) - set(expected))
    if extra:
        shown = ", ".join(extra[:INTEGRITY_PROBLEMS_SHOWN])
        more = f" (and {len(extra) - INTEGRITY_PROBLEMS_SHOWN} more)" if len(extra) > INTEGRITY_PROBLEMS_SHOWN else ""
        raise RestoredCopyCheckError(
            f"the {what} copy under {root} holds {shown}{more} beside the snapshot's files; a "
            "restored tenant dir holds only data.sqlite and hnsw/<model>.bin. Something other than "
            "this restore wrote there while it ran: find what (a process with the copy open), "
            "then restore again."
        )


def check_copy(root: Path, manifest: SnapshotManifest, reported_sizes: Mapping[str, int],
               level: CheckLevel = CheckLevel.FULL, what: str = "restored") -> None:
    """All of a copy's checks at ``level``; the first that fails raises RestoredCopyCheckError."""
    if level is CheckLevel.NONE:
        return
    sqlite_path = root / sqlite_destination(manifest.tenant_id)
    check_sqlite(sqlite_path, level, what)
    check_tables(sqlite_path, manifest.table_schema_versions, what)
    check_hnsw_files(root, manifest, reported_sizes, what)
    check_layout(root, manifest.tenant_id, [sqlite_destination(manifest.tenant_id)] + [
        hnsw_destination(manifest.tenant_id, e.embedding_model) for e in manifest.hnsw_snapshots], what)


def hnsw_sizes(backend: Backend, manifest: SnapshotManifest) -> dict[str, int]:
    """The size the backend reports for each HNSW blob, by content key."""
    return {e.content_key: backend.object_size(e.content_key) for e in manifest.hnsw_snapshots}


def check_restored(data_dir: Path, manifest: SnapshotManifest, reported_sizes: Mapping[str, int]) -> None:
    """A drill's checks of the copy it restored into ``data_dir``, in full; the first that fails
    raises RestoredCopyCheckError."""
    check_copy(data_dir, manifest, reported_sizes, CheckLevel.FULL)


def check_staged(plan: RestorePlan, data_dir: Path, level: CheckLevel) -> float:
    """The pre-commit check of a restore's staged copy (in ``data_dir``'s staging dir, which holds
    ``tenant_<id>/``); the seconds it took. Raises RestoredCopyCheckError, before anything has moved. The HNSW files
    were each verified against their blake3 (or size) as they were staged; what is left to check
    is the database inside the checkpoint."""
    started = time.monotonic()
    staging_root = staging_dir(data_dir)
    if level is not CheckLevel.NONE:
        for item in plan.items:
            if item.kind is ItemKind.SQLITE_CHECKPOINT:
                path = staging_root / item.destination
                check_sqlite(path, level, "staged")
                check_tables(path, plan.table_names, "staged")
        check_layout(staging_root, plan.tenant_id, [item.destination for item in plan.items], "staged")
    return time.monotonic() - started
