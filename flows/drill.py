"""The ``restore-drill`` flow: every tenant's latest snapshot restored into scratch, checked,
measured and deleted, with a report for people (artifacts), for machines (the persisted JSON
result) and for pagers (a ``memrestore.drill.failed`` event per failed tenant).

Each tenant is one ``drill-tenant`` task run, which restores and checks each snapshot it tries
with plain function calls (:func:`tasks.drill.attempt_plain`: transient backend errors retried
with backoff) and logs each attempt; no ``restore-snapshot`` subflow, no task per step. With
``via_deployment``, each tenant is instead one run of the ``drill-tenant`` flow
(:func:`drill_tenant_flow`, deployed as ``drill-tenant/fleet``) on a work pool's workers, doing
the same there (``flows/ops/fleet.py``).

A tenant that fails ends its own run Failed (the ``drill-tenant`` task run, or the fleet's child
flow run), the tenant's reason the state's message, its result the state's data: the drill still
collects every tenant's result, and Prefect retries none (a failed check is a finding). The run is
named for its backend and the time it was scheduled for (``drill-s3-backups-memory-2026-12-07T03:00Z``)
and publishes its artifacts under keys of the backend's (tasks/drill_report.artifact_key), so that
each backend has one history of reports.

Which snapshot each tenant's drill tries first is the ``pick`` (the latest, or one at random
within a window: tasks/drill.py's pick_first). With ``sample``, the drill also hashes a share of
every stored blob of the tenants in scope (flows/sample_verify.py; a failed blob is an event, and
fails the run, as a failed tenant does). Each drill is compared with the earlier drills of its
deployment (tasks/drill_trend.py): a ``drill-trend`` artifact, its call-outs at the top of the
summary too.

The run ends Failed when any tenant failed, and still carries the report: it returns a Failed
state whose data is the report, so the report is the run's persisted result either way. Read it
with :func:`drill_report` on the state (``restore_drill(..., return_state=True)``); a plain call
of a failed drill raises instead.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Sequence, TypeVar

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.states import Completed, Failed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from memrestore.backends import SnapshotListing, open_backend
from memrestore.backends.manifest import SnapshotManifest
from memrestore.backends.streams import DRILL_STREAMS, RateLimit, StreamBudget, parse_rate
from memrestore.flows.ops.fleet import DEFAULT_CHILD_TIMEOUT_SECONDS, children_at_once, fan_out
from memrestore.flows.run_log import emit_tenant_event
from memrestore.flows.sample_verify import ShareParam, sampled_verify_step
from memrestore.tasks.drill import (
    DEFAULT_DRILL_CONCURRENCY,
    DEFAULT_WINDOW_DAYS,
    DRILL_FAILED_EVENT,
    MAX_DRILL_CONCURRENCY,
    MAX_WINDOW_DAYS,
    ManifestsById,
    SnapshotPick,
    attempt_plain,
    drill_candidates,
    drill_seed,
    drill_tenant,
    list_snapshots_task,
    pick_first,
    tenants_to_drill,
)
from memrestore.tasks.drill_report import (
    RESULT_SERIALIZER,
    DrillReport,
    TenantDrillFailed,
    TenantDrillResult,
    artifact_key,
    build_report,
    crashed_result,
    no_snapshot_result,
    publish_report_task,
    run_name,
)
from memrestore.tasks.errors import SnapshotNotFoundError
from memrestore.tasks.choose import fetch_manifest
from memrestore.tasks.progress import ARTIFACT_UPDATE_SECONDS, ProgressArtifact
from memrestore.tasks.retry import retrying
from memrestore.tasks.drill_scratch import close_scratch_root, open_scratch_root
from memrestore.tasks.drill_trend import publish_trend
from memrestore.tasks.share import parse_share
from memrestore.tasks.transfer import DEFAULT_CEILING, DEFAULT_STREAMS, RateParam, StreamsParam
from memrestore.tasks.validation import Validation, check_hook

T = TypeVar("T")

TenantId = Annotated[int, Field(ge=0, le=2**64 - 1)]


def _drill_in_this_run(
    backend: str,
    tenant_id: int,
    candidates: Sequence[SnapshotManifest],
    scratch_root: str | Path,
    now: float,
    max_age_hours: float | None,
    keep_failed: bool,
    unreadable: int,
    streams: int | None = DEFAULT_STREAMS,
    limit: RateLimit | None = None,
    validation: Validation | None = None,
    start: int = 0,
    picked_by: str = SnapshotPick.LATEST.value,
    max_streams: int = DEFAULT_CEILING,
    budget: StreamBudget | None = None,
) -> TenantDrillResult:
    """Drill one tenant inside the current task or flow run: restore, check (and validate, when
    a ``validation`` is set) and delete each snapshot tried from ``candidates[start]`` on (chosen
    as ``picked_by`` says), on ``streams`` streams, under the drill's shared rate ``limit`` and
    within its ``budget`` of streams; each attempt a line of the run's log."""
    return drill_tenant(
        tenant_id,
        candidates,
        attempt_plain(open_backend(backend), Path(scratch_root), get_run_logger(), streams, limit, keep_failed,
                      validation, max_streams, budget),
        backend_url=backend,
        now=now,
        max_age_hours=max_age_hours,
        keep_failed=keep_failed,
        unreadable=unreadable,
        start=start,
        picked_by=picked_by,
    )


