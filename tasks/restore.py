"""A restore, top to bottom: the one composer that the ``restore-snapshot`` flow, the command line
(through the flow) and the drills (plain calls) all run.

1. Fetch the manifest (the snapshot by id, the tenant's latest, or its latest as of a time), unless
   the caller read it already (a drill lists them first).
2. Validate it against the destination: the plan, or a refusal. Nothing is written.
3. Measure the plan's objects: every one exists, and its size sizes the space check.
4. Hold the data dir (:class:`~memrestore.tasks.hold.DataDirHold`): its lock and the marker, taken
   once, let go once when the block ends.
5. Preflight: the mode's refusals and the space check; the marker goes to phase staging. A dry
   run ends here, with the plan.
6. Stage every blob into ``.restore-staging/`` and verify its blake3 (or, resuming a restore that
   was interrupted mid-commit, hash again what it staged or moved).
7. Check the staged copy (SQLite, the manifest's tables, FORMAT.md's layout); then the operator's
   own validation of it, when one is set (tasks/validation.py; its hook is checked before step 1).
8. Commit: set aside what the restore replaces, move the tenant in.
9. Clean up: drop the staging, the marker, then the old data.
10. The outcome.

What an interrupted restore leaves: told to stop (Ctrl-C, SIGTERM), the staging threads stop at
their next chunk and nothing is undone (an undo could itself be cut short); the marker keeps its
phase, for ``--resume`` or ``abort``. Any other failure before the cleanup undoes the restore; if
the undo fails too, the marker stays and :class:`RollbackFailedError` names both failures. A
failed cleanup (the new data is in place) keeps the marker in phase cleanup, so a resume finishes it.

How each step runs is the caller's :class:`Steps`: :data:`PLAIN` calls them in this thread (the
per-item steps on a few threads), as a drill's tenant does; the flow's runs each as a Prefect task
run (flows/task_runs.py). What the restore tells as it goes is its :class:`Narrator`'s.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from prefect.exceptions import TerminationSignal
from pydantic import BaseModel, ConfigDict, Field

from memrestore.backends import Backend, open_backend
from memrestore.backends.manifest import SnapshotManifest
from memrestore.backends.stream_control import DEFAULT_CEILING
from memrestore.backends.streams import DEFAULT_STREAMS, RateLimit, StreamBudget
from memrestore.tasks.checks import check_staged
from memrestore.tasks.choose import LATEST, fetch_manifest
from memrestore.tasks.commit import clean_up, commit_staged, roll_back
from memrestore.tasks.errors import RollbackFailedError
from memrestore.tasks.hold import DataDirHold
from memrestore.tasks.interrupt import request_stop
from memrestore.tasks.marker import DeadHolderFn, Phase, RunRef, replaced_by
from memrestore.tasks.measure import measure_plan
from memrestore.tasks.modes import CheckLevel, RestoreMode
from memrestore.tasks.outcome import RestoreOutcome, build_outcome
from memrestore.tasks.plan import DestinationState, PlanItem, RestorePlan
from memrestore.tasks.preflight import preflight
from memrestore.tasks.stage import StagedItem, recheck_item, stage_item
from memrestore.tasks.transfer import Transfer
from memrestore.tasks.validate import validate
from memrestore.tasks.validation import Validation, ValidationResult, check_hook, validate_staged

T = TypeVar("T")

#: Items staged at once: a snapshot has a SQLite checkpoint and a few HNSW blobs, so four covers
#: them. How many GETs are in flight is the restore's streams' (:class:`tasks.transfer.Transfer`):
#: from S3, the staged items' parts share them, so a lone large blob gets them all.
ITEM_CONCURRENCY = 4


class RestoreRequest(BaseModel):
    """One restore: which snapshot, into which data dir, how. Built once by its caller (the
    ``restore-snapshot`` flow from its form's flat parameters, a drill for each snapshot it tries)."""

    model_config = ConfigDict(frozen=True)

    backend: str = Field(description="Where the snapshots are: a URL, or a path.")
    tenant_id: int | None = Field(description="The tenant (needed for 'latest'; checked against the manifest).")
    data_dir: Path
    mode: RestoreMode
    snapshot: str = LATEST
    as_of: int | None = Field(default=None, description="With 'latest': the newest snapshot created at or "
                                                        "before this instant (unix microseconds).")
    destination: DestinationState = DestinationState()
    require_checksums: bool = False
    dry_run: bool = False
    resume: bool = False
    streams: int | None = Field(default=DEFAULT_STREAMS, description="GETs kept in flight; None: as many as "
                                                                     "pay, found as the restore runs.")
    max_streams: int = Field(default=DEFAULT_CEILING, description="With streams None: the most it may find.")
    limit_rate: int | None = Field(default=None, description="Bytes a second for this restore alone.")
    check: CheckLevel = CheckLevel.QUICK
    validation: Validation | None = Field(default=None, description="The operator's own validation of the staged "
                                                                    "copy, after the check (None: none).")


class Narrator:
    """What a restore tells as it goes, one call a step. This one tells nobody (the plain path's);
    the flow's (flows/run_log.RunLog) writes its run's log, names the run, and emits its events."""

    def fetched_manifest(self, manifest: SnapshotManifest, as_of: int | None) -> None: ...

    def resolved(self, plan: RestorePlan) -> None: ...

    def measured(self, plan: RestorePlan) -> None: ...

    def rechecking(self, phase: Phase) -> None: ...

    def fetched(self, received: int, seconds: float, items: int, verified: int) -> None: ...

    def checked(self, level: CheckLevel, seconds: float, tables: int) -> None: ...

    def validated(self, result: ValidationResult) -> None: ...

    def failed(self, plan: RestorePlan, exc: BaseException) -> None: ...

    def restored(self, outcome: RestoreOutcome) -> None: ...


QUIET = Narrator()


class Steps:
    """How a restore's steps run. This one (:data:`PLAIN`): as calls in the caller's thread, the
    per-item steps :data:`ITEM_CONCURRENCY` at once; flows/task_runs.py's runs each as a task run."""

    #: The flow run the restore runs as, recorded in its marker (None: not a flow run).
    run: RunRef | None = None
    #: Told of a marker whose restore's process died (the flow's marks that run Crashed).
    on_dead_holder: DeadHolderFn | None = None

    def call(self, step: Callable[..., T], *args: Any) -> T:
        return step(*args)

    def map(self, step: Callable[..., T], items: Sequence[PlanItem], *shared: Any) -> list[T]:
        """``step(item, *shared)`` for every item, the results in the items' order. Every item has
        finished (none is still writing) when this returns or raises, and only then is a failure
        raised: that of the first item, in the plan's order, that failed. Interrupted (Ctrl-C), it
        drops the items not yet started and waits for the running ones."""
        if len(items) <= 1:
            return [step(item, *shared) for item in items]
        pool = ThreadPoolExecutor(max_workers=min(ITEM_CONCURRENCY, len(items)), thread_name_prefix="memrestore-stage")
        try:
            futures = [pool.submit(step, item, *shared) for item in items]
            wait(futures)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [f.result() for f in futures]

    def watching_bytes(self, plan: RestorePlan, transfer: Transfer) -> AbstractContextManager:
        """Around the staging: who watches its bytes arrive besides the progress listener (the
        flow's: a progress artifact in the UI)."""
        return nullcontext()


PLAIN = Steps()


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, SIGTERM (Prefect's TerminationSignal, or ours), a stop request: the process is
    being told to stop, not the restore failing."""
    return isinstance(exc, (KeyboardInterrupt, TerminationSignal))


def restore(request: RestoreRequest, steps: Steps = PLAIN, narrator: Narrator = QUIET, *,
            backend: Backend | None = None, manifest: SnapshotManifest | None = None,
            limit: RateLimit | None = None, budget: StreamBudget | None = None) -> RestoreOutcome:
    """Restore ``request``'s snapshot into its data dir, each step run by ``steps`` and told to
    ``narrator``. What a caller that restores many (a drill) has already: ``backend``, the store
    opened; ``manifest``, the snapshot's, read; ``limit``, a rate limit shared with its other
    restores (instead of the request's own); ``budget``, the streams they may run together.
    Raises a RestoreError (a refusal, or a failure after which the data dir is as it was) or, told
    to stop, the interrupt."""
    started = time.monotonic()
    backend = backend if backend is not None else open_backend(request.backend)
    validation = request.validation if request.validation is not None and request.validation.active else None
    if validation is not None:
        check_hook(validation)  # a hook that cannot run is refused before anything is read
    if manifest is None:
        manifest = steps.call(fetch_manifest, backend, request.tenant_id, request.snapshot, request.as_of)
        narrator.fetched_manifest(manifest, request.as_of)
    plan = steps.call(validate, manifest, request.destination, request.backend, request.require_checksums)
    narrator.resolved(plan)
    plan = steps.call(measure_plan, backend, plan)
    narrator.measured(plan)
    data_dir, mode = request.data_dir, request.mode
    with DataDirHold(data_dir) as hold:
        phase = steps.call(preflight, plan, hold, mode, request.dry_run, request.resume,
                           None if request.dry_run else steps.run, steps.on_dead_holder)
        if request.dry_run:
            return build_outcome("planned", plan, mode, data_dir, None, time.monotonic() - started,
                                 removed=replaced_by(data_dir, plan.tenant_id, mode))
        validated = None
        try:
            if phase in (None, Phase.STAGING):
                staged, streams_used = _stage(backend, plan, request, phase is not None, steps, narrator, limit,
                                              budget)
                check_seconds = steps.call(check_staged, plan, data_dir, request.check)
                narrator.checked(request.check, check_seconds, len(plan.table_names))
                if validation is not None:
                    validated = steps.call(validate_staged, plan, data_dir, validation)
                    narrator.validated(validated)
            else:  # interrupted mid-commit: staged, verified (and validated) already
                narrator.rechecking(phase)
                staged, check_seconds, streams_used = steps.map(recheck_item, plan.items, data_dir), None, None
            steps.call(commit_staged, hold, plan.tenant_id, mode)
        except BaseException as exc:
            if is_interrupt(exc):
                request_stop()
                raise
            _undo(hold, plan.tenant_id, exc)
            narrator.failed(plan, exc)
            raise
        steps.call(clean_up, hold)
    outcome = build_outcome("restored", plan, mode, data_dir, staged, time.monotonic() - started,
                            request.check.value if check_seconds is not None else None, check_seconds, hold.removed,
                            validated, streams_used)
    narrator.restored(outcome)
    return outcome


def _stage(backend: Backend, plan: RestorePlan, request: RestoreRequest, resume: bool, steps: Steps,
           narrator: Narrator, limit: RateLimit | None,
           budget: StreamBudget | None) -> tuple[list[StagedItem], tuple | None]:
    """Stage every item on the restore's streams, under its rate limit; what was staged, and the
    streams used (the most at once, those at the end, each change: ``Transfer.streams_used``;
    None when none ran: a local folder)."""
    begun = time.monotonic()
    with Transfer(request.streams, request.limit_rate, limit, request.max_streams, budget) as transfer, \
            steps.watching_bytes(plan, transfer):
        staged = steps.map(stage_item, plan.items, backend, request.data_dir, resume, transfer)
    narrator.fetched(transfer.received, time.monotonic() - begun, len(staged), sum(s.verified for s in staged))
    return staged, transfer.streams_used()


def _undo(hold: DataDirHold, tenant_id: int, cause: BaseException) -> None:
    """Undo the unfinished restore after ``cause``; if even that fails, keep the marker and say
    what is left (RollbackFailedError, from ``cause``)."""
    try:
        roll_back(hold, tenant_id)
    except Exception as undo_exc:  # noqa: BLE001 - reported together with the first failure
        raise RollbackFailedError(hold.data_dir, cause, undo_exc) from cause
