"""A restore checks its staged copy before the commit: a snapshot whose blobs match their blake3
but whose SQLite checkpoint was already damaged when the backup was taken (a torn page, a
truncated file; built with the sqlite3 command line, then damaged) is refused under every mode,
with the data dir exactly as it was; ``--check none`` restores it anyway."""

from __future__ import annotations

from pathlib import Path

import blake3
import pytest

from memrestore.backends import LocalBackend
from memrestore.backends.base import put_manifest, read_manifest
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.tasks.checks import CheckLevel
from memrestore.tasks.errors import RestoredCopyCheckError
from memrestore.tasks.marker import MARKER_NAME
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.validate import validate
from tests.restorekit import execute
from tests.checkpoints import snapshot_with_checkpoint, sqlite3_cli
from tests.conftest import tree
from tests.layout import data_dir_for
from tests.procs import memrestore

TENANT = 4
PAGE = 4096


def checkpoint(path: Path) -> None:
    """A real checkpoint of the service's tables, written by the sqlite3 command line."""
    sqlite3_cli(path, f"PRAGMA page_size={PAGE};"
                "CREATE TABLE memory_commit_log(pos INTEGER PRIMARY KEY, kind TEXT, payload BLOB, at INTEGER);"
                "CREATE TABLE memories(id INTEGER PRIMARY KEY, body TEXT);"
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000) "
                "INSERT INTO memory_commit_log SELECT x, 'k', randomblob(200), x FROM c;")


def damage(path: Path, how: str) -> None:
    if how == "torn page":  # page 10's cell pointers overwritten, as by a write cut short
        with open(path, "r+b") as f:
            f.seek(PAGE * 9 + 8)
            f.write(b"\xff" * 64)
    else:  # truncated: the backup copied the file while the service was extending it
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)


def damaged_snapshot(backend: LocalBackend, tmp: Path, how: str, snapshot_id: str = "damaged") -> str:
    """A snapshot whose checkpoint is damaged and whose manifest has that damaged file's blake3."""
    db = tmp / f"{snapshot_id}.sqlite"
    checkpoint(db)
    damage(db, how)
    snapshot_with_checkpoint(backend, db, tenant_id=TENANT, snapshot_id=snapshot_id)
    return snapshot_id


@pytest.mark.parametrize("how", ["torn page", "truncated"])
@pytest.mark.parametrize("mode", list(RestoreMode), ids=[m.value for m in RestoreMode])
def test_a_damaged_checkpoint_is_refused_before_the_commit(tmp_path, mode, how):
    backend = LocalBackend(tmp_path / "backend")
    sid = damaged_snapshot(backend, tmp_path, how)
    data_dir = data_dir_for(mode, tmp_path, TENANT)
    before = tree(data_dir)
    plan = validate(read_manifest(backend, sid), DestinationState(embedding_model="minilm"), backend.url)
    with pytest.raises(RestoredCopyCheckError) as refused:
        execute(backend, plan, data_dir, mode, check=CheckLevel.QUICK)
    message = str(refused.value)
    assert "quick_check of the staged checkpoint" in message
    assert f".restore-staging/tenant_{TENANT}/data.sqlite" in message
    assert "malformed" in message or "out of range" in message
    assert "restore an older snapshot" in message
    assert tree(data_dir) == before  # nothing moved, nothing staged left, no marker
    assert not (data_dir / MARKER_NAME).exists()


def test_check_none_restores_it_and_full_runs_integrity_check(tmp_path):
    backend = LocalBackend(tmp_path / "backend")
    sid = damaged_snapshot(backend, tmp_path, "torn page")
    plan = validate(read_manifest(backend, sid), DestinationState(embedding_model="minilm"), backend.url)
    with pytest.raises(RestoredCopyCheckError, match="integrity_check of the staged checkpoint"):
        execute(backend, plan, tmp_path / "full", RestoreMode.NEW_CLUSTER, check=CheckLevel.FULL)
    outcome = execute(backend, plan, tmp_path / "none", RestoreMode.NEW_CLUSTER, check=CheckLevel.NONE)
    assert outcome.check == "none"
    restored = tmp_path / "none" / f"tenant_{TENANT}" / "data.sqlite"
    assert blake3.blake3(restored.read_bytes()).hexdigest() == plan.items[0].expected_checksum


def test_a_sound_snapshot_passes_and_the_outcome_times_the_check(tmp_path):
    backend = LocalBackend(tmp_path / "backend")
    manifest = write_sample_snapshot(backend, tenant_id=TENANT, snapshot_id="sound")
    plan = validate(manifest, DestinationState(embedding_model="minilm"), backend.url)
    outcome = execute(backend, plan, tmp_path / "data", RestoreMode.NEW_CLUSTER, check=CheckLevel.QUICK)
    assert outcome.check == "quick" and outcome.check_seconds is not None and outcome.check_seconds >= 0


def test_a_missing_table_is_refused_too(tmp_path):
    """The manifest names a table the checkpoint lacks: the copy does not match its manifest."""
    backend = LocalBackend(tmp_path / "backend")
    manifest = write_sample_snapshot(backend, tenant_id=TENANT, snapshot_id="no-table")
    put_manifest(backend, manifest.model_copy(update={
        "table_schema_versions": {**manifest.table_schema_versions, "memory_edges": 1}}))
    plan = validate(read_manifest(backend, "no-table"), DestinationState(embedding_model="minilm"), backend.url)
    with pytest.raises(RestoredCopyCheckError, match="lacks table.*'memory_edges'"):
        execute(backend, plan, tmp_path / "data", RestoreMode.NEW_CLUSTER, check=CheckLevel.QUICK)


@pytest.mark.parametrize("mode", list(RestoreMode), ids=[m.value for m in RestoreMode])
def test_the_command_line_refuses_it_in_every_mode_and_check_none_restores_it(tmp_path, prefect_api, mode):
    backend = LocalBackend(tmp_path / "backend")
    sid = damaged_snapshot(backend, tmp_path, "torn page")
    data_dir = data_dir_for(mode, tmp_path, TENANT)
    before = tree(data_dir)
    args = ["restore", "--backend", backend.url, "--tenant", TENANT, "--snapshot", sid, "--data-dir", data_dir,
            "--mode", mode.value, "--embedding-model", "minilm"]
    refused = memrestore(*args)
    assert refused.returncode == 1, refused.stderr
    assert "quick_check of the staged checkpoint" in refused.stderr and "Traceback" not in refused.stderr
    assert tree(data_dir) == before

    restored = memrestore(*args, "--check", "none", "--json")
    assert restored.returncode == 0, restored.stderr
    assert (data_dir / f"tenant_{TENANT}" / "data.sqlite").read_bytes() == (tmp_path / f"{sid}.sqlite").read_bytes()
    assert '"check": "none"' in restored.stdout
