"""Fleet drills: each tenant drilled as its own run of a deployment on a Prefect work pool, the
outcomes gathered into the parent drill's one report.

    restore-drill (the parent; here, or a run on the pool)     drill-tenant/fleet (one run per tenant,
      list the backend once                                     on whichever worker takes it)
      run_deployment(..., timeout=0) per tenant  ---------->      restore (plain functions) into the
      watch the children's states                                  worker's scratch dir, check the copy,
      read each one's persisted result           <----------      walk back, delete the copy; return
      report, artifacts, events                                    the tenant's TenantDrillResult

The unit sent to a worker is a whole tenant's drill (``flows.drill.drill_tenant_flow``), not one
restore: the restored copy is on the disk of the worker that restored it, so the checks, the walk
back and the deletion must run there too, and Prefect does not promise that two runs land on the
same worker.

How many children run at once is Prefect's, not ours: the ``drill-tenant/fleet`` deployment's
``concurrency_limit`` (``prefect.yaml``). The server grants a slot when a worker moves a run to
Pending, and makes the others wait (AwaitingConcurrencySlot); all the children are created up
front.

A child is *lost* when it ends Crashed: its worker reported its process dead, Prefect's zombie
automation (:func:`lost_run_automation`) saw its heartbeats stop (a dead worker or machine), or it
was taken by a worker and outlived ``child_timeout_seconds`` and the parent marked it Crashed
itself (a run killed before its first heartbeat is never seen by the automation). A lost child is
run once more, on whichever worker takes it; lost again, the tenant fails the drill, naming both
runs. Children that no worker takes are given up (Cancelled, and the tenants failed) once none of
the drill's runs is on a worker and nothing has moved for ``child_timeout_seconds``. So every
tenant gets a line in the report, whatever happens to the workers.

A child whose tenant failed ends Failed (the tenant's reason its message, red in the UI like a
local drill's task run), its persisted result a ``TenantDrillFailed`` holding the tenant's whole
result; the parent reads that as it reads a passing child's result. Only a Crashed child is lost.

The parent reads each child's result (its persisted JSON) through Prefect's result storage: with
the default, a file under the worker's ``PREFECT_HOME``, readable by a parent on the same machine.
Across machines, give the workers and the parent a shared result storage block (docs/fleet.md);
a result that cannot be read fails its tenant with a message saying so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Callable, Iterator
from uuid import UUID

from prefect.automations import Automation
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelled, Crashed
from pydantic import ValidationError

from memrestore.tasks.drill_report import TenantDrillFailed, TenantDrillResult, crashed_result, describe_failure
from memrestore.flows.errors import FleetError

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse

#: The deployment a fleet drill fans out to (``prefect.yaml``: flow drill-tenant, deployment fleet).
FLEET_DEPLOYMENT = "drill-tenant/fleet"
#: How long a child may run once a worker has it before the parent gives it up as lost. A
#: backstop for what the heartbeat automation cannot see (a run that died before its first
#: heartbeat, a server with no such automation): a 100 GB tenant restores in about 20 minutes at
#: 100 MB/s, and a tenant walking back tries up to 11 snapshots.
DEFAULT_CHILD_TIMEOUT_SECONDS = 6 * 3600
#: A lost child is run again this many times before its tenant fails the drill.
LOST_RUN_RETRIES = 1
#: Between two reads of the children's states: children take seconds to hours, so two seconds of
#: latency is nothing, and one read per 200 children every two seconds is little for the API.
POLL_SECONDS = 2.0
#: Flow runs read per API call (the server's default page size).
READ_BATCH = 200
#: Missing heartbeats after which Prefect's automation marks a run Crashed. Workers should send
#: one every 30 s (PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30, the minimum): three missed, as Prefect's
#: own zombie recipe does.
LOST_AFTER_SECONDS = 90
#: The worker that took a flow run, as the worker labels it.
WORKER_LABEL = "prefect.worker.name"

_TERMINAL_EVENTS = ("Completed", "Failed", "Cancelled", "Crashed")


@dataclass
class _Child:
    """One run of one tenant's drill, as the parent follows it."""

    tenant_id: int
    parameters: dict
    attempt: int
    run_id: UUID
    lost: list[str] = field(default_factory=list)
    #: The last state type seen: a change of type (not Scheduled to Late) is the fleet moving.
    state_type: str | None = None
    #: time.monotonic() when the parent first saw a worker holding it (Pending or Running).
    taken_at: float | None = None


@dataclass(frozen=True)
class _Lost:
    why: str


