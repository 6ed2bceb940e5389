"""Real crashes: a restore is killed with SIGKILL at every step, then finished or undone.

Each kill runs a whole restore (``tasks.restore.restore``, plain steps, through ``tests.restorekit.execute``) in a child forked from this process
and kills it, either at the n-th pass through a crash point (``MEMRESTORE_CRASH_AT``, see
``tasks/crash_points.py``) or at a random instant from the parent. After each kill:

- the data dir holds its old contents untouched (marker in phase ``staging``, or no marker when
  the kill came before it was taken), or the complete new contents (marker in phase ``cleanup``,
  or no marker once finished), or, only with the marker in phase ``committing``, a mid-commit
  state in which no old entry and no new file is lost (each is in place or in ``.restore-*``);
- on one copy, ``execute(..., resume=True)`` completes to the exact new tree;
- on another copy, ``abort`` puts back the exact old tree (or, with no marker, refuses with
  NothingToAbortError and changes nothing).

A few kills go through the real CLI (``memrestore restore``, ``--resume``, ``abort``) as
subprocesses, to prove the operator's route. The totals are printed at the end of the module.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from memrestore.backends.local import READ_CHUNK
from memrestore.tasks import restore as restore_module
from memrestore.tasks.commit import abort
from memrestore.tasks.errors import DataDirNotEmptyError, LeftoverAsideError, NothingToAbortError, RestoreRefusedError
from memrestore.tasks.crash_points import ENV as CRASH_ENV
from memrestore.tasks.marker import ASIDE_NAME, MARKER_NAME, STAGING_NAME, TRASH_NAME, Phase, read_marker
from memrestore.tasks.plan import RestoreMode
from tests.restorekit import execute
from tests.conftest import tree
from tests.procs import memrestore
from tests.restorekit import (
    LAYOUTS,
    OTHERS,
    SNAPSHOT,
    TENANT,
    Layout,
    Snapshot,
    build,
    fork_call,
    make_snapshot,
    ours,
    report,
    service_tree,
)

#: Three 1 MiB reads and a short one per HNSW blob: kills land inside a blob, at its end, and
#: between blobs. Small enough that a kill, both recoveries and the clean-up take ~0.1 s.
HNSW_BYTES = 3 * READ_CHUNK + 4096
#: Random-instant kills per layout, spread over one uninterrupted restore's duration.
RANDOM_KILLS_PER_LAYOUT = 8
RANDOM_SEED = int(os.environ.get("MEMRESTORE_CRASH_SEED", "20240611"))
#: A restore's phase when killed at each crash point ("finished": no marker, new data in place).
STATE_AT_POINT = {
    "marker-created": "preflight",
    "stage-chunk": "staging",
    "item-staged": "staging",
    "phase-committing": "committing",
    "moved-aside": "committing",
    "tenant-moved-in": "committing",
    "phase-cleanup": "cleanup",
    "cleanup-trashed": "cleanup",
    "marker-removed": "finished",
}
#: A kill, then a kill of the resumed restore, then a resume and an abort of what is left.
DOUBLE_KILLS = [
    ("item-staged:2", "item-staged:1"),
    ("item-staged:2", "tenant-moved-in:1"),
    ("tenant-moved-in:1", "phase-cleanup:1"),
    ("phase-cleanup:1", "marker-removed:1"),
]
STATES = ("not-started", "preflight", "staging", "committing", "cleanup", "finished")


@pytest.fixture(scope="module")
def snap(tmp_path_factory) -> Snapshot:
    return make_snapshot(tmp_path_factory.mktemp("crash") / "backend", HNSW_BYTES)


@pytest.fixture(scope="module")
def kill_log(request):
    """Every kill of the module; the totals are written to the terminal when the module ends."""
    log: list[dict] = []
    yield log
    if log:
        report(request, summarize(log))


def summarize(log: list[dict]) -> list[str]:
    by_mode = Counter(k["mode"] for k in log)
    by_state = Counter(k["state"] for k in log)
    by_point = Counter(k["point"] for k in log)
    lines = [
        f"crash test: {len(log)} SIGKILLs, each followed by --resume (exact new tree) and abort "
        f"(exact old tree) on copies; random-instant seed {RANDOM_SEED}",
        "  by mode:  " + ", ".join(f"{m.value} {by_mode[m.value]}" for m in RestoreMode),
        "  by phase at death: " + ", ".join(f"{s} {by_state[s]}" for s in STATES),
        "  by kill point: " + ", ".join(f"{p} {n}" for p, n in sorted(by_point.items())),
        "  by route: " + ", ".join(f"{r} {n}" for r, n in sorted(Counter(k["route"] for k in log).items())),
    ]
    for mode in RestoreMode:
        row = Counter(k["state"] for k in log if k["mode"] == mode.value)
        lines.append(f"  {mode.value:17} " + "  ".join(f"{s}={row[s]}" for s in STATES))
    return lines


def crash_points(layout: Layout, snap: Snapshot) -> list[str]:
    """Every crash point, with n at the first, middle and last passes for the repeated ones."""
    chunks = sum(math.ceil(snap.backend.object_size(i.content_key) / READ_CHUNK) for i in snap.plan.items)
    items = len(snap.plan.items)
    return (
        ["marker-created:1"]
        + [f"stage-chunk:{n}" for n in sorted({1, 2, chunks // 2, chunks - 1, chunks})]
        + [f"item-staged:{n}" for n in range(1, items + 1)]
        + ["phase-committing:1"]
        + [f"moved-aside:{n}" for n in range(1, layout.moved_aside + 1)]
        + ["tenant-moved-in:1", "phase-cleanup:1", "cleanup-trashed:1", "marker-removed:1"]
    )


def check_killed_state(data_dir: Path, layout: Layout, snap: Snapshot) -> str:
    """What the kill left, checked against the guarantees; returns the restore's phase at death."""
    old, new = layout.old_tree, layout.expected(snap.new)
    full, service = tree(data_dir), service_tree(data_dir)
    marker = data_dir / MARKER_NAME
    if not os.path.lexists(marker):
        if service == old:
            # Killed before the marker was taken: at most a marker temp file of ours is left.
            assert all(n.startswith(MARKER_NAME) and n.endswith(".tmp") for n in ours(data_dir)), ours(data_dir)
            return "not-started"
        assert service == new, f"no marker, and the data dir is neither old nor new: {sorted(full)}"
        return "finished"

    info = read_marker(data_dir)
    assert info is not None, f"the marker is not a complete marker of ours: {marker.read_bytes()!r}"
    assert (info.snapshot_id, info.tenant_id, info.mode) == (SNAPSHOT, TENANT, layout.mode.value)
    for rel, data in old.items():  # no old entry lost: in place, set aside, or in the trash
        places = (rel, f"{ASIDE_NAME}/{rel}", f"{TRASH_NAME}/{rel}")
        assert any(full.get(p) == data for p in places), f"old {rel} lost in phase {info.phase.value}"
    if info.phase in (Phase.PREFLIGHT, Phase.STAGING):
        assert service == old, f"old data touched while staging: {sorted(full)}"
    else:
        for rel, data in snap.new.items():  # no new file lost: in place or still staged
            assert any(full.get(p) == data for p in (rel, f"{STAGING_NAME}/{rel}")), f"new {rel} lost"
        if info.phase is Phase.CLEANUP:
            assert service == new, f"phase cleanup but the new data is not in place: {sorted(full)}"
    return info.phase.value


