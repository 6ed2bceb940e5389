"""The ``restore-snapshot``, ``verify-snapshot`` and ``abort-restore`` flows: the card's steps, top
to bottom.

They are ``async def`` (call them as ``asyncio.run(restore_snapshot(...))``) for one reason:
Prefect runs an async flow with its async engine, which does not wait for the run's heartbeat
thread at the end of the run, where the sync engine waits for it to wake up from its one-second
sleep: up to a second per run, longer than a small restore takes. Their steps are sync task
runs (they block; nothing else needs the event loop meanwhile), sharing one API client
(:func:`_steps_client`); only the outcome task is async.

A restore that does not happen ends its run Failed with the one refusal or error as the state's
message (in form-field words for a run started from a deployment: flows/form_words.py), one log
line, and a summary artifact saying what the data dir holds (:func:`_not_done`); a caller of the
flow (the command line) gets the exception itself. Its log lines and name: flows/run_log.py.
"""

from __future__ import annotations

import asyncio
import os
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger, unmapped
from prefect.context import SyncClientContext
from prefect.events import emit_event
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.states import Failed, State
from pydantic import BaseModel, Field, model_serializer
from pydantic.json_schema import SkipJsonSchema

from memrestore.backends.listing import format_instant, parse_instant
from memrestore.backends.errors import BadInputError, RestoreError
from memrestore.backends.manifest import WireVersion
from memrestore.backends.streams import parse_rate
from memrestore.flows.run_log import RunLog, initial_run_name, quiet_task_chatter
from memrestore.tasks import sequence
from memrestore.tasks.checks import CheckLevel, check_staged_task
from memrestore.tasks.commit import abort_task, cleanup_task, commit_task
from memrestore.tasks.execute import ITEM_CONCURRENCY
from memrestore.tasks.fetch import LATEST, fetch_manifest_task
from memrestore.tasks.hold import DataDirHold
from memrestore.tasks.errors import RestoreRefusedError
from memrestore.tasks.measure import measure_plan_task
from memrestore.tasks.marker import Phase, RunRef, read_marker, replaced_by
from memrestore.tasks.dead_restores import what_is_left
from memrestore.tasks.outcome import (RestoreOutcome, build_outcome, not_done_outcome, publish_outcome,
                                      publish_outcome_task)
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.preflight import preflight_task
from memrestore.tasks.progress import bytes_artifact
from memrestore.tasks.sequence import is_interrupt
from memrestore.tasks.stage import StagedItem, hash_item_task, recheck_item_task, stage_item_task
from memrestore.tasks.transfer import DEFAULT_CEILING, DEFAULT_STREAMS, RateParam, StreamsParam, Transfer
from memrestore.tasks.validate import hash_plan, validate_task


def _no_schema_default(schema: dict) -> None:
    """An optional field's schema without ``"default": null``: the UI's form then shows an empty
    input of the field's type, where a null default would show a type switch (``int | None``)."""
    schema.pop("default", None)


def optional(description: str, title: str) -> object:
    """An optional field of the UI's form: ``x: T | SkipJsonSchema[None] = optional(...)``. Its
    schema is the type alone (no ``null`` branch, no null default), so the form takes a value as it
    is typed; left empty, it is not sent, and the default (None) applies."""
    return Field(default=None, description=description, title=title, json_schema_extra=_no_schema_default)


class Destination(BaseModel):
    """The destination service (FORMAT.md's DestinationState)."""

    wire_version: str = Field(
        default="1.0", pattern=r"^\d{1,9}\.\d{1,9}$", title="wire_version",
        description="The protocol version the destination speaks, MAJOR.MINOR: a snapshot of the same major "
                    "and a minor no newer is accepted.")
    tombstone_floor: Annotated[int, Field(ge=0, le=2**64 - 1)] | SkipJsonSchema[None] = optional(
        "The destination's forget horizon (an oplog position): a snapshot that would bring forgotten "
        "memories back is refused. Empty when nothing was forgotten.", "tombstone_floor")
    embedding_model: str | SkipJsonSchema[None] = optional(
        "The embedding model the destination serves: the snapshot must hold its index. Empty: no model "
        "check. Every index of the snapshot is restored either way.", "embedding_model")

    @model_serializer(mode="wrap")
    def _without_nones(self, handler):
        # The form's default for the destination then holds no null for a field typed int or str.
        return {k: v for k, v in handler(self).items() if v is not None}

    def state(self) -> DestinationState:
        return DestinationState(
            wire_version=WireVersion.parse(self.wire_version),
            tombstone_floor=self.tombstone_floor,
            embedding_model=self.embedding_model or None,
        )


