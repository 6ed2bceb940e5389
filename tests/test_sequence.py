"""The restore is composed once (memrestore.tasks.restore): a failing cleanup and a failing undo
are reported the same through the restore-snapshot flow, through the plain path, and through a
drill, which uses the plain path."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

import pytest

from memrestore.flows.restore import restore_snapshot
from memrestore.tasks import commit, restore as restore_module
from memrestore.tasks.errors import DestinationIOError, RollbackFailedError
from memrestore.tasks.marker import MARKER_NAME, read_marker
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.validate import validate
from memrestore.tasks.drill import drill_plain
from tests.restorekit import execute

pytestmark = pytest.mark.usefixtures("prefect_api")

NOW = 1_700_000_100.0


def _flow(backend, data_dir):
    state = asyncio.run(restore_snapshot(backend=backend.url, tenant_id=1, data_dir=str(data_dir),
                                         mode=RestoreMode.NEW_CLUSTER, destination={"embedding_model": "minilm"},
                                         return_state=True))
    assert state.is_failed()
    with pytest.raises(BaseException) as raised:
        state.result()
    return raised.value


def _plain(backend, snapshot, data_dir):
    plan = validate(snapshot, DestinationState(embedding_model="minilm"), backend.url)
    with pytest.raises(BaseException) as raised:
        execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    return raised.value


def _flow_and_plain(backend, snapshot, tmp_path) -> list[tuple[BaseException, Path]]:
    """The error of one restore through the flow and of one through the plain path, each with
    its data dir."""
    flow, plain = tmp_path / "flow", tmp_path / "plain"
    return [(_flow(backend, flow), flow), (_plain(backend, snapshot, plain), plain)]


def _drill_reason(backend, tmp_path) -> str:
    report = drill_plain(backend, [1], scratch_dir=tmp_path / "scratch", now=NOW)
    [tenant] = report.tenants
    assert tenant.status == "failed"
    return tenant.reason


def test_a_failing_cleanup_is_the_same_error_everywhere(backend, snapshot, tmp_path, monkeypatch):
    def broken(data_dir):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(commit, "remove_leftovers", broken)
    for exc, data_dir in _flow_and_plain(backend, snapshot, tmp_path):
        assert type(exc) is DestinationIOError
        assert str(exc).startswith(f"cleaning up after the restore in {data_dir}")
        # The new data is in place, the marker kept in phase cleanup: a resume finishes it.
        assert read_marker(data_dir).phase.value == "cleanup"
        assert (data_dir / "tenant_1" / "data.sqlite").exists()
    reason = _drill_reason(backend, tmp_path)
    assert "cleaning up after the restore in" in reason and "unexpected" not in reason


def test_a_failing_undo_is_the_same_error_everywhere(backend, snapshot, tmp_path, monkeypatch):
    backend.put_object(snapshot.hnsw_snapshots[1].content_key, b"corrupted after backup")  # staging fails

    def broken(data_dir, tenant_id):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(restore_module, "roll_back", broken)
    for exc, data_dir in _flow_and_plain(backend, snapshot, tmp_path):
        assert type(exc) is RollbackFailedError
        assert str(exc).startswith(f"the restore into {data_dir} failed (")
        assert "undoing it failed too ([Errno 30] Read-only file system)" in str(exc)
        assert (data_dir / MARKER_NAME).exists()  # kept: the service must not start there
    reason = _drill_reason(backend, tmp_path)
    assert "undoing it failed too" in reason and "unexpected" not in reason
