"""The memory service's own executor tests, ported: the same scenarios, against real files."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import pytest

from backends import LocalBackend, put_manifest
from backends.manifest import SnapshotManifest
from tasks.errors import (
    ChecksumMismatchError,
    DataDirNotEmptyError,
    RestoreInProgressError,
    TenantPathOccupiedError,
)
from tasks.execute import execute
from tasks.layout import MARKER_NAME
from tasks.plan import DestinationState, RestoreMode, RestorePlan
from tasks.validate import validate
from backends.manifest import WireVersion
from tests.conftest import tree


def _h(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def build_validated_plan(backend: LocalBackend, sqlite: bytes, hnsw: bytes) -> RestorePlan:
    """As the service's test helper: snapshot ``snap-1`` of tenant 1, one model, checksums set."""
    manifest = SnapshotManifest.model_validate(
        {
            "manifest_version": 1,
            "tenant_id": 1,
            "snapshot_id": "snap-1",
            "created_at_unix_micros": 1_700_000_000_000_000,
            "wire_version": {"major": 1, "minor": 0},
            "table_schema_versions": {"memory_commit_log": 1},
            "oplog_watermark": 100,
            "oplog_floor": 1,
            "forget_floor": 50,
            "sqlite_checkpoint_key": "snap-1/sqlite.db",
            "sqlite_checkpoint_checksum": _h(sqlite),
            "hnsw_snapshots": [
                {
                    "embedding_model": "minilm",
                    "vector_dim": 384,
                    "distance_metric": "cosine",
                    "source_log_watermark": 100,
                    "content_key": "snap-1/hnsw.bin",
                    "checksum": _h(hnsw),
                    "deleted_count_pending": 0,
                }
            ],
            "encryption": {"algorithm": "aes-256-gcm", "dek_id": "dek-1", "iv_b64": "AA=="},
            "label": None,
        }
    )
    backend.put_object("snap-1/sqlite.db", sqlite)
    backend.put_object("snap-1/hnsw.bin", hnsw)
    put_manifest(backend, manifest)
    destination = DestinationState(wire_version=WireVersion(major=1, minor=0), tombstone_floor=10, embedding_model="minilm")
    return validate(manifest, destination, backend.url)


def test_execute_writes_blobs_to_destination(backend, data_dir):
    plan = build_validated_plan(backend, b"sqlite-bytes-here", b"hnsw-bytes-here")
    outcome = execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    assert outcome.tenant_id == 1
    assert outcome.mode is RestoreMode.NEW_CLUSTER
    assert len(outcome.items) == 2
    assert tree(data_dir) == {
        "tenant_1/data.sqlite": b"sqlite-bytes-here",
        "tenant_1/hnsw/minilm.bin": b"hnsw-bytes-here",
    }
    assert not (data_dir / MARKER_NAME).exists()


def test_new_cluster_refuses_non_empty_dir(backend, data_dir):
    plan = build_validated_plan(backend, b"x", b"y")
    data_dir.mkdir()
    (data_dir / "existing.txt").write_bytes(b"data")
    with pytest.raises(DataDirNotEmptyError, match="existing.txt"):
        execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    assert tree(data_dir) == {"existing.txt": b"data"}


def test_single_tenant_refuses_existing_tenant_dir(backend, data_dir):
    plan = build_validated_plan(backend, b"x", b"y")
    (data_dir / "tenant_1").mkdir(parents=True)
    (data_dir / "tenant_1" / "existing.bin").write_bytes(b"data")
    with pytest.raises(TenantPathOccupiedError) as info:
        execute(backend, plan, data_dir, RestoreMode.SINGLE_TENANT)
    assert info.value.tenant_id == 1
    assert tree(data_dir) == {"tenant_1/existing.bin": b"data"}


def test_single_tenant_leaves_other_tenants_untouched(backend, data_dir):
    plan = build_validated_plan(backend, b"sqlite", b"hnsw")
    (data_dir / "tenant_99").mkdir(parents=True)
    (data_dir / "tenant_99" / "untouched.bin").write_bytes(b"keep-this")
    outcome = execute(backend, plan, data_dir, RestoreMode.SINGLE_TENANT)
    assert outcome.tenant_id == 1
    assert tree(data_dir) == {
        "tenant_1/data.sqlite": b"sqlite",
        "tenant_1/hnsw/minilm.bin": b"hnsw",
        "tenant_99/untouched.bin": b"keep-this",
    }


def test_single_tenant_accepts_an_empty_tenant_dir(backend, data_dir):
    plan = build_validated_plan(backend, b"sqlite", b"hnsw")
    (data_dir / "tenant_1").mkdir(parents=True)
    execute(backend, plan, data_dir, RestoreMode.SINGLE_TENANT)
    assert (data_dir / "tenant_1" / "data.sqlite").read_bytes() == b"sqlite"


def test_wipe_and_restore_replaces_destination(backend, data_dir):
    plan = build_validated_plan(backend, b"new", b"hnsw")
    (data_dir / "tenant_99").mkdir(parents=True)
    (data_dir / "tenant_99" / "stale.bin").write_bytes(b"stale")
    (data_dir / "tenant_1" / "hnsw").mkdir(parents=True)
    (data_dir / "tenant_1" / "hnsw" / "old-model.bin").write_bytes(b"old")
    (data_dir / "loose-file").write_bytes(b"x")
    outcome = execute(backend, plan, data_dir, RestoreMode.WIPE_AND_RESTORE)
    assert outcome.mode is RestoreMode.WIPE_AND_RESTORE
    assert tree(data_dir) == {"tenant_1/data.sqlite": b"new", "tenant_1/hnsw/minilm.bin": b"hnsw"}