def _emit(event: str, tenant_id: int, snapshot_id: str, payload: dict) -> None:
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"memrestore.tenant.{tenant_id}", "memrestore.snapshot": snapshot_id},
        payload=payload,
    )


def _results(futures) -> list:
    """Wait for every future (none is left running), then raise the first failure, if any."""
    wait(futures)
    results = [f.result(raise_on_failure=False) for f in futures]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise failures[0]
    return results


def _steps_client() -> AbstractContextManager:
    """One API client for the flow's sync task runs, in this thread and the task runner's.

    A sync task run takes its client from the ``SyncClientContext``. A sync flow run opens one; an
    async flow run does not, so each sync task run would build a client of its own (~40 ms each:
    an SSL context, then a CSRF token request before its first POST), more than the steps of a
    small restore take. The task runner's threads see this context as they see a sync flow run's
    (Prefect copies the context into each).
    """
    return SyncClientContext.get_or_create()


def _this_run() -> RunRef | None:
    """The flow run this restore runs as, for its marker."""
    from prefect.runtime import flow_run
    from prefect.settings import get_current_settings

    run_id = flow_run.get_id()
    return RunRef(flow_run_id=str(run_id), api_url=get_current_settings().api.url) if run_id else None


def _per_item_flow(name: str, run_name: str):
    """A flow that runs a snapshot's items as concurrent task runs, ITEM_CONCURRENCY at once, and
    keeps its result as JSON (the outcome a later run or the UI reads back)."""
    return flow(
        name=name,
        flow_run_name=run_name,
        persist_result=True,
        result_serializer="json",
        task_runner=ThreadPoolTaskRunner(max_workers=ITEM_CONCURRENCY),
    )


@_per_item_flow("restore-snapshot", initial_run_name)
async def restore_snapshot(
    backend: str,
    tenant_id: int,
    data_dir: str,
    mode: RestoreMode,
    snapshot: str = LATEST,
    destination: Destination = Destination(),
    require_checksums: bool = False,
    dry_run: bool = False,
    resume: bool = False,
    streams: StreamsParam | None = DEFAULT_STREAMS,
    limit_rate: RateParam | None = None,
    check: CheckLevel = CheckLevel.QUICK,
    as_of: str | None = None,
    max_streams: StreamsParam = DEFAULT_CEILING,
) -> dict | State:
    """Restore one tenant's snapshot from a backup backend into a data dir.

    Args:
        backend: Where the snapshots are: file:///abs/path, a path, or s3://bucket/prefix.
        tenant_id: The tenant to restore.
        data_dir: The destination service's data dir.
        mode: new_cluster (an empty data dir), single_tenant (add this tenant; its dir must
            be empty or absent), replace_tenant (replace this tenant's dir; every other tenant
            untouched), or wipe_and_restore (delete everything in the data dir, then restore).
        snapshot: A snapshot id, or "latest" for the tenant's newest.
        destination: What the destination service is; checked against the snapshot.
        require_checksums: Refuse a snapshot with any blob lacking a checksum.
        dry_run: Fetch, validate and preflight; print the plan; write nothing.
        resume: Continue an interrupted restore of the same snapshot.
        streams: How many GETs the restore keeps in flight across all of its blobs (S3; large
            blobs come down as ranged parts). Empty (the default): found as the restore runs,
            starting with a few and adding more while the throughput grows, up to max_streams.
            A local folder ignores it.
        limit_rate: A cap on the restore's total download rate, bytes a second: 50M, 1G, 500k
            (powers of 1024). Empty: no cap.
        check: How the staged copy is checked before the commit moves anything: quick (SQLite's
            quick_check, the manifest's tables), full (integrity_check), or none.
        as_of: Restore the tenant as it was at this time: its newest snapshot created at or
            before it, with snapshot "latest". ISO 8601 (2026-12-07T14:00:00Z); without a zone,
            UTC. None (the default): the newest of all.
        max_streams: The most streams the restore may find worth keeping in flight, when
            streams is empty.
    """
    quiet_task_chatter()
    log = RunLog(tenant_id, snapshot, mode, data_dir, dry_run)
    known: dict = {}  # the plan, once the manifest is read
    started = time.monotonic()
    try:
        with _steps_client():
            outcome = _restore(backend, tenant_id, data_dir, mode, snapshot, destination, require_checksums,
                               dry_run, resume, streams, limit_rate, check, as_of, log, known, max_streams)
    except RestoreError as exc:
        message = log.words(str(exc))
        log.not_done(message)
        status = "refused" if isinstance(exc, (RestoreRefusedError, BadInputError)) else "failed"
        try:
            await publish_outcome_task(_not_done(status, message, log, backend, started, known), dry_run)
        except Exception as publish_exc:  # noqa: BLE001 - the refusal is the run's news, not this
            log.logger.warning(f"could not publish the summary of this {status} restore: {publish_exc}")
        return Failed(message=message, data=exc)
    except BaseException as exc:
        if is_interrupt(exc):
            # Said where the operator looks, if the API answers at once: a stop must not wait on it.
            why = f"the restore was {str(exc) or f'stopped ({type(exc).__name__})'}"
            interrupted = _not_done("interrupted", why, log, backend, started, known)
            try:
                await asyncio.wait_for(publish_outcome(interrupted, dry_run), INTERRUPTED_PUBLISH_SECONDS)
            except BaseException:  # noqa: BLE001 - the stop goes on
                pass
        raise
    log.finished(outcome)
    await publish_outcome_task(outcome, dry_run)
    return outcome.model_dump(mode="json")


