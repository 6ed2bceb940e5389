"""The ``drill`` command: every tenant's latest snapshot restored into scratch, checked and
reported (the restore-drill flow, flows/drill.py), and the report printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memrestore.flows.cli.common import (
    BackendOpt,
    JsonOpt,
    LimitRateOpt,
    MaxStreamsOpt,
    StreamsOpt,
    VerboseOpt,
    errors_as_messages,
    out,
    warn,
)
from memrestore.flows.cli.run_flow import connect_prefect, importing_prefect, quiet_prefect


def _print_drill(report, as_json: bool, max_age_hours: Optional[float] = None) -> None:
    """The drill report, worst first: JSON on stdout, or a table (sizes, rates, durations and ages
    in tasks/units.py's units) and each failed tenant's whole reason."""
    from rich.table import Table

    from memrestore.tasks.drill_report import table_rows

    for sid, why in sorted(report.unreadable.items()):
        warn(f"skipped {sid}: {why}")
    if as_json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
        return
    columns = ("tenant", "status", "snapshot", "age", "RTO", "size", "rate", "last good", "RPO")
    table = Table(*columns, box=None)
    for r, row in zip(report.tenants, table_rows(report, max_age_hours)):
        status = "ok" if r.status == "ok" else "[bold red]FAILED[/]"
        rpo = f"[bold red]{row['RPO']}[/]" if r.rpo_over_max_age or r.last_good_snapshot_id is None else row["RPO"]
        table.add_row(str(r.tenant_id), status, *(row[c] for c in columns[2:-1]), rpo)
    out.print(table, highlight=False)
    for r in report.failures:
        out.print(f"tenant {r.tenant_id}: {r.reason}", highlight=False, soft_wrap=True, markup=False)
        for path in r.kept_copies:
            out.print(f"  kept for inspection: {path}", highlight=False, soft_wrap=True, markup=False)
    for r in report.tenants:
        for lost in r.lost_runs:
            out.print(f"tenant {r.tenant_id}: a run of its drill was lost, {lost}", highlight=False, soft_wrap=True,
                      markup=False)
    out.print(f"{report.ok} ok, {report.failed} failed", highlight=False)


# The drill's options that ``serve`` takes too, for the nightly drill it schedules.
TenantsOpt = typer.Option(
    None, "--tenant", min=0, help="Drill this tenant (repeatable); default: every tenant in the backend.")
MaxAgeOpt = typer.Option(
    None, "--max-age-hours", min=0, help="A tenant fails when its latest snapshot is older than this.")
ScratchDirOpt = typer.Option(
    None, "--scratch-dir", help="Where copies are restored, checked and deleted (default: a new temp dir).")
KeepFailedOpt = typer.Option(
    False, "--keep-failed", help="Keep a failed tenant's restored copy in the scratch dir for inspection.")


def drill_parameters(tenant: Optional[list[int]], max_age_hours: Optional[float], scratch_dir: Optional[Path],
                     keep_failed: bool) -> dict:
    """Those options as the restore-drill flow's parameters."""
    return {
        "tenants": tenant or None,
        "max_age_hours": max_age_hours,
        "scratch_dir": str(scratch_dir.absolute()) if scratch_dir else None,
        "keep_failed": keep_failed,
    }


def drill(
    backend: str = BackendOpt,
    tenant: Optional[list[int]] = TenantsOpt,
    max_age_hours: Optional[float] = MaxAgeOpt,
    scratch_dir: Optional[Path] = ScratchDirOpt,
    keep_failed: bool = KeepFailedOpt,
    concurrency: Optional[int] = typer.Option(
        None, "--concurrency", min=1, help="Tenants drilled at once (default: the flow's, 4)."),
    via_deployment: Optional[str] = typer.Option(
        None, "--via-deployment", metavar="NAME",
        help="Drill each tenant as a run of deployment NAME (prefect.yaml's: drill-tenant/fleet) on its "
             "work pool's workers, as many at once as its concurrency limit allows (docs/fleet.md)."),
    child_timeout: Optional[float] = typer.Option(
        None, "--child-timeout", min=1, metavar="SECONDS",
        help="With --via-deployment: a tenant's run still going this long after a worker took it is lost."),
    streams: Optional[int] = StreamsOpt,
    max_streams: int = MaxStreamsOpt,
    limit_rate: Optional[str] = LimitRateOpt,
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Restore each tenant's latest snapshot into scratch, check it, report. Exit 1 if any tenant failed."""
    quiet_prefect(verbose)
    connect_prefect()
    with importing_prefect():
        from memrestore.tasks.drill import MAX_DRILL_CONCURRENCY

    # Usage errors (exit 2), so checked before errors_as_messages would make them a failure.
    if concurrency is not None and concurrency > MAX_DRILL_CONCURRENCY:
        raise typer.BadParameter(f"at most {MAX_DRILL_CONCURRENCY} tenants at once", param_hint="--concurrency")
    if via_deployment and concurrency is not None:
        raise typer.BadParameter("with --via-deployment, the deployment's concurrency limit bounds the "
                                 "tenants drilled at once (prefect.yaml)", param_hint="--concurrency")
    if child_timeout is not None and not via_deployment:
        raise typer.BadParameter("only with --via-deployment", param_hint="--child-timeout")
    with errors_as_messages(verbose):
        with importing_prefect():
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
            max_streams=max_streams,
            backend=backend,
            **drill_parameters(tenant, max_age_hours, scratch_dir, keep_failed),
            return_state=True,
            **optional,
        )
        report = drill_report(state)
    _print_drill(report, as_json, max_age_hours)
    raise typer.Exit(1 if report.failed else 0)
