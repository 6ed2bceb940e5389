"""The ``restore-snapshot``, ``verify-snapshot`` and ``abort-restore`` flows: their form (flat, typed
parameters), the restore's request built from them once, and the composer (tasks/restore.py) run
with each step a task run (flows/task_runs.py) and told to the run's log (flows/run_log.py).

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

from prefect import flow
from prefect.context import SyncClientContext
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.states import Failed, State
from pydantic import BaseModel, Field, model_serializer
from pydantic.json_schema import SkipJsonSchema

from memrestore.backends import open_backend
from memrestore.backends.listing import parse_instant
from memrestore.backends.errors import BadInputError, RestoreError
from memrestore.backends.manifest import WireVersion
from memrestore.backends.streams import parse_rate
from memrestore.flows.run_log import RunLog, initial_run_name, quiet_task_chatter
from memrestore.flows.task_runs import TaskRuns, this_run
from memrestore.tasks.checks import CheckLevel
from memrestore.tasks.choose import LATEST, fetch_manifest
from memrestore.tasks.commit import abort
from memrestore.tasks.dead_restores import what_is_left
from memrestore.tasks.errors import RestoreRefusedError
from memrestore.tasks.marker import read_marker
from memrestore.tasks.outcome import RestoreOutcome, build_outcome, not_done_outcome, publish_outcome, publish_outcome_task
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.restore import ITEM_CONCURRENCY, RestoreRequest, is_interrupt, restore
from memrestore.tasks.stage import hash_item
from memrestore.tasks.transfer import DEFAULT_CEILING, DEFAULT_STREAMS, RateParam, StreamsParam
from memrestore.tasks.validate import hash_plan
from memrestore.tasks.validation import Validation


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


def _steps_client() -> AbstractContextManager:
    """One API client for the flow's sync task runs, in this thread and the task runner's.

    A sync task run takes its client from the ``SyncClientContext``. A sync flow run opens one; an
    async flow run does not, so each sync task run would build a client of its own (~40 ms each:
    an SSL context, then a CSRF token request before its first POST), more than the steps of a
    small restore take. The task runner's threads see this context as they see a sync flow run's
    (Prefect copies the context into each).
    """
    return SyncClientContext.get_or_create()


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
    validation: Validation = Validation(),
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
        validation: The operator's own validation of the staged copy, after check and before
            the commit: a command and/or a Python callable; a copy that fails it is refused,
            the data dir left as it was. Empty: none.
        max_streams: The most streams the restore may find worth keeping in flight, when
            streams is empty.
    """
    quiet_task_chatter()
    log = RunLog(tenant_id, snapshot, mode, data_dir, dry_run)
    started = time.monotonic()
    try:
        request = RestoreRequest(  # the form's spellings refused before anything is read
            backend=backend, tenant_id=tenant_id, data_dir=Path(data_dir), mode=mode, snapshot=snapshot,
            as_of=parse_instant(as_of) if as_of else None,  # the form sends an emptied field as ""
            destination=destination.state(), require_checksums=require_checksums, dry_run=dry_run,
            resume=resume, streams=streams, limit_rate=parse_rate(limit_rate) if limit_rate is not None else None,
            check=check, validation=validation, max_streams=max_streams)
        with _steps_client():
            outcome = restore(request, TaskRuns(), log)
    except RestoreError as exc:
        message = log.words(str(exc))
        log.not_done(message)
        status = "refused" if isinstance(exc, (RestoreRefusedError, BadInputError)) else "failed"
        try:
            await publish_outcome_task(_not_done(status, message, log, backend, started), dry_run)
        except Exception as publish_exc:  # noqa: BLE001 - the refusal is the run's news, not this
            log.logger.warning(f"could not publish the summary of this {status} restore: {publish_exc}")
        return Failed(message=message, data=exc)
    except BaseException as exc:
        if is_interrupt(exc):
            # Said where the operator looks, if the API answers at once: a stop must not wait on it.
            why = f"the restore was {str(exc) or f'stopped ({type(exc).__name__})'}"
            interrupted = _not_done("interrupted", why, log, backend, started)
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


def _not_done(status: str, reason: str, log: RunLog, backend: str, started: float) -> RestoreOutcome:
    """The outcome of a restore that did not happen, with what its data dir holds: what an
    interrupted restore or a failed undo left (its marker says), else the data dir as it was."""
    data_dir = Path(log.data_dir)
    info = read_marker(data_dir)
    run = this_run()
    if info is not None and info.pid == os.getpid() and (run is None or info.flow_run_id == run.flow_run_id):
        holds = log.words(what_is_left(data_dir, info))
    elif status == "refused":
        holds = f"nothing in {data_dir} was changed"
    else:
        holds = f"{data_dir} is as it was before this restore (what it had staged was removed)"
    return not_done_outcome(status, reason, holds, log.tenant_id, log.snapshot, log.mode, backend, data_dir,
                            time.monotonic() - started, log.plan)


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


def _verify(backend_url: str, snapshot: str) -> RestoreOutcome:
    """The verify-snapshot flow's steps, up to its outcome."""
    started = time.monotonic()
    steps, backend = TaskRuns(), open_backend(backend_url)
    plan = hash_plan(steps.call(fetch_manifest, backend, None, snapshot, None), backend_url)
    hashed = steps.map(hash_item, plan.items, backend)
    return build_outcome("verified", plan, None, None, hashed, time.monotonic() - started)


@flow(name="abort-restore", flow_run_name="abort-restore")
async def abort_restore(data_dir: str) -> dict:
    """Roll back an interrupted restore: its staged data goes, the previous contents stay (or are
    put back, when it was interrupted mid-commit), the marker goes.

    Args:
        data_dir: The data dir holding the interrupted restore's marker.
    """
    with _steps_client():
        steps = TaskRuns()
        info = steps.call(abort, Path(data_dir), steps.on_dead_holder)
    return {
        "status": "aborted",
        "data_dir": data_dir,
        "tenant_id": info.tenant_id,
        "snapshot_id": info.snapshot_id,
        "mode": info.mode,
        "phase": info.phase.value,
    }
