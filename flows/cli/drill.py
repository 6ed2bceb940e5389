"""The ``drill`` command: every tenant's latest snapshot (or one picked at random within a window)
restored into scratch, checked and reported (the restore-drill flow, flows/drill.py), and the
report printed: the trend's call-outs first, the sampled verify's lines last."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer

from memrestore.flows.cli.common import (
    BackendOpt,
    JsonOpt,
    LimitRateOpt,
    MaxStreamsOpt,
    StreamsOpt,
    ValidateCallableOpt,
    ValidateCommandOpt,
    ValidateTimeoutOpt,
    VerboseOpt,
    errors_as_messages,
    out,
    share_spelling,
    validation_of,
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
    for callout in report.callouts:
        out.print(f"[bold yellow]trend:[/] {callout}", highlight=False, soft_wrap=True)
    picked = ("picked by",) if report.seed is not None else ()
    validated = any(r.validation is not None for r in report.tenants)
    columns = ("tenant", "status", "snapshot", *picked, "age", "RTO", "size", "rate", "last good", "RPO") + (
        ("validation",) if validated else ())
    table = Table(*columns, box=None)
    for r, row in zip(report.tenants, table_rows(report, max_age_hours)):
        status = "ok" if r.status == "ok" else "[bold red]FAILED[/]"
        rpo = f"[bold red]{row['RPO']}[/]" if r.rpo_over_max_age or r.last_good_snapshot_id is None else row["RPO"]
        cells = [str(r.tenant_id), status, *(row[c] for c in columns[2:8]), rpo]
        if validated:
            cells.append(row["validation"] if r.validation is None or r.validation.status == "passed"
                         else f"[bold red]{row['validation']}[/]")
        table.add_row(*cells)
    out.print(table, highlight=False)
    for r in report.failures:
        out.print(f"tenant {r.tenant_id}: {r.reason}", highlight=False, soft_wrap=True, markup=False)
        for path in r.kept_copies:
            out.print(f"  kept for inspection: {path}", highlight=False, soft_wrap=True, markup=False)
        if r.validation is not None and r.validation.status != "passed" and r.validation.output:
            out.print(f"  the validation's output ({r.validation.short()}), its last lines:", highlight=False,
                      soft_wrap=True, markup=False)
            for line in r.validation.output.splitlines():
                out.print(f"    {line}", highlight=False, soft_wrap=True, markup=False)
    for r in report.tenants:
        for lost in r.lost_runs:
            out.print(f"tenant {r.tenant_id}: a run of its drill was lost, {lost}", highlight=False, soft_wrap=True,
                      markup=False)
    if report.seed is not None:
        out.print(f"snapshots picked at random with seed {report.seed} (--seed {report.seed} draws the same again)",
                  highlight=False)
    if report.sample is not None:
        for line in report.sample.lines():
            out.print(f"{line}", highlight=False, soft_wrap=True, markup=False)
    out.print(f"{report.ok} ok, {report.failed} failed", highlight=False)


# The drill's options that ``serve`` takes too, for the nightly drill it schedules (the pick's
# and the sample's below as well).
TenantsOpt = typer.Option(
    None, "--tenant", min=0, help="Drill this tenant (repeatable); default: every tenant in the backend.")
MaxAgeOpt = typer.Option(
    None, "--max-age-hours", min=0, help="A tenant fails when its latest snapshot is older than this.")
ScratchDirOpt = typer.Option(
    None, "--scratch-dir", help="Where copies are restored, checked and deleted (default: a new temp dir).")
KeepFailedOpt = typer.Option(
    False, "--keep-failed", help="Keep a failed tenant's restored copy in the scratch dir for inspection.")
PickOpt = typer.Option(
    "latest", "--pick", metavar="latest|random-within-window",
    help="Which snapshot of each tenant to restore: the latest, or one drawn at random among those of the "
         "last --window (over nights, every generation kept gets restored). The walk back goes on from it.")
WindowOpt = typer.Option(
    None, "--window", metavar="DAYS",
    help="With --pick random-within-window: how far back to draw from: 30d (the default), 12h, or days.")
SeedOpt = typer.Option(
    None, "--seed", min=0, help="With --pick random-within-window: the draw's seed (the report gives each "
                                "drill's); the same seed draws the same snapshots. Default: a fresh one.")
SampleOpt = typer.Option(
    None, "--sample", metavar="SHARE", callback=share_spelling,
    help="Also hash this share of every stored blob of the tenants (older snapshots too) against the "
         "manifests, without restoring: 5% of the bytes or 10G; a different slice each night.")

_WINDOW = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([dh]?)\s*$")


def window_days(text: Optional[str]) -> Optional[float]:
    """``30d``, ``12h`` or a plain number of days, as days; a usage error otherwise."""
    if text is None:
        return None
    match = _WINDOW.match(text)
    days = float(match.group(1)) / (24 if match.group(2) == "h" else 1) if match else 0.0
    if not match or not 0 < days <= 365:
        raise typer.BadParameter(f"{text!r}: give a window of more than 0 and at most 365 days: 30d, 12h or 7",
                                 param_hint="--window")
    return days


def pick_parameters(pick: str, window: Optional[str], seed: Optional[int], sample: Optional[str]) -> dict:
    """The pick, window, seed and sample options as the restore-drill flow's parameters (usage
    errors, exit 2, for what cannot work)."""
    picks = ("latest", "random-within-window")
    if pick not in picks:
        raise typer.BadParameter(f"{pick!r} is not one of {', '.join(picks)}", param_hint="--pick")
    if pick == "latest" and (window is not None or seed is not None):
        raise typer.BadParameter("only with --pick random-within-window",
                                 param_hint="--window" if window is not None else "--seed")
    parameters: dict = {} if pick == "latest" else {"pick": pick}  # latest: the flow's default
    if window is not None:
        parameters["window_days"] = window_days(window)
    if seed is not None:
        parameters["seed"] = seed
    if sample is not None:  # spelled right: the option's callback (share_spelling) saw to it
        parameters["sample"] = sample
    return parameters


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
    pick: str = PickOpt,
    window: Optional[str] = WindowOpt,
    seed: Optional[int] = SeedOpt,
    sample: Optional[str] = SampleOpt,
    validate_command: Optional[str] = ValidateCommandOpt,
    validate_callable: Optional[str] = ValidateCallableOpt,
    validate_timeout: Optional[float] = ValidateTimeoutOpt,
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Restore each tenant's latest (or picked) snapshot into scratch, check it, report.
    Exit 1 if a tenant (or a sampled blob) failed."""
    picking = pick_parameters(pick, window, seed, sample)  # usage errors, before Prefect starts
    validation = validation_of(validate_command, validate_callable, validate_timeout)
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
        if validation.active:
            optional["validation"] = validation
        state = restore_drill(
            streams=streams,
            max_streams=max_streams,
            backend=backend,
            **drill_parameters(tenant, max_age_hours, scratch_dir, keep_failed),
            return_state=True,
            **optional,
            **picking,
        )
        report = drill_report(state)
    _print_drill(report, as_json, max_age_hours)
    raise typer.Exit(1 if report.failed or (report.sample is not None and report.sample.failed) else 0)
