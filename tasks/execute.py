"""A whole restore as plain function calls: the service's own ``RestoreExecutor`` in Python. The
``restore-snapshot`` flow runs the same steps as Prefect tasks (retried, observable); this runs
them inside the caller (a drill's tenant run, the tests, the benchmarks), with no run of its own.
Both go through the one sequence of :mod:`memrestore.tasks.sequence` after their preflight.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

from memrestore.backends import Backend
from memrestore.tasks import crash_points, sequence
from memrestore.tasks.checks import CheckLevel, check_staged
from memrestore.tasks.commit import commit_staged
from memrestore.tasks.measure import measure_plan
from memrestore.tasks.hold import DataDirHold
from memrestore.tasks.marker import Phase, staging_dir
from memrestore.tasks.outcome import RestoreOutcome, build_outcome
from memrestore.tasks.plan import PlanItem, RestoreMode, RestorePlan
from memrestore.tasks.preflight import preflight
from memrestore.tasks.stage import StagedItem, recheck_item, stage_item
from memrestore.tasks.transfer import Transfer

#: Items staged at once, here and in the ``restore-snapshot`` flow (its task runner): a snapshot
#: has a SQLite checkpoint and a few HNSW blobs, so four covers them. How many GETs are in flight
#: is the restore's streams' (:class:`tasks.transfer.Transfer`): from S3, the staged items' parts
#: share them, so a lone large blob gets them all.
ITEM_CONCURRENCY = 4


def stage_all(stage: Callable[[PlanItem], StagedItem], items: list[PlanItem]) -> list[StagedItem]:
    """``stage`` every item, at most :data:`ITEM_CONCURRENCY` at once; the results in the items'
    order. Every item has finished (none is still writing) when this returns or raises, and only
    then is a failure raised: that of the first item, in the plan's order, that failed.
    Interrupted (Ctrl-C), it drops the items not yet started and waits for the running ones.

    With a crash point armed (``tasks/crash_points.py``, the crash tests only), the items are staged
    one after another instead, so that a kill comes at an exact instant: the n-th pass through
    ``item-staged`` is the n-th item, with the ones after it not staged yet."""
    if len(items) <= 1 or os.environ.get(crash_points.ENV):
        return [stage(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(ITEM_CONCURRENCY, len(items)), thread_name_prefix="memrestore-stage")
    try:
        futures = [pool.submit(stage, item) for item in items]
        wait(futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return [f.result() for f in futures]


def execute(
    backend: Backend,
    plan: RestorePlan,
    data_dir: Path,
    mode: RestoreMode,
    resume: bool = False,
    transfer: Transfer | None = None,
    check: CheckLevel = CheckLevel.NONE,
) -> RestoreOutcome:
    """Preflight, stage and verify every item (concurrently, on ``transfer``'s streams and under
    its rate limit; without one, on streams of the default number), commit, clean up; roll back
    on any failure. Before the commit, the staged copy is checked at ``check`` (tasks/checks.py):
    the caller's choice here (a drill checks its copy afterwards, in full); the restore-snapshot
    flow and the command line check ``quick`` unless told otherwise."""
    if transfer is None:
        with Transfer() as own:
            return execute(backend, plan, data_dir, mode, resume, own, check)
    started = time.monotonic()
    data_dir = Path(data_dir)
    plan = measure_plan(backend, plan, transfer.listener)
    with DataDirHold(data_dir) as hold:
        phase = preflight(plan, hold, mode, resume=resume)
        fresh = phase in (None, Phase.STAGING)  # else interrupted mid-commit: staged and verified already
        staged, check_seconds = sequence.run(hold, plan.tenant_id, sequence.Steps(
            stage=lambda: stage_all(
                (lambda item: stage_item(backend, item, data_dir, phase is not None, transfer)) if fresh
                else (lambda item: recheck_item(data_dir, item)), plan.items),
            check=lambda: check_staged(plan, staging_dir(data_dir), check) if fresh else None,
            commit=lambda: commit_staged(hold, plan.tenant_id, mode),
        ))
    return build_outcome("restored", plan, mode, data_dir, staged, time.monotonic() - started,
                         check.value if check_seconds is not None else None, check_seconds, hold.removed,
                         streams=transfer.streams_used())