#: How long an interrupted restore waits to publish its summary before it stops anyway.
INTERRUPTED_PUBLISH_SECONDS = 2.0


def _not_done(status: str, reason: str, log: RunLog, backend: str, started: float, known: dict) -> RestoreOutcome:
    """The outcome of a restore that did not happen, with what its data dir holds: what an
    interrupted restore or a failed undo left (its marker says), else the data dir as it was."""
    data_dir = Path(log.data_dir)
    info = read_marker(data_dir)
    run = _this_run()
    if info is not None and info.pid == os.getpid() and (run is None or info.flow_run_id == run.flow_run_id):
        holds = log.words(what_is_left(data_dir, info))
    elif status == "refused":
        holds = f"nothing in {data_dir} was changed"
    else:
        holds = f"{data_dir} is as it was before this restore (what it had staged was removed)"
    return not_done_outcome(status, reason, holds, log.tenant_id, log.snapshot, log.mode, backend, data_dir,
                            time.monotonic() - started, known.get("plan"))


def _restore(
    backend: str,
    tenant_id: int,
    data_dir: str,
    mode: RestoreMode,
    snapshot: str,
    destination: Destination,
    require_checksums: bool,
    dry_run: bool,
    resume: bool,
    streams: int,
    limit_rate: str | None,
    check: CheckLevel,
    as_of: str | None,
    log: RunLog,
    known: dict,
    max_streams: int = DEFAULT_CEILING,
) -> RestoreOutcome:
    """The restore-snapshot flow's steps, up to its outcome; each told to ``log``, the plan kept in
    ``known`` once it is read (for the outcome of a restore that does not happen)."""
    logger = get_run_logger()
    started = time.monotonic()
    rate = parse_rate(limit_rate) if limit_rate is not None else None  # refused before anything is read
    moment = parse_instant(as_of) if as_of else None  # the form sends an emptied field as ""
    manifest = fetch_manifest_task(backend, tenant_id, snapshot, moment)
    if moment is not None:
        logger.info("as of %s: snapshot %s, created %s", format_instant(moment), manifest.snapshot_id,
                    format_instant(manifest.created_at_unix_micros))
    plan = validate_task(manifest, destination.state(), backend, require_checksums)
    known["plan"] = plan
    log.resolved(plan)
    for warning in plan.warnings:
        logger.warning(warning)
    plan = known["plan"] = measure_plan_task(plan)
    log.measured(plan)
    with DataDirHold(Path(data_dir)) as hold:
        phase = preflight_task(plan, hold, mode, dry_run, resume, None if dry_run else _this_run())
        if dry_run:
            return build_outcome("planned", plan, mode, Path(data_dir), None, time.monotonic() - started,
                                 removed=replaced_by(Path(data_dir), plan.tenant_id, mode))

        def stage() -> list[StagedItem]:
            if phase not in (None, Phase.STAGING):  # interrupted mid-commit: staged and verified already
                logger.info(f"resuming after phase {phase.value}: the staged blobs are checked again, not fetched")
                return _results(recheck_item_task.map(plan.items, unmapped(data_dir)))
            # The blobs share the restore's streams and rate limit; the UI watches the bytes.
            begun = time.monotonic()
            with Transfer(streams, rate, max_streams=max_streams) as transfer, bytes_artifact(
                    f"restore-progress-tenant-{plan.tenant_id}",
                    sum(item.size or 0 for item in plan.items), lambda: transfer.received):
                staged = _results(stage_item_task.map(
                    unmapped(backend), plan.items, unmapped(data_dir), unmapped(phase is not None),
                    unmapped(transfer)))
            log.fetched(transfer.received, time.monotonic() - begun, len(staged), sum(s.verified for s in staged))
            known["streams"] = transfer.streams_used()
            return staged

        def check_staged() -> float | None:
            if phase not in (None, Phase.STAGING):
                return None
            seconds = check_staged_task(plan, data_dir, check)
            log.checked(check, seconds, len(plan.table_names))
            return seconds

        staged, check_seconds = sequence.run(hold, plan.tenant_id, sequence.Steps(
            stage=stage,
            check=check_staged,
            commit=lambda: commit_task(hold, plan.tenant_id, mode),
            cleanup=cleanup_task,
        ), on_failure=lambda exc: _emit("memrestore.restore.failed", tenant_id, plan.snapshot_id,
                                         {"reason": str(exc)}))
    outcome = build_outcome("restored", plan, mode, Path(data_dir), staged, time.monotonic() - started,
                            check.value if check_seconds is not None else None, check_seconds, hold.removed,
                            streams=known.get("streams"))
    _emit(
        "memrestore.restore.completed",
        tenant_id,
        plan.snapshot_id,
        {"bytes": outcome.total_bytes, "seconds": outcome.seconds, "data_dir": data_dir},
    )
    return outcome


