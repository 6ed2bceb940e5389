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


@pytest.mark.usefixtures("prefect_api")
def test_a_progress_artifact_updated_on_every_event_sends_one_a_second_and_always_the_last(monkeypatch):
    """The drill updates its progress artifact once a tenant; with ``every``, an update sooner than
    that after the last one sent is dropped (each is an API call made in the drill's loop), except
    the one at 100 %, so the artifact the UI shows ends full and names the last count."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    sent: list[float] = []
    real = progress.update_progress_artifact

    def counted(artifact_id, percent, **kwargs):
        sent.append(percent)
        return real(artifact_id, percent, **kwargs)

    monkeypatch.setattr(progress, "update_progress_artifact", counted)
    clock = [1000.0]

    @flow
    def drill_like() -> str:
        artifact = progress.ProgressArtifact("progress-every", "0 of 50 tenants drilled", every=1.0,
                                             clock=lambda: clock[0])
        for done in range(1, 51):
            clock[0] += 0.1  # a tenant every 0.1 s: an update is due every 10
            artifact.update(2.0 * done, f"{done} of 50 tenants drilled")
        return str(artifact.id)

    artifact_id = drill_like()
    assert sent == [20.0, 40.0, 60.0, 80.0, 100.0]

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id])))

    (shown,) = asyncio.run(read())
    assert float(shown.data) == 100.0 and shown.description == "50 of 50 tenants drilled"
