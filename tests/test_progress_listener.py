"""A restore's byte progress reaches the listener watching (tasks/progress.py, its one route):
from a Transfer, from the plan's measure, through ``progress.watching`` around the plain path and
around the flows as the CLI runs them, and to the CLI's own progress bar. Every byte of a real local-folder restore
is counted, once, and nothing reaches a listener once its block has ended."""

from __future__ import annotations

import asyncio
import threading

import pytest

from memrestore.tasks import progress
from memrestore.tasks.choose import fetch_manifest
from memrestore.tasks.measure import measure_plan
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.transfer import Transfer
from memrestore.tasks.validate import validate
from tests.restorekit import execute


class Recorder:
    """A listener's two callables, recording what they are told (from any thread)."""

    def __init__(self) -> None:
        self.bytes: list[int] = []
        self.totals: list[int] = []
        self._lock = threading.Lock()

    def on_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes.append(n)

    def on_total(self, n: int) -> None:
        with self._lock:
            self.totals.append(n)

    def listener(self) -> progress.Listener:
        return progress.Listener(on_bytes=self.on_bytes, on_total=self.on_total)


def _snapshot_bytes(backend, manifest) -> int:
    keys = [manifest.sqlite_checkpoint_key] + [e.content_key for e in manifest.hnsw_snapshots]
    return sum(backend.object_size(k) for k in keys)


def _plan(backend):
    return validate(fetch_manifest(backend, 1, "snap-1"), DestinationState(embedding_model="minilm"), backend.url)


def test_a_transfer_tells_the_listener_watching_every_byte_it_counts(backend, snapshot, data_dir):
    seen = Recorder()
    with progress.watching(seen.listener()):
        with Transfer() as transfer:
            transfer.advance(10)
            transfer.advance(-4)  # an item that starts over
    assert seen.bytes == [10, -4] and transfer.received == 6
    assert progress.current() is progress.NOBODY  # the block has ended


def test_measuring_a_plan_tells_the_listener_watching_the_total(backend, snapshot):
    seen = Recorder()
    with progress.watching(seen.listener()):
        measured = measure_plan(backend, _plan(backend))
    assert seen.totals == [measured.total_bytes] == [_snapshot_bytes(backend, snapshot)]


def test_watching_reaches_a_restore_given_no_listener_and_ends_with_its_block(backend, snapshot, data_dir):
    seen = Recorder()
    with progress.watching(seen.listener()) as listener:
        assert progress.current() is listener
        execute(backend, _plan(backend), data_dir, RestoreMode.NEW_CLUSTER)
    total = _snapshot_bytes(backend, snapshot)
    assert seen.totals == [total] and sum(seen.bytes) == total
    assert progress.current() is progress.NOBODY

    # After the block, another restore tells it nothing.
    told = (list(seen.bytes), list(seen.totals))
    execute(backend, _plan(backend), data_dir.with_name("data-2"), RestoreMode.NEW_CLUSTER)
    assert (seen.bytes, seen.totals) == told


def test_a_listener_watching_in_one_thread_hears_nothing_of_a_restore_in_another(backend, snapshot, data_dir):
    seen = Recorder()
    started, finish = threading.Event(), threading.Event()

    def watch() -> None:
        with progress.watching(seen.listener()):
            started.set()
            finish.wait(60)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert started.wait(10)
        execute(backend, _plan(backend), data_dir, RestoreMode.NEW_CLUSTER)
    finally:
        finish.set()
        watcher.join()
    assert seen.bytes == [] and seen.totals == []


@pytest.mark.usefixtures("prefect_api")
def test_the_flows_report_to_the_listener_watching_around_them(backend, snapshot, data_dir):
    """As the CLI runs them: in this process, the listener set around the call, the blobs staged
    on the task runner's threads."""
    from memrestore.flows.restore import restore_snapshot, verify_snapshot

    total = _snapshot_bytes(backend, snapshot)
    restored = Recorder()
    with progress.watching(restored.listener()):
        result = asyncio.run(restore_snapshot(
            backend=backend.url, tenant_id=1, data_dir=str(data_dir), mode=RestoreMode.NEW_CLUSTER,
            destination={"embedding_model": "minilm"},
        ))
    assert result["total_bytes"] == total
    assert restored.totals == [total] and sum(restored.bytes) == total

    verified = Recorder()
    with progress.watching(verified.listener()):
        result = asyncio.run(verify_snapshot(backend=backend.url, snapshot="snap-1"))
    assert result["status"] == "verified" and sum(verified.bytes) == total


@pytest.mark.usefixtures("prefect_api")
def test_the_cli_progress_bar_moves_with_a_restore(backend, snapshot, data_dir, monkeypatch):
    """The CLI's bar (on a terminal) is sized to the restore's total and advanced by every byte."""
    from rich.progress import Progress

    from memrestore.flows.cli.progress import progress_bar
    from memrestore.flows.restore import restore_snapshot

    advanced: list[float] = []
    totals: list[float | None] = []
    lock = threading.Lock()
    real_advance, real_update = Progress.advance, Progress.update

    def advance(self, task_id, advance: float = 1) -> None:
        with lock:
            advanced.append(advance)
        real_advance(self, task_id, advance)

    def update(self, task_id, *, total=None, **kw) -> None:
        if total is not None:
            totals.append(total)
        real_update(self, task_id, total=total, **kw)

    monkeypatch.setattr(Progress, "advance", advance)
    monkeypatch.setattr(Progress, "update", update)
    with progress_bar(True):
        asyncio.run(restore_snapshot(
            backend=backend.url, tenant_id=1, data_dir=str(data_dir), mode=RestoreMode.NEW_CLUSTER,
            destination={"embedding_model": "minilm"},
        ))
    total = _snapshot_bytes(backend, snapshot)
    assert totals == [total] and sum(advanced) == total
    assert progress.current() is progress.NOBODY
