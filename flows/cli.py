"""The ``memrestore`` command line: the same flows as the Prefect UI, from a terminal.

Exit status: 0 success, 1 refused or failed (one message on stderr, no traceback), 2 usage error.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Coroutine, Iterator, Optional, TypeVar

import typer
from rich.console import Console

from memrestore.backends import list_snapshots, open_backend
from memrestore.backends.streams import DEFAULT_STREAMS, MAX_STREAMS, RateSpellingError, parse_rate
from memrestore.backends.errors import RestoreError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Restore agent-memory snapshots (SQLite + HNSW) from a local folder or S3.",
    pretty_exceptions_enable=False,
)
# Off a terminal (a pipe, a log file), lines are not cut to 80 columns.
out = Console() if sys.stdout.isatty() else Console(width=200)
err = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=200)

#: Prefect's defaults that the command line changes (an environment variable still wins).
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    # A heartbeat every 30 s (Prefect's least; its default is 180 s): a standing server's
    # heartbeat automation (flows/alerts.py) marks a killed restore's run Crashed within ~2 min.
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
}


T = TypeVar("T")


class CheckOpt(str, Enum):
    """--check: how the staged copy is checked before the commit (memrestore.tasks.checks)."""

    quick = "quick"
    full = "full"
    none = "none"


class Mode(str, Enum):
    new_cluster = "new_cluster"
    single_tenant = "single_tenant"
    wipe_and_restore = "wipe_and_restore"


def _quiet_prefect(verbose: bool) -> None:
    """Prefect logs every task to the console; the CLI prints its own summary instead."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "CRITICAL")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "CRITICAL")


def _connect_prefect() -> None:
    """Point this command at a Prefect API before Prefect is imported (it reads its settings
    once, at import): the one the user set up, else the shared local server of this
    ``PREFECT_HOME``, started now if none is running (flows/localserver.py)."""
    from memrestore.flows.localserver import LocalServerError, configured_api_url, ensure_server

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


_SIGNALLED: list[int] = []


def _stop_on_signal(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM: the staging threads stop at their next chunk, the main thread unwinds
    (KeyboardInterrupt), and the restore's marker keeps its phase for --resume or abort."""
    from memrestore.tasks.interrupt import request_stop

    _SIGNALLED.append(signum)
    request_stop()
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def _handle_stop_signals() -> None:
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)


def _interrupted(data_dir: Path) -> None:
    """After a signal stopped a restore: its run's Crashed state and one message say what the
    data dir holds and how to go on; exit 128 + the signal's number."""
    from memrestore.tasks.layout import read_marker
    from memrestore.tasks.orphans import mark_dead_run, what_is_left

    signum = _SIGNALLED[-1] if _SIGNALLED else signal.SIGINT
    name = signal.Signals(signum).name
    info = read_marker(data_dir)
    if info is None or info.pid != os.getpid():
        fail(f"stopped by {name} before the restore took its marker: nothing in {data_dir} was changed",
             code=128 + signum)
    mark_dead_run(data_dir, info, "interrupted")
    fail(f"stopped by {name}. {what_is_left(data_dir, info)}.", code=128 + signum)


@contextmanager
def _reporting_interrupts(data_dir: Path, is_interrupt, enabled: bool) -> Iterator[None]:
    """A restore stopped by a signal ends with :func:`_interrupted`'s report."""
    try:
        yield
    except BaseException as exc:
        if enabled and is_interrupt(exc):
            _interrupted(data_dir)
        raise


@contextmanager
def _importing_prefect() -> Iterator[None]:
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


def _run_flow(call: Coroutine[Any, Any, T]) -> T:
    """Run an async flow's call to its end in this thread, as a sync flow's call would run.

    Not ``asyncio.run``: its Ctrl-C handler only cancels the flow at its next ``await``, and a
    restore's steps block without awaiting, so a first Ctrl-C would go unheeded until the restore
    had finished. Here Ctrl-C raises KeyboardInterrupt in the step that is running, as before.
    """
    with asyncio.Runner() as runner:
        return runner.get_loop().run_until_complete(call)


