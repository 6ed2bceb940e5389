"""The ``restore-drill`` flow: every tenant's latest snapshot restored into scratch, checked,
measured and deleted, with a report for people (artifacts), for machines (the persisted JSON
result) and for pagers (a ``memrestore.drill.failed`` event per failed tenant).

Each tenant is one ``drill-tenant`` task run; each snapshot it restores is a ``restore-snapshot``
subflow run under it, with that restore's own artifacts. The run ends Failed when any tenant
failed, and still carries the report: it returns a Failed state whose data is the report, so the
report is the run's persisted result either way. Read it with :func:`drill_report` on the state
(``restore_drill(..., return_state=True)``); a plain call of a failed drill raises instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.events import emit_event
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from backends.manifest import SnapshotManifest
from flows.restore import Destination, outcome_of, restore_snapshot
from tasks.drill import (
    DEFAULT_DRILL_CONCURRENCY,
    DRILL_FAILED_EVENT,
    MAX_DRILL_CONCURRENCY,
    DrillReport,
    TenantDrillResult,
    attempt_snapshot,
    build_report,
    check_restored_task,
    close_scratch_root,
    crashed_result,
    drill_candidates,
    drill_destination,
    drill_tenant,
    list_snapshots_task,
    open_scratch_root,
    publish_report_task,
    tenants_to_drill,
)
from tasks.errors import SnapshotNotFoundError
from tasks.outcome import RestoreOutcome
from tasks.plan import RestoreMode

T = TypeVar("T")

TenantId = Annotated[int, Field(ge=0, le=2**64 - 1)]


@task(name="drill-tenant", task_run_name="drill-tenant-{tenant_id}", cache_policy=NO_CACHE, persist_result=False)
def drill_tenant_task(
    backend: str,
    tenant_id: int,
    candidates: list[SnapshotManifest],
    scratch_root: str,
    now: float,
    max_age_hours: float | None,
    keep_failed: bool,
    unreadable: int,
) -> TenantDrillResult:
    """Drill one tenant: each snapshot tried is a restore-snapshot subflow, then a check task."""

    def restore(manifest: SnapshotManifest, data_dir: Path) -> RestoreOutcome:
        destination = drill_destination(manifest)
        state = restore_snapshot(
            backend=backend,
            tenant_id=manifest.tenant_id,
            data_dir=str(data_dir),
            mode=RestoreMode.NEW_CLUSTER,
            snapshot=manifest.snapshot_id,
            destination=Destination(
                wire_version=str(destination.wire_version), embedding_model=destination.embedding_model
            ),
            return_state=True,
        )
        return outcome_of(state.result())  # a failed restore raises its own error here

    def check(manifest: SnapshotManifest, data_dir: Path) -> None:
        check_restored_task(backend, manifest, str(data_dir))

    return drill_tenant(
        tenant_id,
        candidates,
        lambda manifest: attempt_snapshot(manifest, Path(scratch_root), restore, check),
        backend_url=backend,
        now=now,
        max_age_hours=max_age_hours,
        keep_failed=keep_failed,
        unreadable=unreadable,
    )


def _bounded(submit: Callable[[T], PrefectFuture], items: list[T], limit: int) -> Iterator[tuple[T, Any]]:
    """Submit every item, at most ``limit`` running at once; yield ``(item, result)`` as each
    finishes, the result being the exception when the task failed. Every future is resolved."""
    waiting = list(items)
    running: dict[PrefectFuture, T] = {}
    while waiting or running:
        while waiting and len(running) < limit:
            item = waiting.pop(0)
            running[submit(item)] = item
        done = next(as_completed(list(running)))
        yield running.pop(done), done.result(raise_on_failure=False)


def _emit_failed(result: TenantDrillResult, backend: str) -> None:
    emit_event(
        event=DRILL_FAILED_EVENT,
        resource={
            "prefect.resource.id": f"memrestore.tenant.{result.tenant_id}",
            "prefect.resource.name": f"tenant {result.tenant_id}",
            "memrestore.backend": backend,
        },
        payload=result.model_dump(mode="json"),
    )


@flow(
    name="restore-drill",
    persist_result=True,
    result_serializer="json",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_DRILL_CONCURRENCY),
)
def restore_drill(
    backend: str,
    tenants: list[TenantId] | None = None,
    max_age_hours: Annotated[float, Field(ge=0)] | None = None,
    scratch_dir: str | None = None,
    keep_failed: bool = False,
    concurrency: Annotated[int, Field(ge=1, le=MAX_DRILL_CONCURRENCY)] = DEFAULT_DRILL_CONCURRENCY,
) -> dict | State:
    """Prove that every tenant's backups restore: restore each latest snapshot into scratch,
    check it, measure it, delete it; walk back to older snapshots when the latest fails.

    Args:
        backend: Where the snapshots are: file:///abs/path, a path, or s3://bucket/prefix.
        tenants: The tenants to drill. Empty: every tenant with a snapshot in the backend.
        max_age_hours: A tenant fails when its latest snapshot is older than this. Empty: no limit.
        scratch_dir: Where the copies are restored (and deleted). Empty: a new temp dir.
        keep_failed: Keep a failed tenant's restored copy in the scratch dir for inspection.
        concurrency: How many tenants are drilled at once.
    """
    logger = get_run_logger()
    drilled_at = time.time()
    listing = list_snapshots_task(backend)
    for sid, why in sorted(listing.unreadable.items()):
        logger.warning("skipping snapshot %s whose manifest cannot be read: %s", sid, why)
    chosen = tenants_to_drill(listing, tenants or None)
    if not chosen:
        skipped = f" ({len(listing.unreadable)} unreadable manifests skipped)" if listing.unreadable else ""
        raise SnapshotNotFoundError(
            f"backend {backend} holds no finished snapshot{skipped}: there is nothing to drill. Check "
            "the backend URL and its contents with `memrestore snapshots --backend URL`."
        )

    root, created = open_scratch_root(scratch_dir)
    progress = create_progress_artifact(
        0.0, key="drill-progress", description=f"0 of {len(chosen)} tenants drilled")
    results: dict[int, TenantDrillResult] = {}

    def submit(tenant_id: int) -> PrefectFuture:
        return drill_tenant_task.submit(
            backend, tenant_id, drill_candidates(listing, tenant_id), str(root), drilled_at,
            max_age_hours, keep_failed, len(listing.unreadable),
        )

    try:
        for tenant_id, outcome in _bounded(submit, chosen, concurrency):
            result = outcome if isinstance(outcome, TenantDrillResult) else crashed_result(tenant_id, outcome)
            results[tenant_id] = result
            if result.status == "failed":
                logger.error("tenant %s failed the drill: %s", tenant_id, result.reason)
                _emit_failed(result, backend)
            update_progress_artifact(
                progress, 100.0 * len(results) / len(chosen),
                description=f"{len(results)} of {len(chosen)} tenants drilled")
    finally:
        close_scratch_root(root, created)

    report = build_report([results[t] for t in chosen], listing.unreadable)
    publish_report_task(report, backend, drilled_at, max_age_hours)
    data = report.model_dump(mode="json")
    if report.failed:
        failed = ", ".join(str(r.tenant_id) for r in report.failures)
        return Failed(
            message=f"{report.failed} of {len(chosen)} tenants failed the restore drill (tenants {failed}); "
            "see the drill-report artifact",
            data=data,
        )
    return data


def drill_report(state: State) -> DrillReport:
    """The report a finished ``restore-drill`` run carries, Completed or Failed. A run that ended
    without one (the backend unreachable, nothing to drill) raises the error that stopped it."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return DrillReport.model_validate(result)
