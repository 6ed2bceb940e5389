"""The restore's steps as Prefect task runs: the one table of which step runs as which task, with
its retries, and :class:`TaskRuns`, the :class:`~memrestore.tasks.restore.Steps` that the flows
(flows/restore.py) hand the composer.

The steps themselves are plain functions (tasks/); a drill's tenant and the tests call them
through :data:`memrestore.tasks.restore.PLAIN`. Here each becomes a task run, which the UI shows
and which Prefect retries: a transient backend error (throttling, 5xx, a dropped connection) in a
step that reads the store, with backoff (tasks/retry.py); nothing else is retried, and nothing
that writes the data dir.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Sequence, TypeVar

from prefect import Task, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.runtime import flow_run
from prefect.settings import get_current_settings

from memrestore.tasks.checks import check_staged
from memrestore.tasks.choose import fetch_manifest
from memrestore.tasks.commit import abort, clean_up, commit_staged
from memrestore.tasks.dead_restores import mark_dead_run
from memrestore.tasks.marker import RunRef
from memrestore.tasks.measure import measure_plan
from memrestore.tasks.plan import PlanItem, RestorePlan
from memrestore.tasks.preflight import preflight
from memrestore.tasks.progress import bytes_artifact
from memrestore.tasks.restore import Steps
from memrestore.tasks.retry import RETRY_OPTIONS
from memrestore.tasks.stage import hash_item, recheck_item, stage_item
from memrestore.tasks.transfer import Transfer
from memrestore.tasks.validate import validate
from memrestore.tasks.validation import validate_staged

T = TypeVar("T")


def _as_task(step: Callable, name: str, retried: bool) -> Task:
    return task(step, name=name, cache_policy=NO_CACHE, persist_result=False,
                **(RETRY_OPTIONS if retried else {}))


#: Every step a flow runs, as the task run it is: (step, the task's name, retried).
TASKS: dict[Callable, Task] = {step: _as_task(step, name, retried) for step, name, retried in (
    (fetch_manifest, "fetch-manifest", True),
    (validate, "validate", False),  # pure: the same manifest fails the same way
    (measure_plan, "measure-objects", True),
    (preflight, "preflight", False),
    (stage_item, "download-and-verify", True),  # a failed try's .part is removed; the next starts over
    (recheck_item, "recheck-staged", False),
    (check_staged, "check-staged-copy", False),  # a damaged checkpoint stays damaged
    (validate_staged, "validate-staged-copy", False),  # the operator's verdict is the verdict
    (commit_staged, "atomic-writes", False),  # local and idempotent: a resume finishes it
    (clean_up, "marker-cleanup", False),
    (abort, "abort", False),
    (hash_item, "download-and-hash", True),
)}


def this_run() -> RunRef | None:
    """The flow run this restore runs as, for its marker."""

    run_id = flow_run.get_id()
    return RunRef(flow_run_id=str(run_id), api_url=get_current_settings().api.url) if run_id else None


class TaskRuns(Steps):
    """Each step a task run of the flow run this is made in; the per-item steps mapped, as many
    at once as the flow's task runner runs. A marker found of a dead restore has its flow run
    marked Crashed (tasks/dead_restores.py)."""

    on_dead_holder = staticmethod(mark_dead_run)

    def __init__(self) -> None:
        self.run = this_run()

    def call(self, step: Callable[..., T], *args: Any) -> T:
        return TASKS[step](*args)

    def map(self, step: Callable[..., T], items: Sequence[PlanItem], *shared: Any) -> list[T]:
        """As :meth:`Steps.map`: every item's task run finished (none left running) before the
        first failure, in the items' order, is raised."""
        futures = TASKS[step].map(list(items), *(unmapped(value) for value in shared))
        wait(futures)
        results = [f.result(raise_on_failure=False) for f in futures]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        return results

    def watching_bytes(self, plan: RestorePlan, transfer: Transfer) -> AbstractContextManager:
        """The UI watches the bytes arrive: a progress artifact of the run."""
        return bytes_artifact(f"restore-progress-tenant-{plan.tenant_id}", plan.total_bytes or 0,
                              lambda: transfer.received)
