"""The plan's objects measured: each item's size from the store, before the data dir is touched."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from memrestore.backends import Backend, open_backend
from memrestore.tasks import progress
from memrestore.tasks.plan import RestorePlan
from memrestore.tasks.retry import RETRY_OPTIONS


def measure_plan(backend: Backend, plan: RestorePlan,
                 listener: progress.Listener | None = None) -> RestorePlan:
    """The plan with each item's size from the backend: proves every object exists, before the
    data dir is touched, and sizes the space check and the progress bar. The total is told to
    ``listener``; without one, to the listener watching (:func:`progress.watching`)."""
    items = [item.model_copy(update={"size": backend.object_size(item.content_key)}) for item in plan.items]
    measured = plan.model_copy(update={"items": items})
    progress.current(listener).expect(measured.total_bytes or 0)
    return measured


@task(name="measure-objects", cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def measure_plan_task(plan: RestorePlan) -> RestorePlan:
    """Look up every object's size; transient backend errors are retried."""
    return measure_plan(open_backend(plan.backend), plan)
