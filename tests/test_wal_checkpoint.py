"""A checkpoint taken from a live WAL-mode database (issue 19) restores to exactly the service's
files: no ``data.sqlite-wal`` or ``data.sqlite-shm`` beside it, in every mode and at every check
level, through the plain path, the flow, the command line and the drills; and the service opens
the restored database read-write and sees every row.

The checkpoints are built with the sqlite3 command line, the two ways a running service takes
one (tests/checkpoints.py): ``.backup`` while the database is in use, and a file copy after
``PRAGMA wal_checkpoint(TRUNCATE)``; both keep the WAL header.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from memrestore.backends import LocalBackend
from memrestore.backends.base import read_manifest
from memrestore.tasks.checks import (
    CheckLevel,
    check_layout,
    check_restored,
    check_sqlite,
    check_staged,
    check_tables,
    hnsw_sizes,
)
from memrestore.tasks.errors import RestoredCopyCheckError
from memrestore.tasks.marker import staging_dir
from memrestore.tasks.plan import DestinationState, RestoreMode, sqlite_destination
from memrestore.tasks.validate import validate
from tests.restorekit import execute
from tests.checkpoints import (
    ROWS_IN_WAL_CHECKPOINT,
    WAL_WAYS,
    header_mode,
    snapshot_with_checkpoint,
    wal_checkpoint,
)
from tests.layout import assert_restored_layout, data_dir_for, sqlite_side_files
from tests.procs import memrestore

TENANT = 7
MODES = list(RestoreMode)
LEVELS = list(CheckLevel)


def folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in ``folder`` with its bytes and mtime: what a check must not change."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def service_reads_and_writes(db_path: Path) -> int:
    """Open the restored database read-write as the service does (WAL mode stays on), read every
    row, write one, close; the row count it saw."""
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = db.execute("SELECT count(*) FROM memory_commit_log").fetchone()[0]
        db.execute("INSERT INTO memory_commit_log VALUES (100000, 'after-restore', x'01', 1)")
        db.commit()
    finally:
        db.close()  # the last connection: SQLite checkpoints and removes its -wal and -shm
    return rows


@pytest.fixture(scope="module")
def wal_backend(tmp_path_factory) -> LocalBackend:
    """One backend with tenant 7's two WAL-header checkpoints, one snapshot per way."""
    root = tmp_path_factory.mktemp("wal")
    backend = LocalBackend(root / "backend")
    for index, way in enumerate(WAL_WAYS):
        snapshot_with_checkpoint(backend, wal_checkpoint(root / "build", way), tenant_id=TENANT,
                                 snapshot_id=way, created_at_unix_micros=1_700_000_000_000_000 + index)
    return backend


@pytest.mark.parametrize("way", WAL_WAYS)
@pytest.mark.parametrize("level", [CheckLevel.QUICK, CheckLevel.FULL], ids=lambda level: level.value)
def test_checking_a_wal_checkpoint_changes_nothing_in_its_folder(tmp_path, wal_backend, way, level):
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copyfile(wal_backend.root / way / "sqlite.db", copy / "data.sqlite")
    before = folder_state(copy)
    check_sqlite(copy / "data.sqlite", level)
    check_tables(copy / "data.sqlite", ["memory_commit_log", "memories"])
    assert folder_state(copy) == before


def test_a_file_beside_the_copys_database_fails_the_staged_and_the_drills_check(tmp_path, wal_backend):
    manifest = read_manifest(wal_backend, WAL_WAYS[0])
    plan = validate(manifest, DestinationState(embedding_model="minilm"), wal_backend.url)
    data_dir = tmp_path / "data"
    root = staging_dir(data_dir)  # the same files, as a restore stages them and as a drill restores them
    for item in plan.items:
        (root / item.destination).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wal_backend.root / item.content_key, root / item.destination)
    check_staged(plan, data_dir, CheckLevel.QUICK)  # the copy as restored passes
    check_restored(root, manifest, hnsw_sizes(wal_backend, manifest))

    stale = root / f"tenant_{TENANT}" / "data.sqlite-shm"
    stale.write_bytes(b"\0" * 32768)  # what a read-only open of a WAL database used to leave
    for check in (lambda: check_staged(plan, data_dir, CheckLevel.QUICK),
                  lambda: check_restored(root, manifest, hnsw_sizes(wal_backend, manifest))):
        with pytest.raises(RestoredCopyCheckError, match=r"holds tenant_7/data\.sqlite-shm beside"):
            check()
    stale.unlink()
    os.symlink("/etc", root / f"tenant_{TENANT}" / "hnsw" / "elsewhere")
    with pytest.raises(RestoredCopyCheckError, match=r"tenant_7/hnsw/elsewhere"):
        check_layout(root, TENANT, [item.destination for item in plan.items])