def copy_of(data_dir: Path, to: Path) -> Path:
    if data_dir.exists():
        shutil.copytree(data_dir, to, symlinks=True)
    return to


def recover_in_process(data_dir: Path, layout: Layout, snap: Snapshot, state: str, work: Path) -> None:
    """On two copies: --resume gives the exact new tree, abort the exact old one."""
    new = layout.expected(snap.new)
    resumed = copy_of(data_dir, work / "resumed")
    aborted = copy_of(data_dir, work / "aborted")

    try:
        execute(snap.backend, snap.plan, resumed, layout.mode, resume=True)
    except RestoreRefusedError:
        # Only a finished restore may be refused: there is nothing left to resume, and a new
        # restore's precondition (empty dir, empty tenant dir) no longer holds. Nothing changes.
        assert state == "finished", f"--resume refused after a kill in phase {state}"
        assert service_tree(resumed) == new and not (resumed / MARKER_NAME).exists()
    else:
        assert tree(resumed) == new, f"--resume after a kill in phase {state}: {sorted(tree(resumed))}"

    if state in ("not-started", "finished"):
        with pytest.raises(NothingToAbortError):
            abort(aborted)
        assert service_tree(aborted) == (layout.old_tree if state == "not-started" else new)
    else:
        info = abort(aborted)
        assert info.phase.value == state
        assert tree(aborted) == layout.old_tree, f"abort after a kill in phase {state}: {sorted(tree(aborted))}"


def restore_in_child(snap: Snapshot, layout: Layout, data_dir: Path, crash_at: str | None, resume: bool = False):
    env = {CRASH_ENV: crash_at} if crash_at else None

    def run() -> None:
        if crash_at:  # the items one at a time, in the child: the n-th pass through item-staged is the n-th item
            restore_module.ITEM_CONCURRENCY = 1
        execute(snap.backend, snap.plan, data_dir, layout.mode, resume=resume)

    return fork_call(run, env)


