"""Which failures are retried, and how long each wait is: transient backend errors only.

Tasks retry through Prefect (:data:`RETRY_OPTIONS`); code that runs inside one task or flow run,
or with no Prefect at all, retries the same failures the same way with :func:`retrying`.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, ParamSpec, TypeVar

from prefect.tasks import exponential_backoff
from prefect.utilities.math import clamped_poisson_interval

from memrestore.backends.errors import TransientBackendError

P = ParamSpec("P")
T = TypeVar("T")

#: Task-level attempts after boto3's own (3 per request): 1 + 4 = 5, waiting about 1, 2, 4, 8 s
#: (with jitter, so that many restores hitting a throttled bucket do not retry in step).
RETRIES = 4
RETRY_DELAYS = exponential_backoff(backoff_factor=1)(RETRIES)
RETRY_JITTER = 0.5

#: Told of each retry before its wait: the error, which attempt failed (1-based), the wait in seconds.
OnRetry = Callable[[TransientBackendError, int, float], None]


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


def retrying(
    fn: Callable[P, T],
    *,
    on_retry: OnRetry | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Callable[P, T]:
    """``fn`` retried as a task with :data:`RETRY_OPTIONS` is: a TransientBackendError is tried
    again after each of :data:`RETRY_DELAYS` (jittered as Prefect does), then raised; anything
    else is raised at once. ``fn`` must be safe to call again after it failed."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt, delay in enumerate(RETRY_DELAYS, start=1):
            try:
                return fn(*args, **kwargs)
            except TransientBackendError as exc:
                wait = clamped_poisson_interval(delay, clamping_factor=RETRY_JITTER)
                if on_retry is not None:
                    on_retry(exc, attempt, wait)
                sleep(wait)
        return fn(*args, **kwargs)

    return call