def tenant_state(result: TenantDrillResult, passed: Any = None) -> State:
    """How a tenant's run ends: Completed when the tenant passed, its data ``passed`` (else the
    result itself); Failed when it failed, the tenant's reason the state's message and a
    :class:`TenantDrillFailed` holding the result its data (what Prefect logs and, at a flow
    run's end, raises). The drill reads the result back from either."""
    if result.status == "ok":
        return Completed(message=f"tenant {result.tenant_id} passed", data=result if passed is None else passed)
    return Failed(message=result.reason or f"tenant {result.tenant_id} failed", data=TenantDrillFailed(result))


@task(name="drill-tenant", task_run_name="drill-tenant-{tenant_id}", cache_policy=NO_CACHE, persist_result=False,
      retries=0)  # a failed tenant is a finding: running it again would only hide a flaky backup
def drill_tenant_task(backend: str, tenant_id: int, *args: Any, **kwargs: Any) -> State:
    """One tenant's drill as a task run of the drill's flow run (``via_deployment``: a flow run,
    :func:`drill_tenant_flow`), Failed when the tenant failed (:func:`tenant_state`). The
    arguments are :func:`_drill_in_this_run`'s."""
    return tenant_state(_drill_in_this_run(backend, tenant_id, *args, **kwargs))


@flow(
    name="drill-tenant",
    flow_run_name="drill-tenant-{tenant_id}",
    persist_result=True,
    result_serializer=RESULT_SERIALIZER,
)
def drill_tenant_flow(
    backend: str,
    tenant_id: TenantId,
    snapshots: list[str],
    drilled_at: float | None = None,
    max_age_hours: Annotated[float, Field(ge=0)] | None = None,
    scratch_dir: str | None = None,
    keep_failed: bool = False,
    streams: StreamsParam | None = DEFAULT_STREAMS,
    limit_rate: RateParam | None = None,
    validation: Validation = Validation(),
    start_at: Annotated[int, Field(ge=0)] = 0,
    picked_by: str = SnapshotPick.LATEST.value,
    max_streams: StreamsParam = DEFAULT_CEILING,
) -> dict | State:
    """Drill one tenant where this run executes (a worker, in a fleet drill): restore its latest
    snapshot into scratch, check it, delete it; walk back to older ones when it fails. The result
    is the tenant's line of the drill report; the run ends Failed, the tenant's reason its
    message, when the tenant failed.

    Args:
        backend: Where the snapshots are: file:///abs/path, a path, or s3://bucket/prefix.
        tenant_id: The tenant to drill.
        snapshots: The tenant's snapshot ids to try, newest first: the latest, then the ones to
            walk back to. The drill that fans out sends them from its listing.
        drilled_at: The drill's clock (Unix seconds) that snapshot ages are measured at. Empty: now.
        max_age_hours: The tenant fails when its latest snapshot is older than this. Empty: no limit.
        scratch_dir: Where the copy is restored (and deleted), on this run's machine. Empty: a new
            temp dir.
        keep_failed: Keep a failed copy in the scratch dir for inspection.
        streams: How many GETs the tenant's restore keeps in flight across its blobs (S3).
            Empty (the default): found as it runs, from a few up to as many as pay.
        limit_rate: A cap on this run's download rate, bytes a second (50M, 1G, 500k). A fleet
            drill gives each run its share of the drill's cap. Empty: no cap.
        validation: The operator's own validation of each restored copy (a command and/or a
            Python callable, on this run's machine); a copy that fails it fails the tenant.
        start_at: Which of the snapshots to try first (0: the latest); the drill's pick chose it.
        picked_by: How that snapshot was chosen, in the report's words.
        max_streams: The most streams the tenant's restore may find worth keeping in flight,
            when streams is empty.
    """
    limit = RateLimit(parse_rate(limit_rate)) if limit_rate is not None else None
    if validation.active:
        check_hook(validation)  # on this worker: its environment must have the hook too
    now = time.time() if drilled_at is None else drilled_at
    root, created = open_scratch_root(scratch_dir)
    try:
        store, read = open_backend(backend), retrying(fetch_manifest)  # here too: no task run per read
        candidates = ManifestsById(snapshots, lambda sid: read(store, tenant_id, sid))
        result = _drill_in_this_run(backend, tenant_id, candidates, root, now, max_age_hours, keep_failed, 0,
                                    streams, limit, validation, min(start_at, max(len(snapshots) - 1, 0)),
                                    picked_by, max_streams)
    finally:
        close_scratch_root(root, created)
    # Failed when the tenant failed, its result (JSON) the run's persisted result either way, which
    # the fleet's parent reads. A failed tenant's is a TenantDrillFailed: the engine's last step
    # raises a Failed run's data and logs it, so the run's log ends with the tenant's reason.
    return tenant_state(result, passed=result.model_dump(mode="json"))