def fail(message: str, code: int = 1) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def _errors_as_messages(verbose: bool) -> Iterator[None]:
    """A refusal or failure becomes one message on stderr and exit 1, never a traceback."""
    try:
        yield
    except typer.Exit:
        raise
    except RestoreError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; if a restore was running, its marker tells `--resume` or `abort` what to do")
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if verbose:
            raise
        fail(f"unexpected {type(exc).__name__}: {exc} (run again with --verbose for the traceback)")


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[None]:
    """A byte progress bar on a terminal; nothing otherwise."""
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from memrestore.tasks import progress

    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=err, transient=True) as bar:
        job = bar.add_task("restoring", total=None)

        def advance(n: int) -> None:
            bar.advance(job, n)

        def expect(total: int) -> None:
            bar.update(job, total=total)

        # The flow runs in this process, in this context: what it reports reaches the bar.
        with progress.watching(progress.Listener(on_bytes=advance, on_total=expect)):
            yield


def _when(micros: int) -> str:
    return datetime.datetime.fromtimestamp(micros / 1e6, datetime.timezone.utc).isoformat(timespec="seconds")


def _print_outcome(result: dict, as_json: bool) -> None:
    from memrestore.tasks.outcome import RestoreOutcome, human_summary

    outcome = RestoreOutcome.model_validate(result)
    for warning in outcome.warnings:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        out.print(human_summary(outcome), highlight=False, soft_wrap=True)


BackendOpt = typer.Option(..., "--backend", help="file:///abs/path, a path, or s3://bucket\\[/prefix]")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON on stdout.")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs and tracebacks.")