def fan_out(
    deployment_name: str,
    parameters: dict[int, dict],
    *,
    child_timeout_seconds: float = DEFAULT_CHILD_TIMEOUT_SECONDS,
    poll_seconds: float = POLL_SECONDS,
    log: Callable[[str], None] = lambda line: None,
) -> Iterator[tuple[int, TenantDrillResult]]:
    """Create one run of ``deployment_name`` per tenant (``parameters``: tenant id -> that run's
    parameters), then yield ``(tenant_id, result)`` as each tenant's outcome is known, every
    tenant exactly once. Raises :class:`FleetError` at once when the deployment does not exist."""

    with get_client(sync_client=True) as client:
        deployment = _deployment(client, deployment_name)  # now, not at the first next()
    return _gather(deployment_name, deployment, parameters, child_timeout_seconds, poll_seconds, log)


def children_at_once(deployment_name: str, children: int) -> int:
    """How many of ``children`` runs of the deployment can run at once: its concurrency limit
    (``prefect.yaml``), or all of them when it has none. Raises FleetError when it is missing."""

    with get_client(sync_client=True) as client:
        limit = _deployment(client, deployment_name).global_concurrency_limit
    return max(1, min(children, limit.limit if limit is not None and limit.limit else children))


def _deployment(client: SyncPrefectClient, name: str) -> DeploymentResponse:

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        raise FleetError(
            f"deployment {name!r} not found on the Prefect API at {PREFECT_API_URL.value() or '(ephemeral)'}; "
            "a fleet drill needs it and workers polling its work pool: from the repo root, "
            "`prefect --no-prompt deploy --name fleet` and `prefect worker start --pool memrestore` "
            "(docs/fleet.md), or set PREFECT_API_URL to the server where it is deployed."
        ) from None


def _gather(
    deployment_name: str,
    deployment: DeploymentResponse,
    parameters: dict[int, dict],
    timeout: float,
    poll_seconds: float,
    log: Callable[[str], None],
) -> Iterator[tuple[int, TenantDrillResult]]:

    with get_client(sync_client=True) as client:
        children: dict[UUID, _Child] = {}
        for tenant_id, params in parameters.items():
            child = _submit(deployment_name, tenant_id, params, attempt=1)
            children[child.run_id] = child
        log(f"{len(children)} runs of {deployment_name} created for workers of pool "
            f"{deployment.work_pool_name!r}")
        last_moved = time.monotonic()
        while children:
            runs = _read_runs(client, list(children))
            now = time.monotonic()
            for run_id, child in list(children.items()):
                run = runs.get(run_id)
                if run is None:
                    del children[run_id]
                    yield child.tenant_id, _failed(child, f"its run {run_id} disappeared from the Prefect API "
                                                          "(deleted while the drill waited for it)")
                    continue
                state = run.state
                if state is None:
                    continue
                if state.type.value != child.state_type:
                    child.state_type, last_moved = state.type.value, now
                if child.taken_at is None and (state.is_pending() or state.is_running()):
                    child.taken_at = now
                if state.is_final():
                    del children[run_id]
                    verdict = _verdict(run, child)
                    if isinstance(verdict, _Lost):
                        child.lost.append(verdict.why)
                        log(f"tenant {child.tenant_id}: {verdict.why}")
                        if child.attempt <= LOST_RUN_RETRIES:
                            again = _submit(deployment_name, child.tenant_id, child.parameters,
                                            attempt=child.attempt + 1, lost=child.lost)
                            children[again.run_id] = again
                            last_moved = now
                            continue
                        verdict = _failed(child, f"{len(child.lost)} runs of its drill were lost: "
                                                 + "; ".join(child.lost))
                    elif child.lost:
                        verdict = verdict.model_copy(update={"lost_runs": list(child.lost)})
                    yield child.tenant_id, verdict
                elif child.taken_at is not None and now - child.taken_at > timeout:
                    _set_state(client, run_id, "Crashed", log,
                               f"memrestore: no outcome {timeout:g} s after a worker took it (child "
                               "timeout); its worker may have died before its first heartbeat, or it hangs")
            on_workers = any(c.taken_at is not None for c in children.values())
            if children and not on_workers and now - last_moved > timeout:
                for run_id in children:
                    _set_state(client, run_id, "Cancelled", log,
                               f"memrestore: no worker of pool {deployment.work_pool_name!r} took this run "
                               f"in {timeout:g} s; is any worker polling it?")
                last_moved = now
            if children:
                time.sleep(poll_seconds)


def _submit(deployment_name: str, tenant_id: int, params: dict, attempt: int, lost: list[str] | None = None) -> _Child:
    """One run of the tenant's drill, linked to the current flow run as its subflow. The
    idempotency key makes a re-run of the same parent find its children instead of doubling them."""

    context = FlowRunContext.get()
    parent = context.flow_run.id if context and context.flow_run else None
    run = run_deployment(
        deployment_name,
        parameters=params,
        timeout=0,  # create it and come back: the parent watches all its children at once
        flow_run_name=f"drill-tenant-{tenant_id}",
        idempotency_key=f"{parent}-tenant-{tenant_id}-attempt-{attempt}" if parent else None,
    )
    return _Child(tenant_id=tenant_id, parameters=params, attempt=attempt, run_id=run.id, lost=list(lost or []))


