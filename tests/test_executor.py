"""The memory service's own executor tests, ported: the same scenarios, against real files."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import pytest

from memrestore.backends import LocalBackend, put_manifest
from memrestore.tasks.errors import (
    ChecksumMismatchError,
    DataDirNotEmptyError,
    RestoreInProgressError,
    TenantPathOccupiedError,
)
from memrestore.tasks.marker import MARKER_NAME
from memrestore.tasks.plan import DestinationState, RestoreMode, RestorePlan
from memrestore.tasks.validate import validate
from memrestore.backends.manifest import WireVersion
from tests.restorekit import execute
from tests.conftest import tree
from tests.manifests import manifest_object, model_doc


def _h(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def build_validated_plan(backend: LocalBackend, sqlite: bytes, hnsw: bytes) -> RestorePlan:
    """As the service's test helper: snapshot ``snap-1`` of tenant 1, one model, checksums set."""
    manifest = manifest_object(sqlite_checkpoint_checksum=_h(sqlite), hnsw_snapshots__0__checksum=_h(hnsw))
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
    manifest = manifest_object(
        snapshot_id="snap-malicious", oplog_watermark=1, forget_floor=None,
        sqlite_checkpoint_key="snap-malicious/sqlite.db", sqlite_checkpoint_checksum=None,
        hnsw_snapshots=[model_doc(embedding_model="../etc/passwd", source_log_watermark=1,
                                  content_key="snap-malicious/hnsw.bin", checksum=None)],
        encryption=None,
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


# -- staging several items at once ---------------------------------------------------------------


def _many_items_plan(backend: LocalBackend, models: int = 5) -> RestorePlan:
    """Tenant 1's snapshot with a SQLite checkpoint and ``models`` HNSW blobs: more items than
    are staged at once."""
    from memrestore.backends.demo_snapshots import write_sample_snapshot

    manifest = write_sample_snapshot(backend, tenant_id=1, snapshot_id="many", created_at_unix_micros=1,
                                     models=tuple((f"m{i}", 8) for i in range(models)), hnsw_bytes=48 * 1024)
    destination = DestinationState(wire_version=manifest.wire_version, embedding_model="m0")
    return validate(manifest, destination, backend.url)


class _Staging:
    """Wraps the composer's ``stage_item`` (memrestore.tasks.restore): counts the items being staged, the most at once, and
    the items staged; ``first`` items wait for each other (a barrier), so that staging them one
    after another never gets past the first."""

    def __init__(self, monkeypatch, first: int = 0) -> None:
        import threading

        from memrestore.tasks import restore as restore_module

        self.lock = threading.Lock()
        self.in_flight = self.most = self.started = 0
        self.staged: list[str] = []
        self.barrier = threading.Barrier(first, timeout=120) if first else None
        self.first = first
        real = restore_module.stage_item

        def stage(item, backend, data_dir, resume, transfer):
            with self.lock:
                self.started += 1
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
                meets = self.started <= self.first
            try:
                if meets:
                    self.barrier.wait()
                result = self.around(item, lambda: real(item, backend, data_dir, resume, transfer))
                with self.lock:
                    self.staged.append(item.content_key)
                return result
            finally:
                with self.lock:
                    self.in_flight -= 1

        monkeypatch.setattr(restore_module, "stage_item", stage)

    def around(self, item, stage):
        return stage()


def test_items_are_staged_concurrently_and_every_one_lands(backend, data_dir, monkeypatch):
    from memrestore.tasks import progress
    from memrestore.tasks.restore import ITEM_CONCURRENCY

    plan = _many_items_plan(backend)
    assert len(plan.items) > ITEM_CONCURRENCY
    # Staged one after another, the first item would wait for the others at the barrier forever.
    staging = _Staging(monkeypatch, first=ITEM_CONCURRENCY)
    received: list[int] = []
    expected: list[int] = []
    # list.append: atomic, safe from the staging threads
    with progress.watching(progress.Listener(on_bytes=received.append, on_total=expected.append)):
        outcome = execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    assert staging.most == ITEM_CONCURRENCY
    assert sorted(staging.staged) == sorted(i.content_key for i in plan.items)
    assert [i.content_key for i in outcome.items] == [i.content_key for i in plan.items]  # the plan's order
    assert all(i.verified for i in outcome.items)
    assert tree(data_dir) == {
        item.destination: (backend.root / item.content_key).read_bytes() for item in plan.items
    }
    # Progress still adds up, whichever thread reported it.
    assert expected == [outcome.total_bytes] and sum(received) == outcome.total_bytes


def test_a_failing_item_among_several_is_raised_once_every_item_is_done(backend, data_dir, monkeypatch):
    """One item fails while the others are still staging: execute waits for them all, then rolls
    back (nothing staged is left) and raises that item's error; the data dir is as it was."""
    import threading

    from memrestore.tasks import restore as restore_module

    plan = _many_items_plan(backend)
    bad = plan.items[1]  # among the first started: the others wait for it to fail
    backend.put_object(bad.content_key, b"TAMPERED")
    failed = threading.Event()
    staging = _Staging(monkeypatch)

    def around(item, stage):
        if item.content_key == bad.content_key:
            try:
                return stage()
            finally:
                failed.set()
        assert failed.wait(timeout=120)  # the others finish only after it failed
        return stage()

    staging.around = around
    at_roll_back: list[int] = []
    real_roll_back = restore_module.roll_back  # the undo of the one composer

    def roll_back(data_dir, tenant_id):
        at_roll_back.append(staging.in_flight)
        real_roll_back(data_dir, tenant_id)

    monkeypatch.setattr(restore_module, "roll_back", roll_back)
    (data_dir / "tenant_1").mkdir(parents=True)
    (data_dir / "tenant_1" / "data.sqlite").write_bytes(b"previous")
    (data_dir / "tenant_7").mkdir()
    (data_dir / "tenant_7" / "data.sqlite").write_bytes(b"other tenant")
    before = tree(data_dir)
    with pytest.raises(ChecksumMismatchError) as info:
        execute(backend, plan, data_dir, RestoreMode.WIPE_AND_RESTORE)
    assert info.value.key == bad.content_key
    assert at_roll_back == [0]  # no item was still staging when the roll-back began
    assert sorted(staging.staged) == sorted(i.content_key for i in plan.items if i is not bad)
    assert tree(data_dir) == before  # no staging, no .part, no marker: as it was