def test_marker_blocks_a_second_restore(backend, data_dir):
    plan = build_validated_plan(backend, b"x", b"y")
    data_dir.mkdir()
    (data_dir / MARKER_NAME).write_bytes(b"prev-snap-id")
    with pytest.raises(RestoreInProgressError) as info:
        execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    message = str(info.value)
    assert str(data_dir / MARKER_NAME) in message and "prev-snap-id" in message
    assert "--resume" in message and "memrestore abort" in message
    assert tree(data_dir) == {MARKER_NAME: b"prev-snap-id"}


@pytest.mark.parametrize("mode", list(RestoreMode))
def test_marker_blocks_every_mode(backend, data_dir, mode):
    plan = build_validated_plan(backend, b"x", b"y")
    data_dir.mkdir()
    (data_dir / MARKER_NAME).write_bytes(b"")
    with pytest.raises(RestoreInProgressError):
        execute(backend, plan, data_dir, mode)


def test_checksum_mismatch_at_exec_aborts(backend, data_dir):
    plan = build_validated_plan(backend, b"original", b"hnsw")
    backend.put_object("snap-1/sqlite.db", b"TAMPERED")  # after validation, as in the service's test
    with pytest.raises(ChecksumMismatchError) as info:
        execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    err = info.value
    assert err.key == "snap-1/sqlite.db"
    assert err.expected == _h(b"original") and err.actual == _h(b"TAMPERED")
    assert err.expected in str(err) and err.actual in str(err) and "snap-1/sqlite.db" in str(err)
    assert tree(data_dir) == {}  # no marker, no staging, no file at a final path


def test_checksum_mismatch_under_wipe_keeps_previous_contents(backend, data_dir):
    plan = build_validated_plan(backend, b"original", b"hnsw")
    backend.put_object("snap-1/hnsw.bin", b"TAMPERED")
    (data_dir / "tenant_1").mkdir(parents=True)
    (data_dir / "tenant_1" / "data.sqlite").write_bytes(b"previous")
    with pytest.raises(ChecksumMismatchError):
        execute(backend, plan, data_dir, RestoreMode.WIPE_AND_RESTORE)
    assert tree(data_dir) == {"tenant_1/data.sqlite": b"previous"}


def test_destination_paths_sanitise_unsafe_model_chars(backend, data_dir):
    manifest = SnapshotManifest.model_validate(
        {
            "manifest_version": 1,
            "tenant_id": 1,
            "snapshot_id": "snap-malicious",
            "created_at_unix_micros": 1_700_000_000_000_000,
            "wire_version": {"major": 1, "minor": 0},
            "table_schema_versions": {"memory_commit_log": 1},
            "oplog_watermark": 1,
            "oplog_floor": 1,
            "forget_floor": None,
            "sqlite_checkpoint_key": "snap-malicious/sqlite.db",
            "sqlite_checkpoint_checksum": None,
            "hnsw_snapshots": [
                {
                    "embedding_model": "../etc/passwd",
                    "vector_dim": 384,
                    "distance_metric": "cosine",
                    "source_log_watermark": 1,
                    "content_key": "snap-malicious/hnsw.bin",
                    "checksum": None,
                    "deleted_count_pending": 0,
                }
            ],
            "encryption": None,
            "label": None,
        }
    )
    backend.put_object("snap-malicious/sqlite.db", b"sqlite")
    backend.put_object("snap-malicious/hnsw.bin", b"hnsw")
    put_manifest(backend, manifest)
    plan = validate(manifest, DestinationState(embedding_model="../etc/passwd"), backend.url)
    outcome = execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    hnsw = next(i for i in outcome.items if i.kind.startswith("hnsw:"))
    expected = data_dir / "tenant_1" / "hnsw" / ".._etc_passwd.bin"
    assert Path(hnsw.destination) == expected
    assert expected.read_bytes() == b"hnsw"
    assert Path(hnsw.destination).resolve().is_relative_to(data_dir.resolve())
    assert not hnsw.verified  # no checksum in the manifest: restored, reported unverified
    assert plan.warnings and "no checksum" in plan.warnings[0]


def test_empty_existing_data_dir_is_fine_for_new_cluster(backend, data_dir):
    plan = build_validated_plan(backend, b"x", b"y")
    data_dir.mkdir()
    execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    assert (data_dir / "tenant_1" / "data.sqlite").read_bytes() == b"x"


def test_outcome_records_bytes_per_item(backend, data_dir):
    plan = build_validated_plan(backend, bytes(1024), bytes([1]) * 2048)
    outcome = execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    by_kind = {i.kind: i for i in outcome.items}
    assert by_kind["sqlite_checkpoint"].bytes == 1024
    assert by_kind["hnsw:minilm"].bytes == 2048
    assert outcome.total_bytes == 3072
    assert all(i.verified for i in outcome.items)
    assert json.loads(outcome.model_dump_json())["items"][0]["checksum"] == _h(bytes(1024))
