"""Which failures a task retries, and how long it waits: transient backend errors only."""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from backends.errors import TransientBackendError

#: Task-level attempts after boto3's own (3 per request): 1 + 4 = 5, waiting about 1, 2, 4, 8 s
#: (with jitter, so that many restores hitting a throttled bucket do not retry in step).
RETRIES = 4
RETRY_DELAYS = exponential_backoff(backoff_factor=1)(RETRIES)
RETRY_JITTER = 0.5


def retry_transient_only(task, task_run, state) -> bool:
    """Prefect retry condition: retry a TransientBackendError, fail at once on anything else."""
    try:
        state.result()
    except TransientBackendError:
        return True
    except BaseException:  # noqa: BLE001 - anything else is permanent by definition
        return False
    return False


RETRY_OPTIONS = dict(
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_jitter_factor=RETRY_JITTER,
    retry_condition_fn=retry_transient_only,
)