@pytest.mark.parametrize("way", WAL_WAYS)
@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.value)
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_plain_restore_of_a_wal_checkpoint_leaves_exactly_the_layout(tmp_path, wal_backend, mode, level, way):
    manifest = read_manifest(wal_backend, way)
    plan = validate(manifest, DestinationState(embedding_model="minilm"), wal_backend.url)
    data_dir = data_dir_for(mode, tmp_path, TENANT)
    execute(wal_backend, plan, data_dir, mode, check=level)

    assert_restored_layout(data_dir, manifest)
    assert header_mode(data_dir / sqlite_destination(TENANT)) == (2, 2)
    if mode is not RestoreMode.NEW_CLUSTER and mode is not RestoreMode.WIPE_AND_RESTORE:
        assert (data_dir / "tenant_9" / "data.sqlite").read_bytes() == b"tenant 9's database"
    assert service_reads_and_writes(data_dir / sqlite_destination(TENANT)) == ROWS_IN_WAL_CHECKPOINT
    assert sqlite_side_files(data_dir) == []


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.value)
@pytest.mark.parametrize("mode", MODES, ids=lambda mode: mode.value)
def test_the_command_line_restores_a_wal_checkpoint_with_nothing_beside_it(tmp_path, prefect_api, wal_backend,
                                                                           mode, level):
    way = WAL_WAYS[(MODES.index(mode) + LEVELS.index(level)) % len(WAL_WAYS)]  # each way in every mode
    data_dir = data_dir_for(mode, tmp_path, TENANT)
    proc = memrestore("restore", "--backend", wal_backend.url, "--tenant", TENANT, "--snapshot", way,
                      "--data-dir", data_dir, "--mode", mode.value, "--check", level.value,
                      "--embedding-model", "minilm", "--yes", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["check"] == level.value
    assert_restored_layout(data_dir, read_manifest(wal_backend, way))
    assert service_reads_and_writes(data_dir / sqlite_destination(TENANT)) == ROWS_IN_WAL_CHECKPOINT


@pytest.mark.parametrize("level", LEVELS, ids=lambda level: level.value)
def test_the_flow_restores_a_wal_checkpoint_with_nothing_beside_it(tmp_path, prefect_api, wal_backend, level):
    from memrestore.flows.restore import restore_snapshot

    way = WAL_WAYS[LEVELS.index(level) % len(WAL_WAYS)]
    mode = MODES[LEVELS.index(level) % len(MODES)]
    data_dir = data_dir_for(mode, tmp_path, TENANT)
    state = asyncio.run(restore_snapshot(
        backend=wal_backend.url, tenant_id=TENANT, data_dir=str(data_dir), mode=mode, snapshot=way,
        destination={"embedding_model": "minilm"}, check=level, return_state=True))
    assert state.is_completed(), state.message
    assert_restored_layout(data_dir, read_manifest(wal_backend, way))
    assert service_reads_and_writes(data_dir / sqlite_destination(TENANT)) == ROWS_IN_WAL_CHECKPOINT


def test_a_drill_of_wal_checkpoints_passes_its_layout_check(tmp_path, prefect_api, wal_backend):
    """The drill's check of its scratch copy includes the layout (tasks/checks.check_copy): a
    -wal or -shm beside the copy's database would fail the tenant."""
    scratch = tmp_path / "scratch"
    proc = memrestore("drill", "--backend", wal_backend.url, "--scratch-dir", scratch, "--json")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    (tenant,) = json.loads(proc.stdout)["tenants"]
    assert (tenant["tenant_id"], tenant["status"], tenant["snapshot_id"]) == (TENANT, "ok", WAL_WAYS[-1])
    assert sqlite_side_files(scratch) == []