def kill_once(snap, layout, work: Path, kill_log, crash_at: str | None = None, delay: float | None = None,
              then_crash_at: str | None = None) -> str:
    """One restore killed (at ``crash_at``, or ``delay`` s after its start), checked and recovered.

    With ``then_crash_at`` the killed restore is resumed and killed again there before recovery.
    """
    assert CRASH_ENV not in os.environ  # crash points arm in children only
    data_dir = work / "data"
    layout.seed(data_dir)
    child = restore_in_child(snap, layout, data_dir, crash_at)
    if delay is not None:
        time.sleep(delay)
        child.kill()
    child.wait()
    where = f"{layout}, {crash_at or f'{delay * 1000:.1f} ms'}"
    if crash_at is not None:
        assert child.killed, f"{where}: the crash point was not reached ({child.describe()})"
    else:
        assert child.killed or child.succeeded, f"{where}: the restore failed ({child.describe()})"
    state = check_killed_state(data_dir, layout, snap)
    if crash_at is not None:
        assert state == STATE_AT_POINT[crash_at.split(":")[0]], f"{where}: phase {state}"
    kill_log.append({"mode": layout.mode.value, "layout": str(layout), "state": state, "route": "fork",
                     "point": crash_at.split(":")[0] if crash_at else "random instant"})

    if then_crash_at is not None:
        second = restore_in_child(snap, layout, data_dir, then_crash_at, resume=True)
        second.wait()
        assert second.killed, f"{where}, resumed to {then_crash_at}: not reached ({second.describe()})"
        state = check_killed_state(data_dir, layout, snap)
        assert state == STATE_AT_POINT[then_crash_at.split(":")[0]], f"{where}, then {then_crash_at}: {state}"
        kill_log.append({"mode": layout.mode.value, "layout": str(layout), "state": state, "route": "fork, resumed",
                         "point": then_crash_at.split(":")[0]})

    recover_in_process(data_dir, layout, snap, state, work)
    shutil.rmtree(work, ignore_errors=True)
    return state


@pytest.mark.parametrize("mode", list(RestoreMode), ids=[m.value for m in RestoreMode])
def test_sigkill_at_every_step_then_resume_or_abort(mode, snap, kill_log, tmp_path):
    rng = random.Random(f"{RANDOM_SEED}-{mode.value}")
    counter = iter(range(10**6))
    states: Counter[str] = Counter()
    points: set[str] = set()
    for layout in [layout for layout in LAYOUTS if layout.mode is mode]:
        for crash_at in crash_points(layout, snap):
            states[kill_once(snap, layout, tmp_path / f"k{next(counter)}", kill_log, crash_at)] += 1
            points.add(crash_at.split(":")[0])

        # One uninterrupted restore, timed from the fork: the window for the random kills.
        work = tmp_path / f"k{next(counter)}"
        layout.seed(work / "data")
        started = time.monotonic()
        child = restore_in_child(snap, layout, work / "data", None)
        child.wait()
        duration = time.monotonic() - started
        assert child.succeeded and tree(work / "data") == layout.expected(snap.new), child.describe()
        shutil.rmtree(work)
        for _ in range(RANDOM_KILLS_PER_LAYOUT):
            delay = rng.uniform(0, 0.9 * duration)
            states[kill_once(snap, layout, tmp_path / f"k{next(counter)}", kill_log, delay=delay)] += 1

    richest = [layout for layout in LAYOUTS if layout.mode is mode][-1]
    for first, second in DOUBLE_KILLS:
        states[kill_once(snap, richest, tmp_path / f"k{next(counter)}", kill_log, first, then_crash_at=second)] += 1

    kills = sum(1 for k in kill_log if k["mode"] == mode.value and k["route"] != "cli")
    print(f"{mode.value}: {kills} kills; phases at death {dict(states)}")
    assert kills >= 34, kills  # four modes: over 130 kills in all
    expected_points = set(STATE_AT_POINT) - ({"moved-aside"} if mode is RestoreMode.NEW_CLUSTER else set())
    assert points == expected_points
    assert {"staging", "committing", "cleanup", "finished"} <= set(states), states


