"""The Prefect automation that pages someone when a restore drill fails.

The ``restore-drill`` flow emits one ``memrestore.drill.failed`` event per failed tenant, its
resource ``memrestore.tenant.<id>`` and its payload the tenant's line of the drill report. This
automation reacts to each one (one notification per tenant, not one per drill) through a Prefect
notification block: Slack, Microsoft Teams, PagerDuty, Opsgenie, email, a custom webhook, ...

    from prefect.blocks.notifications import SlackWebhook
    from flows.alerts import drill_failed_automation

    block_id = SlackWebhook(url="https://hooks.slack.com/services/...").save("memrestore-pager")
    drill_failed_automation(block_id).create()
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation, EventTrigger, SendNotification

from tasks.drill import DRILL_FAILED_EVENT
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
