"""What a restore's flow run says as it goes, for a person following it in the Prefect UI: one log
line a step (what ``latest`` resolved to, the bytes and their rate, the check's result, where the
files went), its name (the snapshot, once known; ``plan-`` for a dry run), its events
(``memrestore.restore.completed`` / ``.failed``, for automations), and, when it does not happen,
one line with the refusal or error, never a traceback.

Prefect's own lines for each task run ("Finished in state Completed()") and the tracebacks of a
refusal (a :class:`RestoreError`, raised on purpose: its message says it all) are moved to DEBUG
for the restore's flows by :func:`quiet_task_chatter`, so these lines stand out; a traceback stays
for a real bug (any other exception). Sizes, rates and times: tasks/units.py.
"""

from __future__ import annotations

import datetime
import logging
import time

from prefect import get_run_logger
from prefect.context import FlowRunContext, SyncClientContext
from prefect.events import emit_event
from prefect.runtime import flow_run

from memrestore.backends.errors import RestoreError
from memrestore.backends.listing import format_instant
from memrestore.backends.manifest import SnapshotManifest
from memrestore.flows.form_words import in_form_words
from memrestore.tasks import units
from memrestore.tasks.checks import PRAGMA, CheckLevel
from memrestore.tasks.choose import LATEST
from memrestore.tasks.marker import Phase
from memrestore.tasks.outcome import RestoreOutcome, speed
from memrestore.tasks.plan import RestoreMode, RestorePlan
from memrestore.tasks.restore import Narrator
from memrestore.tasks.validation import ValidationResult

#: The flows whose runs' chatter is quieted.
QUIET_FLOWS = frozenset({"restore-snapshot", "verify-snapshot"})
_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class _QuietChatter(logging.Filter):
    """Moves to DEBUG, in the runs of :data:`QUIET_FLOWS`, Prefect's "Finished in state ..." of each
    task run and of the flow run (the run's state, its message and our own lines say it), and its
    report of a task run or flow run that raised a RestoreError (a message, not a bug: the flow
    logs it once). A record moved below its logger's level is dropped, as if logged at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "flow_name", None) not in QUIET_FLOWS or record.levelno <= logging.DEBUG:
            return True
        refusal = record.exc_info is not None and isinstance(record.exc_info[1], RestoreError)
        if not (refusal or record.getMessage().startswith("Finished in state ")):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_task_chatter() -> None:
    """Install the filter on Prefect's run loggers (once per process)."""
    for name in _RUN_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _QuietChatter) for f in logger.filters):
            logger.addFilter(_QuietChatter())


def run_name(tenant_id: int, snapshot: str, mode: RestoreMode | str, dry_run: bool) -> str:
    """``tenant-3-snap-1-new_cluster``; a dry run's ``plan-tenant-3-snap-1-new_cluster``."""
    name = f"tenant-{tenant_id}-{snapshot}-{getattr(mode, 'value', mode)}"
    return f"plan-{name}" if dry_run else name


def initial_run_name() -> str:
    """The ``restore-snapshot`` flow's run name from its parameters, before ``latest`` is resolved."""

    p = flow_run.parameters
    return run_name(p["tenant_id"], p.get("snapshot", LATEST), p["mode"], bool(p.get("dry_run")))


def _created(plan: RestorePlan) -> str:
    seconds = plan.created_at_unix_micros / 1e6
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return f"created {when:%Y-%m-%d %H:%M:%S} UTC, {units.age(time.time() - seconds)} ago"