def test_resume_rechecks_the_mode_when_killed_before_the_checks(snap, tmp_path):
    """A kill right after the marker is taken comes before the mode's precondition was checked:
    a resume must check it then, not finish a restore that was never allowed to start."""
    data_dir = tmp_path / "data"
    build(data_dir, OTHERS)  # not empty: new_cluster must refuse it
    layout = Layout("not empty", RestoreMode.NEW_CLUSTER, OTHERS)
    child = restore_in_child(snap, layout, data_dir, "marker-created:1")
    child.wait()
    assert child.killed
    with pytest.raises(DataDirNotEmptyError):
        execute(snap.backend, snap.plan, data_dir, RestoreMode.NEW_CLUSTER, resume=True)
    assert service_tree(data_dir) == OTHERS


def test_resume_keeps_leftover_aside_data_when_killed_before_the_checks(snap, tmp_path):
    """Data set aside by an earlier restore whose marker was removed by hand is refused
    (LeftoverAsideError) by a fresh restore. A kill that came after the marker but before that
    check must not let the resume or the abort sweep it away with their own bookkeeping."""
    data_dir = tmp_path / "data"
    only_copy = b"the only copy of tenant 7"
    leftover = {f"{ASIDE_NAME}/tenant_7/data.sqlite": only_copy}
    build(data_dir, OTHERS | leftover)
    layout = Layout("leftover aside", RestoreMode.WIPE_AND_RESTORE, OTHERS)
    child = restore_in_child(snap, layout, data_dir, "marker-created:1")
    child.wait()
    assert child.killed
    aborted = copy_of(data_dir, tmp_path / "aborted")
    abort(aborted)
    assert only_copy in tree(aborted).values(), f"abort deleted the leftover: {sorted(tree(aborted))}"
    with pytest.raises(LeftoverAsideError):
        execute(snap.backend, snap.plan, data_dir, RestoreMode.WIPE_AND_RESTORE, resume=True)
    assert {k: v for k, v in tree(data_dir).items() if k.startswith(ASIDE_NAME)} == leftover


# --- the same through the CLI: `memrestore restore`, killed; then `--resume` and `abort` -------

#: (index in LAYOUTS, crash point): each mode, and each phase.
CLI_KILLS = [
    (0, "stage-chunk:3"),
    (3, "item-staged:2"),
    (7, "moved-aside:2"),
    (5, "moved-aside:1"),
    (1, "tenant-moved-in:1"),
    (3, "phase-cleanup:1"),
    (6, "cleanup-trashed:1"),
]


def cli_restore(snap: Snapshot, layout: Layout, data_dir: Path, *extra: str, env=None):
    return memrestore("restore", "--backend", snap.backend.url, "--tenant", TENANT, "--snapshot", SNAPSHOT,
                      "--data-dir", data_dir, "--mode", layout.mode.value, "--embedding-model", "minilm",
                      *extra, env=env)


def test_sigkill_through_the_cli_then_resume_or_abort(prefect_api, snap, kill_log, tmp_path):
    cases = [(i, LAYOUTS[index], point, tmp_path / f"cli{i}") for i, (index, point) in enumerate(CLI_KILLS)]
    for _, layout, _, work in cases:
        layout.seed(work / "data")
    with ThreadPoolExecutor(max_workers=3) as pool:
        killed = list(pool.map(lambda c: cli_restore(snap, c[1], c[3] / "data", env={CRASH_ENV: c[2]}), cases))

    recoveries = []
    for (_, layout, point, work), proc in zip(cases, killed):
        assert proc.returncode == -9, f"{layout}, {point}: {proc.returncode} {proc.stderr[-2000:]}"
        state = check_killed_state(work / "data", layout, snap)
        assert state == STATE_AT_POINT[point.split(":")[0]], f"{layout}, {point}: phase {state}"
        kill_log.append({"mode": layout.mode.value, "layout": str(layout), "state": state, "route": "cli",
                         "point": point.split(":")[0]})
        recoveries.append((layout, point, state, copy_of(work / "data", work / "resumed"),
                           copy_of(work / "data", work / "aborted")))

    with ThreadPoolExecutor(max_workers=4) as pool:
        resumed = pool.map(lambda r: cli_restore(snap, r[0], r[3], "--resume"), recoveries)
        aborted = pool.map(lambda r: memrestore("abort", "--data-dir", r[4]), recoveries)
        results = list(zip(recoveries, resumed, aborted))
    for (layout, point, state, resumed_dir, aborted_dir), res, abo in results:
        assert res.returncode == 0, f"{layout}, {point}: --resume: {res.stderr[-2000:]}"
        assert tree(resumed_dir) == layout.expected(snap.new), f"{layout}, {point}: --resume"
        assert abo.returncode == 0, f"{layout}, {point}: abort: {abo.stderr[-2000:]}"
        assert "rolled back" in abo.stdout and f"phase {state}" in abo.stdout, abo.stdout
        assert tree(aborted_dir) == layout.old_tree, f"{layout}, {point}: abort"