@app.command()
def snapshots(
    backend: str = BackendOpt,
    tenant: Optional[int] = typer.Option(None, "--tenant", min=0, help="Only this tenant's snapshots."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """List the finished snapshots in a backend, oldest first per tenant."""
    with _errors_as_messages(verbose):
        listing = list_snapshots(open_backend(backend), tenant)
    for sid, why in sorted(listing.unreadable.items()):
        err.print(f"[yellow]warning:[/] skipped {sid}: {why}", highlight=False, soft_wrap=True)
    rows = [
        {
            "tenant_id": m.tenant_id,
            "snapshot_id": m.snapshot_id,
            "created_at_unix_micros": m.created_at_unix_micros,
            "created_at": _when(m.created_at_unix_micros),
            "embedding_models": m.embedding_models,
            "checksummed": m.sqlite_checkpoint_checksum is not None
            and all(e.checksum is not None for e in m.hnsw_snapshots),
            "label": m.label,
        }
        for m in listing.snapshots
    ]
    if as_json:
        print(json.dumps({"snapshots": rows, "unreadable": listing.unreadable}, indent=2))
        return
    if not rows:
        err.print("no finished snapshots found", highlight=False)
        return
    from rich.table import Table

    table = Table("tenant", "snapshot", "created (UTC)", "models", "checksums", "label", box=None)
    for r in rows:
        table.add_row(str(r["tenant_id"]), r["snapshot_id"], r["created_at"],
                      ", ".join(r["embedding_models"]), "yes" if r["checksummed"] else "NO",
                      r["label"] or "")
    out.print(table)


def _limit_rate(value: Optional[str]) -> Optional[str]:
    if value is not None:
        try:
            parse_rate(value)
        except RateSpellingError as exc:
            raise typer.BadParameter(str(exc)) from None
    return value


StreamsOpt = typer.Option(
    DEFAULT_STREAMS, "--streams", min=1, max=MAX_STREAMS,
    help="GETs a restore keeps in flight across all its blobs (S3; large blobs in ranged parts).")
LimitRateOpt = typer.Option(
    None, "--limit-rate", callback=_limit_rate, metavar="RATE",
    help="Cap the total download rate, bytes a second: 50M, 1G, 500k (powers of 1024). Default: no cap.")


def _wire_version(value: str) -> str:
    from memrestore.backends.manifest import WireVersion

    try:
        return str(WireVersion.parse(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@app.command()
def restore(
    backend: str = BackendOpt,
    tenant: int = typer.Option(..., "--tenant", min=0, help="The tenant to restore."),
    snapshot: str = typer.Option(..., "--snapshot", help="A snapshot id, or 'latest'."),
    data_dir: Path = typer.Option(..., "--data-dir", help="The destination service's data dir."),
    mode: Mode = typer.Option(..., "--mode", help="What to do with what the data dir holds."),
    embedding_model: Optional[str] = typer.Option(
        None, "--embedding-model", help="The model the destination serves (default: the snapshot's only one)."),
    wire_version: str = typer.Option(
        "1.0", "--wire-version", callback=_wire_version, help="The destination's wire version, MAJOR.MINOR."),
    tombstone_floor: Optional[int] = typer.Option(
        None, "--tombstone-floor", min=0, help="The destination's forget horizon."),
    require_checksums: bool = typer.Option(
        False, "--require-checksums", help="Refuse a snapshot with any blob lacking a checksum."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the plan; write nothing."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted restore of this snapshot."),
    streams: int = StreamsOpt,
    limit_rate: Optional[str] = LimitRateOpt,
    check: CheckOpt = typer.Option(
        CheckOpt.quick, "--check", help="Check the staged copy before the commit: quick (SQLite quick_check "
        "and the manifest's tables), full (integrity_check), or none."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Restore a tenant's snapshot into a data dir, through the restore-snapshot flow."""
    _quiet_prefect(verbose)
    _connect_prefect()
    with _errors_as_messages(verbose):
        with _importing_prefect():
            from memrestore.flows.restore import Destination, restore_snapshot
            from memrestore.tasks.sequence import is_interrupt
            from memrestore.tasks.checks import CheckLevel
            from memrestore.tasks.plan import RestoreMode

        _handle_stop_signals()

        with _reporting_interrupts(data_dir.absolute(), is_interrupt, enabled=not dry_run), \
                _progress_bar(err.is_terminal and not as_json and not dry_run):
            result = _run_flow(restore_snapshot(
                backend=backend,
                tenant_id=tenant,
                data_dir=str(data_dir.absolute()),
                mode=RestoreMode(mode.value),
                snapshot=snapshot,
                destination=Destination(
                    wire_version=wire_version,
                    tombstone_floor=tombstone_floor,
                    embedding_model=embedding_model,
                ),
                require_checksums=require_checksums,
                dry_run=dry_run,
                resume=resume,
                streams=streams,
                limit_rate=limit_rate,
                check=CheckLevel(check.value),
            ))
        _print_outcome(result, as_json)


@app.command()
def verify(
    backend: str = BackendOpt,
    snapshot: str = typer.Option(..., "--snapshot", help="The snapshot id."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Download and hash every blob of a snapshot, writing nothing."""
    _quiet_prefect(verbose)
    _connect_prefect()
    with _errors_as_messages(verbose):
        with _importing_prefect():
            from memrestore.flows.restore import verify_snapshot

        with _progress_bar(err.is_terminal and not as_json):
            result = _run_flow(verify_snapshot(backend=backend, snapshot=snapshot))
        _print_outcome(result, as_json)


@app.command()
def abort(
    data_dir: Path = typer.Option(..., "--data-dir", help="The data dir holding an interrupted restore."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Roll back an interrupted restore: the previous contents stay or are put back."""
    _quiet_prefect(verbose)
    _connect_prefect()
    with _errors_as_messages(verbose):
        with _importing_prefect():
            from memrestore.flows.restore import abort_restore
            from memrestore.tasks.errors import NothingToAbortError

        try:
            result = _run_flow(abort_restore(data_dir=str(data_dir.absolute())))
        except NothingToAbortError as exc:
            err.print(f"{exc}; nothing to do", highlight=False, soft_wrap=True)
            return
        if as_json:
            print(json.dumps(result, indent=2))
        else:
            out.print(
                f"rolled back the interrupted restore of snapshot {result['snapshot_id']} (tenant "
                f"{result['tenant_id']}, {result['mode']}, phase {result['phase']}) in "
                f"{result['data_dir']}: its previous contents are in place and the marker is gone",
                highlight=False, soft_wrap=True,
            )


@app.command()
def demo(
    workdir: Path = typer.Option(Path(".demo"), "--workdir", help="Where the demo's backend and data dir go."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Build sample snapshots in a local folder backend and restore one through the flow."""
    _quiet_prefect(verbose)
    _connect_prefect()
    with _errors_as_messages(verbose):
        with _importing_prefect():
            from memrestore.flows.demo import run_demo

        result = _run_flow(run_demo(workdir.absolute(), log=err.print))
        _print_outcome(result, as_json)


def _cron(value: str) -> str:
    from prefect.schedules import Cron

    try:
        Cron(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


@app.command()
def serve(
    drill_cron: str = typer.Option(
        "0 3 * * *", "--drill-cron", callback=_cron, help="When the nightly drill runs: cron, in UTC."),
    backend: Optional[str] = typer.Option(
        None, "--backend", help="The drill's backend (and the on-demand form's default); no drill without it."),
    tenant: Optional[list[int]] = typer.Option(
        None, "--tenant", min=0, help="Drill only this tenant (repeatable); default: every tenant."),
    max_age_hours: Optional[float] = typer.Option(
        None, "--max-age-hours", min=0, help="A drilled tenant fails when its latest snapshot is older."),
    scratch_dir: Optional[Path] = typer.Option(
        None, "--scratch-dir", help="Where the drill restores (default: a temp dir)."),
    keep_failed: bool = typer.Option(
        False, "--keep-failed", help="Keep a failed tenant's scratch copy for inspection."),
    verbose: bool = VerboseOpt,
) -> None:
    """Serve restore-snapshot/on-demand and restore-drill/nightly to the Prefect API until stopped."""
    _quiet_prefect(verbose)  # no PREFECT_API_URL: flows.serve takes the shared local server itself
    with _errors_as_messages(verbose):
        from memrestore.flows.serve import serve as serve_deployments

        serve_deployments(
            backend=backend,
            drill_cron=drill_cron,
            tenants=tenant or None,
            max_age_hours=max_age_hours,
            scratch_dir=str(scratch_dir.absolute()) if scratch_dir else None,
            keep_failed=keep_failed,
            log=lambda line: err.print(line, highlight=False, soft_wrap=True),
        )


def _print_drill(report, as_json: bool) -> None:
    """The drill report: JSON on stdout, or a table and each failed tenant's reason."""
    from rich.table import Table

    from memrestore.tasks.drill_report import table_rows

    for sid, why in sorted(report.unreadable.items()):
        err.print(f"[yellow]warning:[/] skipped {sid}: {why}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    table = Table("tenant", "status", "snapshot", "age", "RTO", "bytes", "MB/s", "last good", box=None)
    for row in table_rows(report):
        status = "ok" if row["status"] == "ok" else "[bold red]FAILED[/]"
        table.add_row(str(row["tenant"]), status, row["snapshot"], row["age"], row["RTO"], str(row["bytes"]),
                      row["MB/s"], row["last good"])
    out.print(table)
    for r in report.failures:
        out.print(f"tenant {r.tenant_id}: {r.reason}", highlight=False, soft_wrap=True)
        for path in r.kept_copies:
            out.print(f"  kept for inspection: {path}", highlight=False, soft_wrap=True)
    for r in report.tenants:
        for lost in r.lost_runs:
            out.print(f"tenant {r.tenant_id}: a run of its drill was lost, {lost}", highlight=False, soft_wrap=True)
    out.print(f"{report.ok} ok, {report.failed} failed", highlight=False)


@app.command()
def drill(
    backend: str = BackendOpt,
    tenant: Optional[list[int]] = typer.Option(
        None, "--tenant", min=0, help="Drill this tenant (repeatable); default: every tenant in the backend."),
    max_age_hours: Optional[float] = typer.Option(
        None, "--max-age-hours", min=0, help="A tenant fails when its latest snapshot is older than this."),
    scratch_dir: Optional[Path] = typer.Option(
        None, "--scratch-dir", help="Where copies are restored, checked and deleted (default: a new temp dir)."),
    keep_failed: bool = typer.Option(
        False, "--keep-failed", help="Keep a failed tenant's restored copy in the scratch dir for inspection."),
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", min=1, help="Tenants drilled at once (default: the flow's, 4)."),
    via_deployment: Optional[str] = typer.Option(
        None, "--via-deployment", metavar="NAME",
        help="Drill each tenant as a run of deployment NAME (prefect.yaml's: drill-tenant/fleet) on its "
             "work pool's workers, as many at once as its concurrency limit allows (docs/fleet.md)."),
    child_timeout: Optional[float] = typer.Option(
        None, "--child-timeout", min=1, metavar="SECONDS",
        help="With --via-deployment: a tenant's run still going this long after a worker took it is lost."),
    streams: int = typer.Option(
        DEFAULT_STREAMS, "--streams", min=1, max=MAX_STREAMS,
        help="GETs each tenant's restore keeps in flight across all its blobs (S3)."),
    limit_rate: Optional[str] = typer.Option(
        None, "--limit-rate", callback=_limit_rate, metavar="RATE",
        help="Cap the drill's total download rate, shared by the tenants it restores at once: 50M, 1G, "
             "500k (bytes a second, powers of 1024). Default: no cap."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Restore each tenant's latest snapshot into scratch, check it, report. Exit 1 if any tenant failed."""
    _quiet_prefect(verbose)
    _connect_prefect()
    with _importing_prefect():
        from memrestore.tasks.drill import MAX_DRILL_CONCURRENCY

    if concurrency is not None and concurrency > MAX_DRILL_CONCURRENCY:
        raise typer.BadParameter(f"at most {MAX_DRILL_CONCURRENCY} tenants at once", param_hint="--concurrency")
    if via_deployment and concurrency is not None:
        raise typer.BadParameter("with --via-deployment, the deployment's concurrency limit bounds the "
                                 "tenants drilled at once (prefect.yaml)", param_hint="--concurrency")
    if child_timeout is not None and not via_deployment:
        raise typer.BadParameter("only with --via-deployment", param_hint="--child-timeout")
    with _errors_as_messages(verbose):
        with _importing_prefect():
            from memrestore.flows.drill import drill_report, restore_drill

        optional = {"concurrency": concurrency} if concurrency is not None else {}
        if via_deployment:
            optional["via_deployment"] = via_deployment
        if child_timeout is not None:
            optional["child_timeout_seconds"] = child_timeout
        if limit_rate is not None:
            optional["limit_rate"] = limit_rate
        state = restore_drill(
            streams=streams,
            backend=backend,
            tenants=tenant or None,
            max_age_hours=max_age_hours,
            scratch_dir=str(scratch_dir.absolute()) if scratch_dir else None,
            keep_failed=keep_failed,
            return_state=True,
            **optional,
        )
        report = drill_report(state)
    _print_drill(report, as_json)
    raise typer.Exit(1 if report.failed else 0)


server_app = typer.Typer(
    no_args_is_help=True,
    help="The shared local Prefect server that commands use when no PREFECT_API_URL is set up.",
)
app.add_typer(server_app, name="server")


def _server_lines(info, home: Path) -> list[str]:
    from memrestore.flows.localserver import in_use, last_used

    lines = [f"local Prefect server for PREFECT_HOME={home}: pid {info.pid}, UI {info.ui_url}, "
             f"API {info.api_url}, started {info.started_at}"]
    if in_use(home):
        lines.append("in use by a running memrestore command")
    else:
        used = last_used(home)
        idle = time.time() - used if used is not None else 0.0
        left = max(0.0, info.idle_seconds - idle)
        lines.append(f"idle for {idle:.0f} s; stops by itself in about {left:.0f} s")
    lines.append(f"log: {info.log}")
    return lines


@server_app.command("status")
def server_status(as_json: bool = JsonOpt) -> None:
    """Show the local server of this PREFECT_HOME, if one is running."""
    from memrestore.flows.localserver import configured_api_url, healthy, prefect_home, running_server

    home = prefect_home()
    info = running_server(home)
    running = info is not None
    configured = configured_api_url()
    if as_json:
        print(json.dumps({"prefect_home": str(home), "running": running,
                          "healthy": bool(running and healthy(info.api_url)),
                          "server": info.__dict__ if running else None,
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


@server_app.command("start")
def server_start() -> None:
    """Start the local server now (commands start it when they need it)."""
    from memrestore.flows.localserver import LocalServerError, ensure_server, prefect_home

    try:
        info, started = ensure_server()
    except LocalServerError as exc:
        fail(str(exc))
    out.print(("started " if started else "already running: ") + _server_lines(info, prefect_home())[0],
              highlight=False, soft_wrap=True)


@server_app.command("stop")
def server_stop(
    force: bool = typer.Option(False, "--force", help="Stop it even while a command uses it."),
) -> None:
    """Stop the local server of this PREFECT_HOME (the next command starts a new one)."""
    from memrestore.flows.localserver import LocalServerError, prefect_home, stop_server

    try:
        info = stop_server(force=force)
    except LocalServerError as exc:
        fail(str(exc))
    if info is None:
        out.print(f"no local Prefect server was running for PREFECT_HOME={prefect_home()}", highlight=False)
    else:
        out.print(f"stopped the local Prefect server (pid {info.pid}, {info.ui_url})", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
