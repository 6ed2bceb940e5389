"""A whole restore as plain function calls, one item after another: the service's own
``RestoreExecutor`` in Python. The ``restore-snapshot`` flow runs the same steps as Prefect
tasks (concurrent, retried, observable); this is for tests and for measuring Prefect's cost.
"""

from __future__ import annotations

import time
from pathlib import Path

from backends import Backend
from tasks.commit import commit_staged, remove_leftovers, roll_back
from tasks.fetch import measure_plan
from tasks.layout import Phase
from tasks.outcome import RestoreOutcome, build_outcome
from tasks.plan import RestoreMode, RestorePlan
from tasks.preflight import preflight
from tasks.stage import recheck_item, stage_item


def execute(
    backend: Backend,
    plan: RestorePlan,
    data_dir: Path,
    mode: RestoreMode,
    resume: bool = False,
) -> RestoreOutcome:
    """Preflight, stage and verify every item, commit, clean up; roll back on any failure."""
    started = time.monotonic()
    data_dir = Path(data_dir)
    plan = measure_plan(backend, plan)
    phase = preflight(plan, data_dir, mode, resume=resume)
    try:
        if phase in (None, Phase.STAGING):
            staged = [stage_item(backend, item, data_dir, phase is not None) for item in plan.items]
        else:
            staged = [recheck_item(data_dir, item) for item in plan.items]
        commit_staged(data_dir, plan.tenant_id, mode)
    except BaseException:
        roll_back(data_dir, plan.tenant_id)
        raise
    remove_leftovers(data_dir)
    return build_outcome("restored", plan, mode, data_dir, staged, time.monotonic() - started)
