"""Two restores at once on one data dir: exactly one proceeds, the other is refused and changes
nothing.

Each round forks two children from this process; both block on one pipe and are released
together when the parent closes it, then run a whole restore (``tasks.restore.restore``, plain steps). The
backend is a ``GatedBackend`` (tests/restorekit.py): the restore that proceeds stages the first
two blobs, then stalls after the first chunk of the last one until the test lets it go on, so it
cannot finish before the other one has met it, however the scheduler runs them. Once the other
is refused, the test checks the marker is still the winner's, releases the winner, and checks
its result is complete, byte-identical, with nothing of ours left behind.

Through the CLI, two ``memrestore restore`` processes are started together; the one that takes
the marker is frozen with SIGSTOP as soon as its marker appears (a process stalled by the
scheduler or the disk, as far as the other can tell) until the other has been refused.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from memrestore.tasks.errors import RestoreInProgressError
from memrestore.tasks.crash_points import ENV as CRASH_ENV
from memrestore.tasks.marker import MARKER_NAME, lock_data_dir, read_marker
from memrestore.tasks.plan import RestoreMode
from tests.restorekit import execute
from tests.conftest import tree
from tests.procs import MEMRESTORE
from tests.restorekit import (
    LAYOUTS,
    SNAPSHOT,
    TENANT,
    Child,
    GatedBackend,
    Layout,
    Snapshot,
    fork_call,
    make_snapshot,
    report,
)

ROUNDS = 30
RESUME_ROUNDS = 6
CLI_ROUNDS = 2
HNSW_BYTES = 2 * 1024 * 1024
GATED_KEY = f"{SNAPSHOT}/hnsw-1.bin"
#: How long one side may take to be refused (a loaded CI machine gets room).
ROUND_TIMEOUT = 60
CLI_TIMEOUT = 300


@pytest.fixture(scope="module")
def snap(tmp_path_factory) -> Snapshot:
    snap = make_snapshot(tmp_path_factory.mktemp("race") / "backend", HNSW_BYTES)
    assert snap.plan.items[-1].content_key == GATED_KEY  # staged last: the winner stalls there
    return snap


@pytest.fixture(scope="module")
def race_log(request):
    log: list[dict] = []
    yield log
    if log:
        by_kind = Counter(r["kind"] for r in log)
        by_refusal = Counter(r["refusal"] for r in log)
        by_mode = Counter(r["mode"] for r in log)
        report(request, [
            f"two restores at once: {len(log)} rounds ("
            + ", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) + "; "
            + ", ".join(f"{m} {n}" for m, n in sorted(by_mode.items())) + "): one proceeded and one "
            "was refused every time; refused " + ", ".join(f"{k} {n}" for k, n in sorted(by_refusal.items()))
        ])


def refusal_kind(message: str) -> str:
    """Whether the loser found the winner's marker, or only its lock (before the marker existed)."""
    return "seeing the marker" if "memrestore restore of snapshot" in message else "by the lock alone"


def assert_in_progress_message(message: str, data_dir: Path) -> None:
    assert message.startswith("a restore is in progress in this data dir"), message
    assert str(data_dir / MARKER_NAME) in message, message
    assert "--resume" in message and f"memrestore abort --data-dir {data_dir}" in message, message


def _restore_after_barrier(backend, snap: Snapshot, layout: Layout, data_dir: Path, barrier: int, out: int,
                           resume: bool) -> None:
    os.read(barrier, 1)  # EOF when the parent closes the write end: both children go at once
    try:
        execute(backend, snap.plan, data_dir, layout.mode, resume=resume)
        result = {"ok": True}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        result = {"ok": False, "type": type(exc).__name__, "message": str(exc)}
    os.write(out, json.dumps(result).encode())


def _read_result(fd: int) -> dict:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return json.loads(b"".join(chunks))


def run_race(snap: Snapshot, layout: Layout, data_dir: Path, resume_of: Child | None = None) -> dict:
    """Two restores (with ``resume_of``: two resumes of that killed restore) released together."""
    resume = resume_of is not None
    gated = GatedBackend(snap.backend, GATED_KEY, hold_at=[1])
    barrier_r, barrier_w = os.pipe()
    racers: list[tuple[Child, int]] = []
    try:
        for _ in range(2):
            out_r, out_w = os.pipe()
            child = fork_call(lambda: (os.close(barrier_w), os.close(out_r), _restore_after_barrier(
                gated, snap, layout, data_dir, barrier_r, out_w, resume)))
            os.close(out_w)
            racers.append((child, out_r))
        os.close(barrier_r)
        os.close(barrier_w)  # go

        ready, _, _ = select.select([fd for _, fd in racers], [], [], ROUND_TIMEOUT)
        assert ready, f"{layout}: neither restore was refused within {ROUND_TIMEOUT}s"
        loser_index = [fd for _, fd in racers].index(ready[0])
        loser, loser_fd = racers[loser_index]
        winner, winner_fd = racers[1 - loser_index]
        refused = _read_result(loser_fd)
        assert not refused["ok"], f"{layout}: a restore finished while the other had not been refused"
        assert refused["type"] == RestoreInProgressError.__name__, refused
        assert_in_progress_message(refused["message"], data_dir)
        loser.wait(ROUND_TIMEOUT)
        assert loser.succeeded, loser.describe()

        gated.wait_arrived(winner.alive, ROUND_TIMEOUT)
        # The winner is mid-download, and the refused restore left the marker alone: it names the
        # winner (a resume takes the interrupted restore's marker over, with its own pid).
        info = read_marker(data_dir)
        assert info is not None and info.pid == winner.pid, info
        gated.release()
        won = _read_result(winner_fd)
        assert won == {"ok": True}, won
        winner.wait(ROUND_TIMEOUT)
        assert winner.succeeded, winner.describe()
    finally:
        for child, _ in racers:
            if child.alive():
                child.kill()
                child.wait()
        gated.close()
    assert tree(data_dir) == layout.expected(snap.new), f"{layout}: {sorted(tree(data_dir))}"
    return {"mode": layout.mode.value, "refusal": refusal_kind(refused["message"]),
            "kind": "resume vs resume" if resume else "restore vs restore"}


