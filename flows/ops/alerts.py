"""The Prefect automations of memrestore: one pages someone when a restore drill fails, one when a
sampled verify finds a blob that does not hash right, one marks a restore whose process died Crashed.

The ``restore-drill`` flow emits one ``memrestore.drill.failed`` event per failed tenant, its
resource ``memrestore.tenant.<id>`` and its payload the tenant's line of the drill report. This
automation reacts to each one (one notification per tenant, not one per drill) through a Prefect
notification block: Slack, Microsoft Teams, PagerDuty, Opsgenie, email, a custom webhook, ...

    from prefect.blocks.notifications import SlackWebhook
    from memrestore.flows.ops.alerts import drill_failed_automation

    block_id = SlackWebhook(url="https://hooks.slack.com/services/...").save("memrestore-pager")
    drill_failed_automation(block_id).create()

A sampled verify (the drill's ``sample``, or ``memrestore sample-verify``) emits one
``memrestore.verify.failed`` per failed blob, its payload the blob's key, the snapshots that hold
it and why: :func:`blob_failed_automation` notifies on each the same way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Callable
from uuid import UUID

from prefect.automations import Automation, EventTrigger, SendNotification
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState

from memrestore.tasks.drill import DRILL_FAILED_EVENT
from memrestore.tasks.sample_verify import SAMPLE_FAILED_EVENT

AUTOMATION_NAME = "memrestore: restore drill failed"

SUBJECT = "memrestore: {{ event.resource.name }} failed its restore drill"
#: Jinja over the triggering event: its resource and the tenant's report line in the payload.
BODY = """\
{{ event.resource.name }} failed the restore drill: {{ event.payload.reason }}
latest snapshot: {{ event.payload.snapshot_id }}
last good snapshot: {{ event.payload.last_good_snapshot_id or "none restorable" }}
backend: {{ event.resource["memrestore.backend"] }}
at: {{ event.occurred }}"""


def drill_failed_automation(block_document_id: UUID, name: str = AUTOMATION_NAME) -> Automation:
    """An automation (not yet created: call ``.create()``) that sends a notification through the
    block ``block_document_id`` for every ``memrestore.drill.failed`` event."""
    return Automation(
        name=name,
        description="One notification per tenant that fails a memrestore restore drill.",
        trigger=EventTrigger(
            expect={DRILL_FAILED_EVENT},
            match={"prefect.resource.id": "memrestore.tenant.*"},
            for_each={"prefect.resource.id"},
            posture="Reactive",
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_document_id, subject=SUBJECT, body=BODY)],
    )


BLOB_AUTOMATION_NAME = "memrestore: stored blob failed its sampled verify"
BLOB_SUBJECT = "memrestore: a stored blob of {{ event.resource.name }} failed its sampled verify"
BLOB_BODY = """\
a blob of {{ event.resource.name }} does not verify: {{ event.payload.reason }}
key: {{ event.payload.key }}
snapshots that hold it (each would fail a restore): {{ event.payload.snapshot_ids | join(", ") }}
backend: {{ event.resource["memrestore.backend"] }}
at: {{ event.occurred }}"""


def blob_failed_automation(block_document_id: UUID, name: str = BLOB_AUTOMATION_NAME) -> Automation:
    """An automation (not yet created: call ``.create()``) that sends a notification through the
    block ``block_document_id`` for every ``memrestore.verify.failed`` event: one per blob."""
    return Automation(
        name=name,
        description="One notification per stored blob that fails a memrestore sampled verify.",
        trigger=EventTrigger(
            expect={SAMPLE_FAILED_EVENT},
            match={"prefect.resource.id": "memrestore.tenant.*"},
            posture="Reactive",
            threshold=1,
            within=timedelta(0),
        ),
        actions=[SendNotification(block_document_id=block_document_id, subject=BLOB_SUBJECT, body=BLOB_BODY)],
    )


CRASHED_AUTOMATION_NAME = "memrestore: restore process died"
#: The flows whose runs hold a data dir's marker while they run.
RESTORE_FLOWS = ["restore-snapshot", "drill-tenant"]
#: A run whose heartbeats (every 30 s: the CLI's PREFECT_FLOWS_HEARTBEAT_FREQUENCY) stop for this
#: long is taken for dead: three missed beats.
SILENCE = timedelta(seconds=90)
CRASHED_MESSAGE = (
    "memrestore: this restore's process stopped sending heartbeats (killed, out of memory, or its "
    "machine went down). Its data dir (the run's data_dir parameter) keeps its marker "
    ".restore-in-progress with the phase it reached: finish it with `memrestore restore --resume` "
    "and the same arguments, or roll it back with `memrestore abort --data-dir DIR`. The next "
    "memrestore command on that data dir replaces this message with what the marker says."
)


def crashed_restore_automation(silence: timedelta = SILENCE, name: str = CRASHED_AUTOMATION_NAME) -> Automation:
    """An automation (not yet created: call ``.create()``) that marks a restore's flow run Crashed
    once its heartbeats stop for ``silence`` without the run ending (Prefect's zombie-run pattern,
    limited to memrestore's restore flows). A state message cannot be templated, so it says where
    to look; the data dir's phase is written by the next memrestore command there
    (tasks/dead_restores.py)."""
    return Automation(
        name=name,
        description="Marks a memrestore restore whose process died (no heartbeat) Crashed.",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": RESTORE_FLOWS},
            for_each={"prefect.resource.id"},
            posture="Proactive",
            threshold=1,
            within=silence,
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message=CRASHED_MESSAGE, force=True)],
    )


def ensure_crashed_restore_automation(log: Callable[[str], None] = print) -> None:
    """Create :func:`crashed_restore_automation` on the current API unless one of its name exists."""

    with get_client(sync_client=True) as client:
        if client.read_automations_by_name(CRASHED_AUTOMATION_NAME):
            return
    crashed_restore_automation().create()
    log(f"created the automation {CRASHED_AUTOMATION_NAME!r}: a restore whose heartbeats stop for "
        f"{SILENCE.seconds} s is marked Crashed")