class RunLog(Narrator):
    """The lines of one restore's run, in the words of the surface that started it: a deployment's
    run (the UI's form) names form fields, the command line's names flags (flows/form_words.py).
    Keeps the plan once it is known (:attr:`plan`), for the outcome of a restore that stops later."""

    def __init__(self, tenant_id: int, snapshot: str, mode: RestoreMode, data_dir: str, dry_run: bool) -> None:

        self.logger = get_run_logger()
        context = FlowRunContext.get()
        self.from_deployment = bool(context and context.flow_run and context.flow_run.deployment_id)
        self.tenant_id, self.snapshot, self.mode = tenant_id, snapshot, mode
        self.data_dir, self.dry_run = data_dir, dry_run
        self.plan: RestorePlan | None = None

    def words(self, message: str) -> str:
        return in_form_words(message) if self.from_deployment else message

    def fetched_manifest(self, manifest: SnapshotManifest, as_of: int | None) -> None:
        if as_of is not None:
            self.logger.info("as of %s: snapshot %s, created %s", format_instant(as_of), manifest.snapshot_id,
                             format_instant(manifest.created_at_unix_micros))

    def resolved(self, plan: RestorePlan) -> None:
        """The snapshot found, and the run renamed after it; the plan's warnings."""
        self.plan = plan
        which = (f"'latest' of tenant {plan.tenant_id} is snapshot {plan.snapshot_id}" if self.snapshot == LATEST
                 else f"snapshot {plan.snapshot_id} of tenant {plan.tenant_id}")
        self.logger.info(f"{which}: {_created(plan)}")
        self._rename(run_name(plan.tenant_id, plan.snapshot_id, self.mode, self.dry_run))
        for warning in plan.warnings:
            self.logger.warning(warning)

    def measured(self, plan: RestorePlan) -> None:
        self.plan = plan
        self.logger.info(
            f"{len(plan.items)} items, {units.size(plan.total_bytes)} to fetch into {self.data_dir} "
            f"({self.mode.value}): " + ", ".join(f"{i.label} {units.size(i.size)}" for i in plan.items))

    def fetched(self, received: int, seconds: float, items: int, verified: int) -> None:
        rate = f", {units.rate(received / seconds)}" if seconds > 0 and received > 0 else ""
        checked = (f"all {items} match the manifest's blake3" if verified == items
                   else f"{verified} of {items} match the manifest's blake3, {items - verified} have no checksum")
        self.logger.info(f"fetched {units.size(received)} in {units.duration(seconds)}{rate}; {checked}")

    def rechecking(self, phase: Phase) -> None:
        self.logger.info(f"resuming after phase {phase.value}: the staged blobs are checked again, not fetched")

    def checked(self, level: CheckLevel, seconds: float, tables: int) -> None:
        if level is CheckLevel.NONE:
            self.logger.warning(self.words("the staged copy was not checked before the commit (--check none)"))
            return
        self.logger.info(f"staged copy checked ({level.value}): SQLite {PRAGMA[level]} ok, the manifest's {tables} "
                         f"tables present, in {units.duration(seconds)}")

    def validated(self, result: ValidationResult) -> None:
        if result.removed:
            self.logger.warning(f"the validation left {', '.join(result.removed)} beside the staged copy's "
                                "files: removed, not committed")
        self.logger.info(f"staged copy validated ({result.hooks}): {result.short()}")

    def failed(self, plan: RestorePlan, exc: BaseException) -> None:
        emit_tenant_event("memrestore.restore.failed", plan.tenant_id, {"reason": str(exc)},
                          {"memrestore.snapshot": plan.snapshot_id})

    def restored(self, outcome: RestoreOutcome) -> None:
        emit_tenant_event("memrestore.restore.completed", outcome.tenant_id,
                          {"bytes": outcome.total_bytes, "seconds": outcome.seconds, "data_dir": self.data_dir},
                          {"memrestore.snapshot": outcome.snapshot_id})

    def finished(self, outcome: RestoreOutcome) -> None:
        if outcome.status == "planned":
            self.logger.info(
                f"plan: would restore snapshot {outcome.snapshot_id} ({len(outcome.items)} items, "
                f"{units.size(outcome.total_bytes)}) into {self.data_dir}; a dry run reads and writes nothing")
            return
        where = ", ".join(i.destination for i in outcome.items)
        self.logger.info(f"restored snapshot {outcome.snapshot_id} of tenant {outcome.tenant_id} in "
                         f"{units.duration(outcome.seconds)}{speed(outcome)}: {where}")

    def not_done(self, message: str) -> None:
        """The one line of a restore that did not happen (its message is the run's state's)."""
        self.logger.error(message)

    def _rename(self, name: str) -> None:
        """Rename the running flow run (the UI's runs list and page show it). Best effort: a name is
        for reading, and must never fail a restore."""

        context = FlowRunContext.get()
        if context is None or context.flow_run is None or context.flow_run.name == name:
            return
        try:
            with SyncClientContext.get_or_create() as client_context:
                client_context.client.set_flow_run_name(context.flow_run.id, name)
            context.flow_run.name = name
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self.logger.debug("could not rename the run to %s: %s", name, exc)


def emit_tenant_event(event: str, tenant_id: int, payload: dict, labels: dict[str, str]) -> None:
    """A Prefect event about a tenant (``memrestore.tenant.<id>``, with ``labels`` beside it): a
    restore's end, a drill's failed tenant, a blob that failed its sampled verify. Automations
    match on the event's name (flows/ops/alerts.py)."""
    emit_event(event=event, resource={"prefect.resource.id": f"memrestore.tenant.{tenant_id}", **labels},
               payload=payload)