def _fleet_outcomes(
    deployment: str,
    listing: SnapshotListing,
    chosen: list[int],
    child_parameters: dict,
    child_timeout_seconds: float,
    log: Callable[[str], None],
    first: Callable[[list[SnapshotManifest]], tuple[int, str]] = lambda _: (0, SnapshotPick.LATEST.value),
) -> Iterator[tuple[int, TenantDrillResult]]:
    """A fleet drill's outcomes: tenants with nothing to restore at once, the others from one run
    each of ``deployment``. Raises FleetError now, before any run, if the deployment is missing."""
    nothing: list[tuple[int, TenantDrillResult]] = []
    parameters: dict[int, dict] = {}
    for tenant_id in chosen:
        candidates = drill_candidates(listing, tenant_id)
        snapshots = [m.snapshot_id for m in candidates]
        if snapshots:
            start, picked_by = first(candidates)
            parameters[tenant_id] = {**child_parameters, "tenant_id": tenant_id, "snapshots": snapshots}
            if start:
                parameters[tenant_id].update(start_at=start, picked_by=picked_by)
        else:
            nothing.append((tenant_id, no_snapshot_result(tenant_id, child_parameters["backend"],
                                                          len(listing.unreadable))))
    runs = fan_out(deployment, parameters, child_timeout_seconds=child_timeout_seconds, log=log)
    return itertools.chain(nothing, runs)


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
    emit_tenant_event(DRILL_FAILED_EVENT, result.tenant_id, result.model_dump(mode="json"),
                      {"prefect.resource.name": f"tenant {result.tenant_id}", "memrestore.backend": backend})


def _drill_run_name() -> str:
    """``drill-<backend>-<UTC minute>``: the backend's label (tasks/drill_report.run_name) and the
    time the run was scheduled for (a nightly run: its cron time; any other: when it was made)."""

    context = FlowRunContext.get()
    backend = str((context.parameters or {}).get("backend", "")) if context else ""
    scheduled = context.flow_run.expected_start_time if context and context.flow_run else None
    return run_name(backend, scheduled.timestamp() if scheduled else time.time())