@_per_item_flow("verify-snapshot", "verify-{snapshot}")
async def verify_snapshot(backend: str, snapshot: str) -> dict:
    """Download and hash every blob of a snapshot, writing nothing.

    Args:
        backend: Where the snapshots are: file:///abs/path, a path, or s3://bucket/prefix.
        snapshot: The snapshot id.
    """
    quiet_task_chatter()
    with _steps_client():
        outcome = _verify(backend, snapshot)
    await publish_outcome_task(outcome)
    return outcome.model_dump(mode="json")


def _verify(backend: str, snapshot: str) -> RestoreOutcome:
    """The verify-snapshot flow's steps, up to its outcome."""
    started = time.monotonic()
    plan = hash_plan(fetch_manifest_task(backend, None, snapshot), backend)
    hashed = _results(hash_item_task.map(unmapped(backend), plan.items))
    return build_outcome("verified", plan, None, None, hashed, time.monotonic() - started)


@flow(name="abort-restore", flow_run_name="abort-restore")
async def abort_restore(data_dir: str) -> dict:
    """Roll back an interrupted restore: its staged data goes, the previous contents stay (or are
    put back, when it was interrupted mid-commit), the marker goes.

    Args:
        data_dir: The data dir holding the interrupted restore's marker.
    """
    with _steps_client():
        info = abort_task(data_dir)
    return {
        "status": "aborted",
        "data_dir": data_dir,
        "tenant_id": info.tenant_id,
        "snapshot_id": info.snapshot_id,
        "mode": info.mode,
        "phase": info.phase.value,
    }