def test_two_restores_started_together(snap, race_log, tmp_path):
    for n in range(ROUNDS):
        layout = LAYOUTS[n % len(LAYOUTS)]
        data_dir = tmp_path / f"round{n}" / "data"
        layout.seed(data_dir)
        race_log.append(run_race(snap, layout, data_dir))


def test_two_resumes_of_one_interrupted_restore(snap, race_log, tmp_path):
    """Two ``--resume`` of the same killed restore: one finishes it, the other is refused."""
    for n in range(RESUME_ROUNDS):
        layout = LAYOUTS[n % len(LAYOUTS)]
        data_dir = tmp_path / f"round{n}" / "data"
        layout.seed(data_dir)
        crashed = fork_call(lambda: execute(snap.backend, snap.plan, data_dir, layout.mode),
                            {CRASH_ENV: "item-staged:1"})  # the SQLite checkpoint staged, then killed
        crashed.wait()
        assert crashed.killed, crashed.describe()
        race_log.append(run_race(snap, layout, data_dir, resume_of=crashed))


def test_a_refusal_by_the_lock_alone_does_not_claim_a_marker(snap, tmp_path):
    """A restore refused because another process holds the data dir's lock, before that one has
    written its marker (most of the races above end that way), should say so, not report a
    marker that "exists" (and is "unreadable", or "gone by now"): there is none yet."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    hold_r, hold_w = os.pipe()
    ready_r, ready_w = os.pipe()
    holder = fork_call(lambda: (os.close(hold_w), lock_data_dir(data_dir), os.write(ready_w, b"x"),
                                os.read(hold_r, 1)))  # holds the lock until the test closes hold_w
    try:
        assert os.read(ready_r, 1) == b"x"
        with pytest.raises(RestoreInProgressError) as info:
            execute(snap.backend, snap.plan, data_dir, RestoreMode.NEW_CLUSTER)
    finally:
        os.close(hold_w)
        holder.wait()
        for fd in (hold_r, ready_r, ready_w):
            os.close(fd)
    assert tree(data_dir) == {}
    message = str(info.value)
    assert_in_progress_message(message, data_dir)
    assert f"{data_dir / MARKER_NAME} exists" not in message, message


def _freeze_the_marker_holder(data_dir: Path, procs: list[subprocess.Popen]) -> subprocess.Popen:
    """SIGSTOP the CLI restore whose marker appears in ``data_dir``; returns it."""
    deadline = time.monotonic() + CLI_TIMEOUT
    while True:
        info = read_marker(data_dir)
        holder = next((p for p in procs if info is not None and p.pid == info.pid), None)
        if holder is not None:
            holder.send_signal(signal.SIGSTOP)
            info = read_marker(data_dir)  # still there once frozen: the holder had not finished
            assert info is not None and info.pid == holder.pid, "the restore finished before it could be frozen"
            return holder
        assert all(p.poll() is None for p in procs), [(p.returncode, p.stderr.read()) for p in procs if p.poll()]
        assert time.monotonic() < deadline, "no CLI restore took the marker"
        time.sleep(0.001)


def test_two_cli_restores_started_together(prefect_api, snap, race_log, tmp_path):
    for n, layout in enumerate([LAYOUTS[0], LAYOUTS[7]][:CLI_ROUNDS]):
        data_dir = tmp_path / f"cli{n}" / "data"
        layout.seed(data_dir)
        args = [*MEMRESTORE, "restore", "--backend", snap.backend.url, "--tenant",
                str(TENANT), "--snapshot", SNAPSHOT, "--data-dir", str(data_dir), "--mode", layout.mode.value,
                "--embedding-model", "minilm"]
        procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        try:
            winner = _freeze_the_marker_holder(data_dir, procs)
            loser = next(p for p in procs if p is not winner)
            out, refused = loser.communicate(timeout=CLI_TIMEOUT)
            assert loser.returncode == 1, (out, refused)
            assert refused.startswith("error: ") and "Traceback" not in refused and out == "", refused
            assert_in_progress_message(" ".join(refused.removeprefix("error: ").split()), data_dir)
            winner.send_signal(signal.SIGCONT)
            out, err = winner.communicate(timeout=CLI_TIMEOUT)
            assert winner.returncode == 0, err
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGCONT)
                    p.kill()
                    p.wait()
        assert tree(data_dir) == layout.expected(snap.new)
        race_log.append({"mode": layout.mode.value, "refusal": refusal_kind(refused), "kind": "CLI vs CLI"})
