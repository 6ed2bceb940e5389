"""The ``sample-verify`` command: tonight's share of every stored blob hashed against its manifest,
without restoring (the sample-verify flow, flows/sample_verify.py), and what failed printed."""

from __future__ import annotations

import json
from typing import Optional

import typer

from memrestore.flows.cli.common import (BackendOpt, JsonOpt, LimitRateOpt, VerboseOpt, err, errors_as_messages, out,
                                         share_spelling)
from memrestore.flows.cli.run_flow import connect_prefect, importing_prefect, quiet_prefect


def sample_verify(
    backend: str = BackendOpt,
    sample: str = typer.Option(
        ..., "--sample", metavar="SHARE", callback=share_spelling,
        help="How much to read: a percent of the stored bytes (5%) or a byte count (10G, 500M)."),
    tenant: Optional[list[int]] = typer.Option(
        None, "--tenant", min=0, help="This tenant's snapshots (repeatable); default: every tenant."),
    night: Optional[int] = typer.Option(
        None, "--night", min=0,
        help="Which night's slice: 0, 1, 2, ... Default: tonight's (UTC days since 1970), so that "
             "ceil(100 / percent) nights in a row read every blob."),
    limit_rate: Optional[str] = LimitRateOpt,
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Hash a share of the blobs of every retained snapshot against their manifests, writing nothing.
    Exit 1 if any blob failed (each named with its snapshots and key)."""
    quiet_prefect(verbose)
    connect_prefect()
    with errors_as_messages(verbose):
        with importing_prefect():
            from memrestore.flows.sample_verify import sample_verify as sample_verify_flow
            from memrestore.tasks.sample_verify import SampleReport

        optional = {"limit_rate": limit_rate} if limit_rate is not None else {}
        state = sample_verify_flow(backend=backend, sample=sample, tenants=tenant or None, night=night,
                                   return_state=True, **optional)
        result = state.result(raise_on_failure=False)
        if isinstance(result, BaseException):
            raise result
        report = SampleReport.model_validate(result)
    if as_json:
        print(json.dumps(report.model_dump(mode="json"), indent=2))
    else:
        first, *rest = report.lines()
        out.print(first, highlight=False, soft_wrap=True, markup=False)
        for line in rest:
            (err if line.startswith("tenant ") else out).print(line, highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(1 if report.failed else 0)
