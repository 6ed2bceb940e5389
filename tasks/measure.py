"""The plan's objects measured: each item's size from the store, before the data dir is touched."""

from __future__ import annotations

from memrestore.backends import Backend
from memrestore.tasks import progress
from memrestore.tasks.plan import RestorePlan


def measure_plan(backend: Backend, plan: RestorePlan) -> RestorePlan:
    """The plan with each item's size from the backend: proves every object exists, before the
    data dir is touched, and sizes the space check and the progress bar. The total is told to
    the listener watching (:func:`progress.watching`)."""
    items = [item.model_copy(update={"size": backend.object_size(item.content_key)}) for item in plan.items]
    measured = plan.model_copy(update={"items": items})
    progress.current().expect(measured.total_bytes or 0)
    return measured