@flow(
    name="restore-drill",
    flow_run_name=_drill_run_name,
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
    via_deployment: str | None = None,
    child_timeout_seconds: Annotated[float, Field(gt=0)] = DEFAULT_CHILD_TIMEOUT_SECONDS,
    streams: StreamsParam | None = DEFAULT_STREAMS,
    limit_rate: RateParam | None = None,
    validation: Validation = Validation(),
    pick: SnapshotPick = SnapshotPick.LATEST,
    window_days: Annotated[float, Field(gt=0, le=MAX_WINDOW_DAYS)] = DEFAULT_WINDOW_DAYS,
    seed: Annotated[int, Field(ge=0)] | None = None,
    sample: ShareParam | None = None,
    max_streams: StreamsParam = DEFAULT_CEILING,
) -> dict | State:
    """Prove that every tenant's backups restore: restore each latest snapshot into scratch,
    check it, measure it, delete it; walk back to older snapshots when the latest fails.

    Args:
        backend: Where the snapshots are: file:///abs/path, a path, or s3://bucket/prefix.
        tenants: The tenants to drill. Empty: every tenant with a snapshot in the backend.
        max_age_hours: A tenant fails when its latest snapshot is older than this. Empty: no limit.
        scratch_dir: Where the copies are restored (and deleted). Empty: a new temp dir.
        keep_failed: Keep a failed tenant's restored copy in the scratch dir for inspection.
        concurrency: How many tenants are drilled at once (here; not with via_deployment).
        via_deployment: Fan out: drill each tenant as a run of this deployment (drill-tenant/fleet)
            on its work pool's workers, as many at once as its concurrency limit allows, and
            restore on their disks. Empty: drill here.
        child_timeout_seconds: With via_deployment: how long a tenant's run may take once a worker
            has it before it is given up as lost (and run once more).
        streams: How many GETs each tenant's restore keeps in flight across its blobs (S3).
            Empty (the default): found as each runs, from a few up to as many as pay.
        limit_rate: A cap on the drill's total download rate, bytes a second (50M, 1G, 500k),
            shared by the tenants it restores at once; with via_deployment, split evenly among
            the runs the deployment lets run at once. Empty: no cap.
        validation: The operator's own validation of each restored copy, after the drill's
            checks: a command and/or a Python callable. A copy that fails it fails the tenant
            (and the drill walks back); the report shows its result, seconds and output. Empty: none.
        pick: Which snapshot of each tenant to restore: latest, or random-within-window (one
            drawn among those of the last window_days, so that over nights every generation kept
            is restored). The walk back goes on from it when it fails.
        window_days: With random-within-window: how far back to draw from, in days (more than 0,
            at most 365; 0.5 is 12 hours).
        seed: With random-within-window: the draw's seed; the same seed draws the same snapshots
            (the report gives each drill's). Empty: a fresh one each drill.
        sample: Also hash this share of every stored blob of the tenants (their older snapshots
            too) against the manifests, without restoring: a percent of the bytes (5%) or a byte
            count (10G), a different slice each night. Empty: no sampled verify.
        max_streams: The most streams each tenant's restore may find worth keeping in flight,
            when streams is empty. The tenants restored at once keep at most 192 in flight
            together, their read buffers sized to that.
    """
    logger = get_run_logger()
    rate = parse_rate(limit_rate) if limit_rate is not None else None  # refused before any restore
    if sample is not None:
        parse_share(sample)  # refused before any restore too
    if validation.active:  # a hook that cannot run is refused before any restore (a fleet's: on its workers)
        check_hook(validation, here=not via_deployment)
    drilled_at = time.time()
    seed = drill_seed(seed) if pick is not SnapshotPick.LATEST else None

    def first(candidates: list[SnapshotManifest]) -> tuple[int, str]:
        return pick_first(candidates, pick, now=drilled_at, window_days=window_days, seed=seed or 0)

    listing = list_snapshots_task(backend)
    for sid, why in sorted(listing.unreadable.items()):
        logger.warning("skipping snapshot %s whose manifest cannot be read: %s", sid, why)
    chosen = tenants_to_drill(listing, tenants or None)
    if not chosen:
        skipped = f" ({len(listing.unreadable)} unreadable manifests skipped)" if listing.unreadable else ""
        raise SnapshotNotFoundError(
            f"backend {backend} holds no finished snapshot{skipped}: there is nothing to drill. Check "
            f"the backend URL and its contents with `memrestore snapshots --backend {backend}`."
        )

    if via_deployment:  # the children restore on the workers' disks: no scratch dir here
        root, created = None, False
        child = {"backend": backend, "drilled_at": drilled_at, "max_age_hours": max_age_hours,
                 "scratch_dir": scratch_dir, "keep_failed": keep_failed, "streams": streams,
                 "max_streams": max_streams}
        if validation.active:
            child["validation"] = validation.model_dump(mode="json")
        if rate is not None:  # one bucket cannot span workers: each run at once gets its share
            child["limit_rate"] = str(max(1024, rate // children_at_once(via_deployment, len(chosen))))
        outcomes: Iterator[tuple[int, Any]] = _fleet_outcomes(
            via_deployment, listing, chosen, child, child_timeout_seconds, logger.warning, first,
        )
    else:
        root, created = open_scratch_root(scratch_dir)
        limit = RateLimit(rate) if rate is not None else None  # one bucket, every tenant's streams
        budget = StreamBudget(DRILL_STREAMS)  # every tenant's streams, as the cap is every tenant's

        def submit(tenant_id: int) -> PrefectFuture:
            candidates = drill_candidates(listing, tenant_id)
            return drill_tenant_task.submit(
                backend, tenant_id, candidates, str(root), drilled_at,
                max_age_hours, keep_failed, len(listing.unreadable), streams, limit, validation, *first(candidates), max_streams,
                budget,
            )

        outcomes = _bounded(submit, chosen, concurrency)
    progress = ProgressArtifact(artifact_key("progress", backend), f"0 of {len(chosen)} tenants drilled",
                                every=ARTIFACT_UPDATE_SECONDS)
    results: dict[int, TenantDrillResult] = {}

    try:
        for tenant_id, outcome in outcomes:
            if isinstance(outcome, TenantDrillFailed):  # the tenant's run ended Failed: its result
                outcome = outcome.result
            result = outcome if isinstance(outcome, TenantDrillResult) else crashed_result(tenant_id, outcome)
            results[tenant_id] = result
            if result.status == "failed":
                logger.error("tenant %s failed the drill: %s", tenant_id, result.reason)
                _emit_failed(result, backend)
            progress.update(100.0 * len(results) / len(chosen), f"{len(results)} of {len(chosen)} tenants drilled")
    finally:
        if root is not None:
            close_scratch_root(root, created)

    report = build_report([results[t] for t in chosen], listing.unreadable, seed=seed)
    if sample is not None:  # under the drill's cap, which the restores, all done, no longer share
        report.sample = sampled_verify_step(backend, sample, chosen, None, RateLimit(rate) if rate else None,
                                            listing, drilled_at)
    report.callouts = _trend(report, backend, drilled_at)
    for callout in report.callouts:
        logger.warning("trend: %s", callout)
    publish_report_task(report, backend, drilled_at, max_age_hours)
    data = report.model_dump(mode="json")
    problems = []
    if report.failed:
        failed = ", ".join(str(r.tenant_id) for r in report.failures)
        problems.append(f"{report.failed} of {len(chosen)} tenants failed the restore drill (tenants {failed})")
    if report.sample is not None and report.sample.failed:
        problems.append(f"{len(report.sample.failed)} blob(s) failed the sampled verify "
                        f"(see the {artifact_key('sample', backend)} artifact)")
    if problems:
        return Failed(
            message=f"{'; '.join(problems)}; "
            f"see the {artifact_key('summary', backend)} and {artifact_key('report', backend)} artifacts",
            data=data,
        )
    return data


@task(name="drill-trend", cache_policy=NO_CACHE, persist_result=False)
def _trend_task(report: DrillReport, backend: str, drilled_at: float, deployment_id: Any, this_run: Any) -> list[str]:
    """Compare the drill with the earlier ones of its deployment: tasks/drill_trend.py."""
    return publish_trend(report, backend, drilled_at, deployment_id, this_run)


def _trend(report: DrillReport, backend: str, drilled_at: float) -> list[str]:
    """The trend's call-outs; a trend that cannot be read (the API refusing the artifacts' query)
    is a warning, never the drill's failure: the drill itself is done."""
    run = FlowRunContext.get().flow_run
    try:
        return _trend_task(report, backend, drilled_at, run.deployment_id, run.id)
    except Exception as exc:  # noqa: BLE001 - the report stands without its trend
        get_run_logger().warning("the trend against earlier drills could not be made: %s", exc)
        return []


def drill_report(state: State) -> DrillReport:
    """The report a finished ``restore-drill`` run carries, Completed or Failed. A run that ended
    without one (the backend unreachable, nothing to drill) raises the error that stopped it."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return DrillReport.model_validate(result)
