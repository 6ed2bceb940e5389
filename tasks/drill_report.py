"""A restore drill's report: each tenant's result, the whole report, and how people see it (the
CLI's table, the Prefect artifacts: a table and a markdown summary).

Built by tasks/drill.py, which drills; read by the command line, the drill flows and the fleet.
"""

from __future__ import annotations

import datetime
from typing import Iterable, Literal, Mapping

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from memrestore.backends.errors import RestoreError

SECONDS_PER_HOUR = 3600
BYTES_PER_MB = 1_000_000


def hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / SECONDS_PER_HOUR:.1f} h"


# -- results ------------------------------------------------------------------------------------


class AttemptResult(BaseModel):
    """One snapshot restored into scratch and checked."""

    snapshot_id: str
    scratch: str
    restored: bool
    ok: bool
    reason: str | None = None
    restore_seconds: float | None = None
    bytes: int | None = None


class TenantDrillResult(BaseModel):
    """One tenant's line of the drill report (the ``--json`` output's ``tenants`` items).

    ``snapshot_id``, ``restore_seconds``, ``snapshot_age_seconds`` and ``bytes`` are about the
    latest snapshot; ``last_good_*`` about the newest one that restored and checked clean (the
    latest itself when it did). ``restore_seconds`` (the RTO) is the restore's wall time as the
    drill saw it, so it includes the run's own overhead and any contention with the tenants
    drilled alongside; it is None when the restore failed. ``kept_copies`` are scratch copies
    kept with ``keep_failed``. ``lost_runs`` (fleet drills only, ``flows/fleet.py``) name the runs of
    this tenant's drill that were lost before one finished (their worker died, or they outlived
    the child timeout), each with its worker and what became of it: the line is the retry's.
    """

    tenant_id: int
    snapshot_id: str | None
    status: Literal["ok", "failed"]
    reason: str | None = None
    restore_seconds: float | None = None
    snapshot_age_seconds: float | None = None
    bytes: int | None = None
    last_good_snapshot_id: str | None = None
    last_good_age_seconds: float | None = None
    kept_copies: list[str] = []
    lost_runs: list[str] = []

    @property
    def mb_per_second(self) -> float | None:
        if not self.bytes or not self.restore_seconds:
            return None
        return self.bytes / BYTES_PER_MB / self.restore_seconds


class DrillReport(BaseModel):
    """The whole drill: the flow's persisted result and ``memrestore drill --json``.

    ``unreadable`` names snapshots whose manifest could not be read (with why): they belong to no
    tenant the drill can tell, so they are reported here rather than failing one.
    """

    tenants: list[TenantDrillResult]
    ok: int
    failed: int
    unreadable: dict[str, str] = {}

    @property
    def failures(self) -> list[TenantDrillResult]:
        return [t for t in self.tenants if t.status == "failed"]


def build_report(results: Iterable[TenantDrillResult], unreadable: Mapping[str, str] | None = None) -> DrillReport:
    results = list(results)
    failed = sum(r.status == "failed" for r in results)
    return DrillReport(tenants=results, ok=len(results) - failed, failed=failed, unreadable=dict(unreadable or {}))


def no_snapshot_result(tenant_id: int, backend_url: str, unreadable: int = 0) -> TenantDrillResult:
    """A named tenant with nothing to restore fails the drill."""
    skipped = (
        f" ({unreadable} snapshot(s) with an unreadable manifest were skipped; one may be this tenant's)"
        if unreadable else ""
    )
    return TenantDrillResult(
        tenant_id=tenant_id,
        snapshot_id=None,
        status="failed",
        reason=(
            f"backend {backend_url} holds no finished snapshot of tenant {tenant_id}{skipped}: check "
            f"the tenant id, and that this tenant's backups run (`memrestore snapshots --backend {backend_url} "
            f"--tenant {tenant_id}`)."
        ),
    )


