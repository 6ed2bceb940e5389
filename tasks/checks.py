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
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Iterable, Mapping

from prefect import task
from prefect.cache_policies import NO_CACHE

from memrestore.backends import Backend
from memrestore.backends.manifest import SnapshotManifest
from memrestore.tasks.errors import RestoredCopyCheckError
from memrestore.tasks.layout import staging_dir
from memrestore.tasks.modes import CheckLevel  # defined there (no Prefect), importable from here
from memrestore.tasks.plan import ItemKind, RestorePlan, hnsw_destination, sqlite_destination

#: How many of SQLite's complaints a message quotes (``integrity_check`` can list a hundred).
INTEGRITY_PROBLEMS_SHOWN = 3


_PRAGMA = {CheckLevel.QUICK: "quick_check", CheckLevel.FULL: "integrity_check"}


def check_sqlite(path: Path, level: CheckLevel = CheckLevel.FULL, what: str = "restored") -> None:
    """SQLite's own check of the database at ``path``, opened read-only, must say ``ok``."""
    if not path.is_file():
        raise RestoredCopyCheckError(
            f"the {what} SQLite checkpoint {path} is missing; the restore reported success "
            "without writing it. Run the drill again with --keep-failed and inspect the copy."
        )
    pragma = _PRAGMA[level]
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
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
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
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


def check_copy(root: Path, manifest: SnapshotManifest, reported_sizes: Mapping[str, int],
               level: CheckLevel = CheckLevel.FULL, what: str = "restored") -> None:
    """All of a copy's checks at ``level``; the first that fails raises RestoredCopyCheckError."""
    if level is CheckLevel.NONE:
        return
    sqlite_path = root / sqlite_destination(manifest.tenant_id)
    check_sqlite(sqlite_path, level, what)
    check_tables(sqlite_path, manifest.table_schema_versions, what)
    check_hnsw_files(root, manifest, reported_sizes, what)


def hnsw_sizes(backend: Backend, manifest: SnapshotManifest) -> dict[str, int]:
    """The size the backend reports for each HNSW blob, by content key."""
    return {e.content_key: backend.object_size(e.content_key) for e in manifest.hnsw_snapshots}


def check_restored(data_dir: Path, manifest: SnapshotManifest, reported_sizes: Mapping[str, int]) -> None:
    """A drill's checks of the copy it restored into ``data_dir``, in full; the first that fails
    raises RestoredCopyCheckError."""
    check_copy(data_dir, manifest, reported_sizes, CheckLevel.FULL)


def check_staged(plan: RestorePlan, staging_root: Path, level: CheckLevel) -> float:
    """The pre-commit check of a restore's staged copy (``staging_root`` holds ``tenant_<id>/``);
    the seconds it took. Raises RestoredCopyCheckError, before anything has moved. The HNSW files
    were each verified against their blake3 (or size) as they were staged; what is left to check
    is the database inside the checkpoint."""
    started = time.monotonic()
    if level is not CheckLevel.NONE:
        for item in plan.items:
            if item.kind is ItemKind.SQLITE_CHECKPOINT:
                path = staging_root / item.destination
                check_sqlite(path, level, "staged")
                check_tables(path, plan.table_names, "staged")
    return time.monotonic() - started


@task(name="check-staged-copy", cache_policy=NO_CACHE, persist_result=False)
def check_staged_task(plan: RestorePlan, data_dir: str, level: CheckLevel) -> float:
    """Check the staged copy before the commit (never retried: a damaged checkpoint stays damaged)."""
    return check_staged(plan, staging_dir(Path(data_dir)), level)
