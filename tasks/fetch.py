"""Manifest fetch: find the snapshot (by id, the tenant's latest, or its latest as of a time:
tasks/choose.py) and read its manifest; measure the plan's objects."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from memrestore.backends import Backend, open_backend
from memrestore.backends.manifest import SnapshotManifest
from memrestore.tasks import progress
from memrestore.tasks.choose import LATEST, fetch_manifest
from memrestore.tasks.plan import RestorePlan
from memrestore.tasks.retry import RETRY_OPTIONS

__all__ = ["LATEST", "fetch_manifest", "fetch_manifest_task", "measure_plan", "measure_plan_task"]


@task(name="fetch-manifest", cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def fetch_manifest_task(backend_url: str, tenant_id: int | None, snapshot: str = LATEST,
                        as_of: int | None = None) -> SnapshotManifest:
    """Read the snapshot's manifest; transient backend errors are retried."""
    return fetch_manifest(open_backend(backend_url), tenant_id, snapshot, as_of)


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