def crashed_result(tenant_id: int, exc: BaseException) -> TenantDrillResult:
    """The drill of one tenant stopped on an error of its own (not a failed restore or check)."""
    return TenantDrillResult(
        tenant_id=tenant_id,
        snapshot_id=None,
        status="failed",
        reason=f"the drill of tenant {tenant_id} stopped: {describe_failure(exc)}",
    )


def describe_failure(exc: BaseException) -> str:
    """Our errors already say what happened and what to do; anything else gets its type named."""
    if isinstance(exc, RestoreError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


# -- the report, for people ------------------------------------------------------------------------


def _mb_per_second(result: TenantDrillResult) -> str:
    rate = result.mb_per_second
    return "-" if rate is None else f"{rate:.3g}"


def table_rows(report: DrillReport) -> list[dict]:
    """One row per tenant: status, snapshot, age, RTO, bytes, MB/s, last good, reason."""
    return [
        {
            "tenant": r.tenant_id,
            "status": r.status,
            "snapshot": r.snapshot_id or "-",
            "age": hours(r.snapshot_age_seconds),
            "RTO": "-" if r.restore_seconds is None else f"{r.restore_seconds:.2f} s",
            "bytes": "-" if r.bytes is None else r.bytes,
            "MB/s": _mb_per_second(r),
            "last good": (
                f"{r.last_good_snapshot_id} ({hours(r.last_good_age_seconds)})" if r.last_good_snapshot_id else "none"
            ),
            "reason": r.reason or "",
        }
        for r in report.tenants
    ]


def summary_markdown(report: DrillReport, backend_url: str, drilled_at: float, max_age_hours: float | None) -> str:
    total = len(report.tenants)
    verdict = f"all {total} tenants passed" if not report.failed else f"{report.failed} of {total} tenants failed"
    when = datetime.datetime.fromtimestamp(drilled_at, datetime.timezone.utc).isoformat(timespec="seconds")
    limit = f"{max_age_hours:g} h" if max_age_hours is not None else "none"
    lines = [
        f"## Restore drill: {verdict}",
        "",
        f"- backend: `{backend_url}`",
        f"- drilled at {when}; maximum snapshot age: {limit}",
    ]
    for r in report.failures:
        good = (
            f"last good snapshot `{r.last_good_snapshot_id}`, {hours(r.last_good_age_seconds)} old"
            if r.last_good_snapshot_id else "no restorable snapshot"
        )
        lines.append(f"- **tenant {r.tenant_id} failed** ({good}): {r.reason}")
        lines += [f"  - kept for inspection: `{path}`" for path in r.kept_copies]
    for r in report.tenants:
        if r.lost_runs:
            lines.append(f"- tenant {r.tenant_id}: {len(r.lost_runs)} run(s) of its drill were lost on the way:")
            lines += [f"  - {lost}" for lost in r.lost_runs]
    for sid, why in sorted(report.unreadable.items()):
        lines.append(f"- warning: snapshot `{sid}` was skipped, its manifest is unreadable: {why}")
    return "\n".join(lines) + "\n"


def publish_report(report: DrillReport, backend_url: str, drilled_at: float, max_age_hours: float | None) -> None:
    """The report as Prefect artifacts: a table (one row per tenant) and a markdown summary."""
    create_table_artifact(table=table_rows(report), key="drill-report",
                          description=f"restore drill of {backend_url}: {report.ok} ok, {report.failed} failed")
    create_markdown_artifact(markdown=summary_markdown(report, backend_url, drilled_at, max_age_hours),
                             key="drill-summary", description=f"restore drill of {backend_url}")


@task(name="drill-report", cache_policy=NO_CACHE, persist_result=False)
def publish_report_task(report: DrillReport, backend_url: str, drilled_at: float, max_age_hours: float | None) -> None:
    """Publish the drill's table and summary artifacts."""
    publish_report(report, backend_url, drilled_at, max_age_hours)