def _read_runs(client: SyncPrefectClient, ids: list[UUID]) -> dict[UUID, FlowRun]:

    runs: dict[UUID, FlowRun] = {}
    for start in range(0, len(ids), READ_BATCH):
        batch = ids[start:start + READ_BATCH]
        for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=batch)),
                                         limit=len(batch)):
            runs[run.id] = run
    return runs


def worker_of(run: FlowRun) -> str | None:
    """The worker that took ``run``, as it labelled the run when it submitted it."""
    return run.labels.get(WORKER_LABEL) if run.labels else None


def _where(run: FlowRun) -> str:
    worker = worker_of(run)
    return f"run {run.name} ({run.id})" + (f" on worker {worker}" if worker else " (no worker took it)")


def _verdict(run: FlowRun, child: _Child) -> TenantDrillResult | _Lost:
    """What a finished child says about its tenant: its own result, or why there is none."""
    state = run.state
    assert state is not None
    message = (state.message or "").strip() or "no message"
    if state.is_crashed():
        return _Lost(f"{_where(run)} crashed: {message}")
    if state.is_cancelled():
        return _failed(child, f"{_where(run)} was cancelled: {message}")
    try:
        data = state.result(raise_on_failure=False)
    except Exception as exc:  # noqa: BLE001 - an unreadable result is this tenant's failure, not the drill's
        return _failed(child, f"{_where(run)} ended {state.name}, but its result cannot be read here "
                              f"({describe_failure(exc)}); the drill and its workers need a shared result "
                              "storage (docs/fleet.md)")
    if isinstance(data, TenantDrillFailed):  # the tenant failed its drill: its whole result
        return data.result
    if isinstance(data, BaseException):
        return crashed_result(child.tenant_id, data)
    if isinstance(data, dict):
        try:
            return TenantDrillResult.model_validate(data)
        except ValidationError as exc:
            return _failed(child, f"{_where(run)} returned a result that is not a tenant's drill result: {exc}")
    return _failed(child, f"{_where(run)} ended {state.name}: {message}")


def _failed(child: _Child, why: str) -> TenantDrillResult:
    snapshots = child.parameters.get("snapshots") or [None]
    return TenantDrillResult(
        tenant_id=child.tenant_id,
        snapshot_id=snapshots[0],
        status="failed",
        reason=f"the drill of tenant {child.tenant_id} has no outcome: {why}. Check the workers of the "
               "pool (their logs, disk, memory) and drill this tenant again.",
        lost_runs=list(child.lost),
    )


def _set_state(client: SyncPrefectClient, run_id: UUID, kind: str, log: Callable[[str], None], message: str) -> None:
    """Give a child up: Crashed (lost: it is run again) when a worker had it, Cancelled when none
    took it. Forced, since its worker may be gone; leaving Pending or Running frees its slot of the
    deployment's concurrency limit. A failure here is tried again later."""

    state = Crashed(message=message) if kind == "Crashed" else Cancelled(message=message)
    try:
        client.set_flow_run_state(run_id, state, force=True)
    except Exception as exc:  # noqa: BLE001 - the API hiccupped; the next poll tries again
        log(f"could not mark run {run_id} {kind}: {describe_failure(exc)}")


def lost_run_automation(
    within_seconds: float = LOST_AFTER_SECONDS,
    *,
    deployment_id: UUID | None = None,
    tag: str = "memrestore",
    name: str = "memrestore: mark lost flow runs crashed",
) -> Automation:
    """Prefect's zombie-run recipe, for memrestore's runs: after each heartbeat of a flow run,
    expect another heartbeat or a final state within ``within_seconds``; when none comes (its
    worker, machine or container died), mark the run Crashed. Scoped to runs tagged ``tag`` (every
    memrestore deployment carries it), or to one deployment's runs. ``.create()`` it once per
    server; the workers must send heartbeats more often than ``within_seconds``
    (``PREFECT_FLOWS_HEARTBEAT_FREQUENCY=30``)."""

    if deployment_id is not None:
        related = {"prefect.resource.role": "deployment", "prefect.resource.id": f"prefect.deployment.{deployment_id}"}
    else:
        related = {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{tag}"}
    return Automation(
        name=name,
        description="A flow run whose heartbeats stopped is dead: its drill reports it lost and runs it again.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", *(f"prefect.flow-run.{s}" for s in _TERMINAL_EVENTS)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification(related),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=within_seconds),
        ),
        actions=[ChangeFlowRunState(
            state=StateType.CRASHED,
            message=f"no heartbeat for {within_seconds:g} s: its worker, machine or container died",
        )],
    )
