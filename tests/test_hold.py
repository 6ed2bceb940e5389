"""One owner of a restore's hold on its data dir (memrestore.tasks.hold.DataDirHold): whatever
way a restore ends, through the restore-snapshot flow or the plain path, its lock is released
exactly once, and its marker is gone or kept as that ending requires."""

from __future__ import annotations

import asyncio
import errno
import re
from pathlib import Path

import pytest

from memrestore.flows.restore import restore_snapshot
from memrestore.tasks import commit, hold, restore as restore_module
from memrestore.tasks.errors import (
    ChecksumMismatchError,
    DataDirNotEmptyError,
    DestinationIOError,
    RollbackFailedError,
)
from memrestore.tasks.marker import lock_data_dir, read_marker, unlock_data_dir
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.validate import validate
from tests.restorekit import execute, stop_request_cleared

pytestmark = pytest.mark.usefixtures("prefect_api")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def unlocks(monkeypatch) -> list[Path]:
    """Every release of a data dir's lock, as it happens."""
    released: list[Path] = []
    real = hold.unlock_data_dir

    def counting(data_dir):
        released.append(Path(data_dir))
        real(data_dir)

    monkeypatch.setattr(hold, "unlock_data_dir", counting)
    return released


def _run(route: str, backend, snapshot, data_dir: Path) -> BaseException | None:
    """One restore of tenant 1 into ``data_dir`` (new_cluster) by ``route``; its error, if any."""
    if route == "flow":
        state = asyncio.run(restore_snapshot(backend=backend.url, tenant_id=1, data_dir=str(data_dir),
                                             mode=RestoreMode.NEW_CLUSTER,
                                             destination={"embedding_model": "minilm"}, return_state=True))
        if state.is_completed():
            return None
        try:
            state.result()
        except BaseException as exc:  # noqa: BLE001 - the test looks at what it was
            return exc
        raise AssertionError(f"a run in state {state.type} with no error")
    plan = validate(snapshot, DestinationState(embedding_model="minilm"), backend.url)
    try:
        execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)
    except BaseException as exc:  # noqa: BLE001
        return exc
    return None


def _lock_is_free(data_dir: Path) -> bool:
    if not lock_data_dir(data_dir):
        return False
    unlock_data_dir(data_dir)
    return True


ROUTES = ["flow", "plain"]


@pytest.mark.parametrize("route", ROUTES)
def test_a_restore_that_succeeds_lets_go_once(route, backend, snapshot, data_dir, unlocks):
    assert _run(route, backend, snapshot, data_dir) is None
    assert unlocks == [data_dir]
    assert read_marker(data_dir) is None and not (data_dir / ".restore-in-progress").exists()
    assert (data_dir / "tenant_1" / "data.sqlite").exists()
    assert _lock_is_free(data_dir)


@pytest.mark.parametrize("route", ROUTES)
def test_a_refused_restore_lets_go_once_and_drops_its_marker(route, backend, snapshot, data_dir, unlocks):
    data_dir.mkdir()
    (data_dir / "service.db").write_bytes(b"the service's own data")
    assert isinstance(_run(route, backend, snapshot, data_dir), DataDirNotEmptyError)
    assert unlocks == [data_dir]
    assert sorted(p.name for p in data_dir.iterdir()) == ["service.db"]  # no marker, nothing staged
    assert _lock_is_free(data_dir)


@pytest.mark.parametrize("route", ROUTES)
def test_a_failed_restore_is_undone_and_lets_go_once(route, backend, snapshot, data_dir, unlocks):
    backend.put_object(snapshot.hnsw_snapshots[0].content_key, b"corrupted after backup")
    assert isinstance(_run(route, backend, snapshot, data_dir), ChecksumMismatchError)
    assert unlocks == [data_dir]
    assert list(data_dir.iterdir()) == []
    assert _lock_is_free(data_dir)


@pytest.mark.parametrize("route", ROUTES)
def test_a_failed_undo_keeps_the_marker_and_lets_go_once(route, backend, snapshot, data_dir, unlocks, monkeypatch):
    backend.put_object(snapshot.hnsw_snapshots[0].content_key, b"corrupted after backup")

    def broken(held, tenant_id):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(restore_module, "roll_back", broken)
    assert isinstance(_run(route, backend, snapshot, data_dir), RollbackFailedError)
    assert unlocks == [data_dir]
    assert read_marker(data_dir).phase.value == "staging"
    assert _lock_is_free(data_dir)  # a resume or an abort can take over at once


@pytest.mark.parametrize("route", ROUTES)
def test_a_failed_cleanup_keeps_the_marker_in_cleanup_and_lets_go_once(route, backend, snapshot, data_dir,
                                                                      unlocks, monkeypatch):
    def broken(held):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(commit, "remove_leftovers", broken)
    assert isinstance(_run(route, backend, snapshot, data_dir), DestinationIOError)
    assert unlocks == [data_dir]
    assert read_marker(data_dir).phase.value == "cleanup"
    assert _lock_is_free(data_dir)


def test_an_interrupted_restore_keeps_its_phase_and_lets_go_once(backend, snapshot, data_dir, unlocks, monkeypatch):
    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(restore_module, "stage_item", stopped)
    with stop_request_cleared():
        assert isinstance(_run("plain", backend, snapshot, data_dir), KeyboardInterrupt)
    assert unlocks == [data_dir]
    assert read_marker(data_dir).phase.value == "staging"  # nothing undone: resume or abort
    assert _lock_is_free(data_dir)


def test_abort_lets_go_once(backend, snapshot, data_dir, unlocks, monkeypatch):
    def broken(held):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:  # a restore left in phase cleanup
        patched.setattr(commit, "remove_leftovers", broken)
        assert isinstance(_run("plain", backend, snapshot, data_dir), DestinationIOError)
    unlocks.clear()
    info = commit.abort(data_dir)
    assert info.phase.value == "cleanup"
    assert unlocks == [data_dir]
    assert list(data_dir.iterdir()) == []  # a new_cluster restore undone: the empty data dir again
    assert _lock_is_free(data_dir)


def test_only_the_hold_takes_or_lets_go_of_the_lock_and_the_marker():
    """The lock and the marker are touched through DataDirHold alone (tasks/marker.py defines the
    primitives it uses)."""
    primitives = re.compile(r"\b(lock_data_dir|unlock_data_dir|create_marker|update_marker)\(|marker\w*\)?\.unlink\(")
    offenders = []
    for folder in ("flows", "tasks", "backends"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() in ("tasks/hold.py", "tasks/marker.py"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if primitives.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
