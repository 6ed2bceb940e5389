"""How a ``memrestore`` command runs a flow: Prefect's settings chosen and its API found before
Prefect is imported, the import itself, and the flow's call run to its end in this thread.

Nothing here imports Prefect at module level: ``--help`` and ``snapshots`` never load it.
"""

from __future__ import annotations

import asyncio
import gc
import os
from contextlib import contextmanager
from typing import Any, Coroutine, Iterator, TypeVar

from memrestore.flows.cli.common import err, errors_as_messages, fail

T = TypeVar("T")

#: Prefect's defaults that the command line changes (an environment variable still wins).
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # A heartbeat every 30 s (Prefect's least; its default is 180 s): a standing server's
    # heartbeat automation (flows/ops/alerts.py) marks a killed restore's run Crashed within ~2 min.
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}


def quiet_prefect(verbose: bool) -> None:
    """Prefect logs every task to the console; the CLI prints its own summary instead."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "CRITICAL")


def connect_prefect() -> None:
    """Point this command at a Prefect API before Prefect is imported (it reads its settings
    once, at import): the one the user set up, else the shared local server of this
    ``PREFECT_HOME``, started now if none is running (flows/ops/local_server.py)."""
    from memrestore.flows.errors import LocalServerError
    from memrestore.flows.ops.local_server import ensure_server
    from memrestore.flows.ops.prefect_config import configured_api_url

    if configured_api_url():
        return
    try:
        info, started = ensure_server()
    except LocalServerError as exc:
        fail(str(exc))
    if started:
        err.print(f"started a local Prefect server for this PREFECT_HOME at {info.ui_url} (UI and API; "
                  f"later commands reuse it, it stops after {info.idle_seconds:.0f} idle seconds; "
                  "`memrestore server status`)", highlight=False, soft_wrap=True)
    os.environ["PREFECT_API_URL"] = info.api_url


@contextmanager
def running_flows(verbose: bool) -> Iterator[None]:
    """The body of a command that runs flows: Prefect quiet (unless ``--verbose``) and connected
    first, and whatever goes wrong in the body one message (:func:`errors_as_messages`)."""
    quiet_prefect(verbose)
    connect_prefect()
    with errors_as_messages(verbose):
        yield


@contextmanager
def importing_prefect() -> Iterator[None]:
    """Around a command's import of Prefect and the flows: no garbage collection while they create
    their ~120,000 long-lived objects, then those frozen (``gc.freeze``), so that neither a later
    collection nor the full one at interpreter exit walks them again. Measured: ~0.1 s less CPU
    importing, and 0.3-0.6 s less wall time per ``restore`` or ``verify``, most of it at exit."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def run_flow(call: Coroutine[Any, Any, T]) -> T:
    """Run an async flow's call to its end in this thread, as a sync flow's call would run.

    Not ``asyncio.run``: its Ctrl-C handler only cancels the flow at its next ``await``, and a
    restore's steps block without awaiting, so a first Ctrl-C would go unheeded until the restore
    had finished. Here Ctrl-C raises KeyboardInterrupt in the step that is running.
    """
    with asyncio.Runner() as runner:
        return runner.get_loop().run_until_complete(call)
