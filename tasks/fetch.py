"""Manifest fetch: find the snapshot (by id, or the tenant's latest) and read its manifest."""

from __future__ import annotations

import logging

from prefect import task
from prefect.cache_policies import NO_CACHE

from memrestore.backends import Backend, list_snapshots, open_backend, read_manifest
from memrestore.backends.errors import ObjectNotFoundError
from memrestore.backends.manifest import SnapshotManifest, check_snapshot_id
from memrestore.tasks import progress
from memrestore.tasks.errors import SnapshotNotFoundError
from memrestore.tasks.plan import RestorePlan
from memrestore.tasks.retry import RETRY_OPTIONS

LATEST = "latest"

log = logging.getLogger(__name__)


def fetch_manifest(backend: Backend, tenant_id: int | None, snapshot: str = LATEST) -> SnapshotManifest:
    """The manifest of ``snapshot`` (an id, or ``latest``) for ``tenant_id`` (any if None).

    ``latest`` is the tenant's newest snapshot by the manifest's ``created_at_unix_micros``,
    never by object modification times (a copy or re-upload changes those).
    """
    if snapshot == LATEST:
        if tenant_id is None:
            raise SnapshotNotFoundError("'latest' needs a tenant: pass --tenant N, or a snapshot id")
        listing = list_snapshots(backend, tenant_id)
        for sid, why in sorted(listing.unreadable.items()):
            log.warning("skipping snapshot %s whose manifest cannot be read: %s", sid, why)
        newest = listing.latest(tenant_id)
        if newest is None:
            skipped = f" ({len(listing.unreadable)} unreadable manifests skipped)" if listing.unreadable else ""
            raise SnapshotNotFoundError(
                f"backend {backend.url} holds no finished snapshot of tenant {tenant_id}{skipped}; "
                "check the tenant id and the backend with `memrestore snapshots --backend URL`."
            )
        return newest

    check_snapshot_id(snapshot)
    try:
        manifest = read_manifest(backend, snapshot)
    except ObjectNotFoundError:
        raise SnapshotNotFoundError(
            f"snapshot {snapshot!r} not found in backend {backend.url} (no {snapshot}/manifest.json; "
            "a folder without a manifest is an unfinished snapshot). List the snapshots with "
            "`memrestore snapshots --backend URL`."
        ) from None
    if tenant_id is not None and manifest.tenant_id != tenant_id:
        raise SnapshotNotFoundError(
            f"snapshot {snapshot!r} belongs to tenant {manifest.tenant_id}, not tenant {tenant_id}; "
            "check --tenant, or pick one of this tenant's snapshots with `memrestore snapshots "
            f"--backend URL --tenant {tenant_id}`."
        )
    return manifest


@task(name="fetch-manifest", cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def fetch_manifest_task(backend_url: str, tenant_id: int | None, snapshot: str = LATEST) -> SnapshotManifest:
    """Read the snapshot's manifest; transient backend errors are retried."""
    return fetch_manifest(open_backend(backend_url), tenant_id, snapshot)


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
