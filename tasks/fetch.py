"""Manifest fetch: find the snapshot (by id, the tenant's latest, or its latest as of a time:
tasks/choose.py) and read its manifest."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from memrestore.backends import open_backend
from memrestore.backends.manifest import SnapshotManifest
from memrestore.tasks.choose import LATEST, fetch_manifest
from memrestore.tasks.retry import RETRY_OPTIONS

__all__ = ["LATEST", "fetch_manifest", "fetch_manifest_task"]


@task(name="fetch-manifest", cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def fetch_manifest_task(backend_url: str, tenant_id: int | None, snapshot: str = LATEST,
                        as_of: int | None = None) -> SnapshotManifest:
    """Read the snapshot's manifest; transient backend errors are retried."""
    return fetch_manifest(open_backend(backend_url), tenant_id, snapshot, as_of)
