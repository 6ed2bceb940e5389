"""The commands about a Prefect server: ``server status|start|stop`` for the shared local one
(flows/ops/local_server.py), and ``serve``, which serves this project's deployments to the API."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

from memrestore.flows.cli.common import (
    JsonOpt,
    ValidateCallableOpt,
    ValidateCommandOpt,
    ValidateTimeoutOpt,
    VerboseOpt,
    err,
    errors_as_messages,
    fail,
    out,
    validation_of,
)
from memrestore.flows.cli.drill import (
    KeepFailedOpt,
    MaxAgeOpt,
    PickOpt,
    SampleOpt,
    ScratchDirOpt,
    SeedOpt,
    TenantsOpt,
    WindowOpt,
    drill_parameters,
    pick_parameters,
)
from memrestore.flows.cli.run_flow import quiet_prefect


def _cron(value: str) -> str:
    from prefect.schedules import Cron

    try:
        Cron(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


def serve(
    drill_cron: str = typer.Option(
        "0 3 * * *", "--drill-cron", callback=_cron, help="When the nightly drill runs: cron, in UTC."),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="The drill's backend (and the on-demand form's default); no drill without it."),
    tenant: Optional[list[int]] = TenantsOpt,
    max_age_hours: Optional[float] = MaxAgeOpt,
    scratch_dir: Optional[Path] = ScratchDirOpt,
    keep_failed: bool = KeepFailedOpt,
    validate_command: Optional[str] = ValidateCommandOpt,
    validate_callable: Optional[str] = ValidateCallableOpt,
    validate_timeout: Optional[float] = ValidateTimeoutOpt,
    pick: str = PickOpt,
    window: Optional[str] = WindowOpt,
    seed: Optional[int] = SeedOpt,
    sample: Optional[str] = SampleOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Serve restore-snapshot/on-demand and restore-drill/nightly to the Prefect API until stopped."""
    validation = validation_of(validate_command, validate_callable, validate_timeout)
    coverage = pick_parameters(pick, window, seed, sample)
    quiet_prefect(verbose)  # no PREFECT_API_URL: flows.ops.serve takes the shared local server itself
    with errors_as_messages(verbose):
        from memrestore.flows.ops.serve import serve as serve_deployments

        serve_deployments(
            backend=backend,
            drill_cron=drill_cron,
            **drill_parameters(tenant, max_age_hours, scratch_dir, keep_failed),
            log=lambda line: err.print(line, highlight=False, soft_wrap=True),
            validation=validation,
            coverage=coverage,
        )


def _server_lines(info, home: Path) -> list[str]:
    from memrestore.flows.ops.local_server import describe_users, in_use, last_used

    lines = [f"local Prefect server for PREFECT_HOME={home}: pid {info.pid}, UI {info.ui_url}, "
             f"API {info.api_url}, started {info.started_at}"]
    if in_use(home):
        lines.append(f"in use by {describe_users(home)}")
    else:
        used = last_used(home)
        idle = time.time() - used if used is not None else 0.0
        left = max(0.0, info.idle_seconds - idle)
        lines.append(f"idle for {idle:.0f} s; stops by itself in about {left:.0f} s")
    lines.append(f"log: {info.log}")
    return lines


def server_status(as_json: bool = JsonOpt) -> None:
    """Show the local server of this PREFECT_HOME, if one is running."""
    from memrestore.flows.ops.local_server import healthy, running_server, users
    from memrestore.flows.ops.prefect_config import configured_api_url, prefect_home

    home = prefect_home()
    info = running_server(home)
    running = info is not None
    configured = configured_api_url()
    if as_json:
        print(json.dumps({"prefect_home": str(home), "running": running,
                          "healthy": bool(running and healthy(info.api_url)),
                          "server": info.__dict__ if running else None,
                          "users": [u.__dict__ for u in users(home)] if running else [],
                          "configured_api_url": configured}, indent=2))
        return
    if configured:
        out.print(f"commands use the Prefect API set up at {configured}; the local server is not used",
                  highlight=False, soft_wrap=True)
    if not running:
        out.print(f"no local Prefect server is running for PREFECT_HOME={home}", highlight=False, soft_wrap=True)
        return
    for line in _server_lines(info, home):
        out.print(line, highlight=False, soft_wrap=True)


def server_start() -> None:
    """Start the local server now (commands start it when they need it)."""
    from memrestore.flows.errors import LocalServerError
    from memrestore.flows.ops.local_server import ensure_server
    from memrestore.flows.ops.prefect_config import prefect_home

    try:
        info, started = ensure_server()
    except LocalServerError as exc:
        fail(str(exc))
    out.print(("started " if started else "already running: ") + _server_lines(info, prefect_home())[0],
              highlight=False, soft_wrap=True)


def server_stop(
    force: bool = typer.Option(False, "--force", help="Stop it even while a command uses it."),
) -> None:
    """Stop the local server of this PREFECT_HOME (the next command starts a new one)."""
    from memrestore.flows.errors import LocalServerError
    from memrestore.flows.ops.local_server import stop_server
    from memrestore.flows.ops.prefect_config import prefect_home

    try:
        info = stop_server(force=force)
    except LocalServerError as exc:
        fail(str(exc))
    if info is None:
        out.print(f"no local Prefect server was running for PREFECT_HOME={prefect_home()}", highlight=False)
    else:
        out.print(f"stopped the local Prefect server (pid {info.pid}, {info.ui_url})", highlight=False)
