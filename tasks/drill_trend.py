"""A drill against the drills before it: per tenant, the RTO and the snapshot age over the last
nights, and what an SRE must look at first (a tenant whose RTO doubled, one whose newest snapshot
keeps getting older).

No side database: each drill publishes its numbers as a table artifact of its own,
``drill-metrics-<backend>`` (one row per tenant: seconds and bytes as numbers, beside the words of
``drill-report``), and Prefect keeps every version of a keyed artifact. The next drill reads the
versions published by earlier runs of the same deployment (a drill run with no deployment: of
runs with none) through the Prefect API (:func:`read_history`), compares (:func:`callouts`), and
publishes ``drill-trend-<backend>``: the call-outs first, a chart of RTO per tenant over the
nights (an SVG drawn by pygal, inline as a data URI: Prefect's UI renders a markdown image, not
inline ``<svg>``), then a table with the nights as sparklines.

The rules, with their numbers beside them:

- **RTO doubled**: tonight's restore took at least :data:`RTO_RATIO` times the median of the
  tenant's earlier nights (up to :data:`TREND_NIGHTS` of them), and :data:`RTO_FLOOR_SECONDS` more.
- **Snapshot age keeps growing**: over the last :data:`AGE_GROWING_DRILLS` drills (tonight's
  included), the tenant's newest snapshot got older between each two by at least half the time
  between them: no new backup arrived, or they arrive ever later.
"""

from __future__ import annotations

import base64
import datetime
import json
import statistics
from typing import Iterable, Sequence
from uuid import UUID

import pygal
from prefect import get_client
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterDeploymentId
from prefect.client.schemas.sorting import ArtifactSort
from pydantic import BaseModel
from pygal.style import DefaultStyle

from memrestore.tasks import units
from memrestore.tasks.drill_report import DrillReport, artifact_key

#: Earlier drills a drill is compared with (and drawn beside it).
TREND_NIGHTS = 7
#: How many times its usual RTO a tenant's restore must take to be called out...
RTO_RATIO = 2.0
#: ...and by how much more at least: a small restore's time is mostly the run's own overhead,
#: which varies by more than itself from night to night.
RTO_FLOOR_SECONDS = 0.5
#: Drills in a row (tonight's included) over which a growing age is called out: two would call
#: out every night a backup is a little late.
AGE_GROWING_DRILLS = 3
#: Tenants drawn on the chart: those called out first, then the slowest. More lines than this
#: are a tangle; the table below it has every tenant.
CHART_TENANTS = 8
#: Tenants in the trend's table: those called out first, then the slowest. A fleet's every tenant
#: would make a page nobody reads (and an artifact of megabytes); drill-metrics has them all.
TABLE_TENANTS = 50
SPARKS = "▁▂▃▄▅▆▇█"


class TenantNight(BaseModel):
    """One tenant's numbers in one drill (a row of ``drill-metrics``)."""

    tenant: int
    status: str
    snapshot: str | None = None
    picked_by: str = "latest"
    rto_seconds: float | None = None
    newest_age_seconds: float | None = None
    rpo_seconds: float | None = None
    bytes: int | None = None


class Night(BaseModel):
    """One drill's numbers: when, and each tenant's."""

    drilled_at: float
    tenants: dict[int, TenantNight]


def _iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.timezone.utc).isoformat(timespec="milliseconds")


def metrics_rows(report: DrillReport, drilled_at: float) -> list[dict]:
    """The drill's numbers, one row per tenant: what the next drills compare with."""
    when = _iso(drilled_at)
    return [
        {
            "tenant": r.tenant_id,
            "status": r.status,
            "snapshot": r.snapshot_id,
            "picked_by": r.picked_by,
            "rto_seconds": r.restore_seconds,
            "newest_age_seconds": r.newest_age_seconds if r.newest_age_seconds is not None else r.snapshot_age_seconds,
            "rpo_seconds": r.last_good_age_seconds,
            "bytes": r.bytes,
            "drilled_at": when,
        }
        for r in report.tenants
    ]


def night_of(rows: Sequence[dict]) -> Night | None:
    """A ``drill-metrics`` version read back; None when it holds no row (or is not ours)."""
    tenants: dict[int, TenantNight] = {}
    drilled_at = None
    for row in rows:
        try:
            tenants[int(row["tenant"])] = TenantNight.model_validate(row)
            drilled_at = datetime.datetime.fromisoformat(row["drilled_at"]).timestamp()
        except (KeyError, TypeError, ValueError):
            continue
    return Night(drilled_at=drilled_at, tenants=tenants) if tenants and drilled_at is not None else None


def read_history(backend_url: str, deployment_id: UUID | None, this_run: UUID | None,
                 nights: int = TREND_NIGHTS) -> list[Night]:
    """The numbers of up to ``nights`` earlier drills of ``backend_url`` by the same deployment
    (``deployment_id``; None: drills run with no deployment), oldest first, from the versions of
    their ``drill-metrics`` artifact in the Prefect API. ``this_run``'s own is left out."""
    same = (FlowRunFilterDeploymentId(any_=[deployment_id]) if deployment_id is not None
            else FlowRunFilterDeploymentId(is_null_=True))
    with get_client(sync_client=True) as client:
        versions = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("metrics", backend_url)])),
            flow_run_filter=FlowRunFilter(deployment_id=same),
            sort=ArtifactSort.CREATED_DESC,
            limit=nights + 1,
        )
    history = []
    for version in versions:
        if this_run is not None and version.flow_run_id == this_run:
            continue
        data = json.loads(version.data) if isinstance(version.data, str) else version.data
        night = night_of(data if isinstance(data, list) else [])
        if night is not None:
            history.append(night)
    return sorted(history, key=lambda n: n.drilled_at)[-nights:]


# -- what to call out ----------------------------------------------------------------------------


def rto_callout(tenant: int, tonight: Night, history: Sequence[Night]) -> str | None:
    """``tenant``'s RTO tonight against its median over ``history``, when it doubled."""
    now = tonight.tenants.get(tenant)
    before = [n.tenants[tenant].rto_seconds for n in history
              if tenant in n.tenants and n.tenants[tenant].rto_seconds is not None]
    if now is None or now.rto_seconds is None or not before:
        return None
    usual = statistics.median(before)
    if now.rto_seconds < RTO_RATIO * usual or now.rto_seconds - usual < RTO_FLOOR_SECONDS:
        return None
    times = f"{now.rto_seconds / usual:.1f}x" if usual > 0 else "far above"
    size = f", {units.size(now.bytes)}" if now.bytes is not None else ""
    return (f"tenant {tenant}: RTO {units.duration(now.rto_seconds)}, {times} its median of the "
            f"{len(before)} drill(s) before ({units.duration(usual)}); snapshot {now.snapshot}{size}")


def age_callout(tenant: int, tonight: Night, history: Sequence[Night]) -> str | None:
    """``tenant``'s newest snapshot age, when it grew over the last drills (module docstring)."""
    nights = [n for n in [*history, tonight] if tenant in n.tenants
              and n.tenants[tenant].newest_age_seconds is not None][-AGE_GROWING_DRILLS:]
    if len(nights) < AGE_GROWING_DRILLS or nights[-1] is not tonight:
        return None
    ages = [n.tenants[tenant].newest_age_seconds for n in nights]
    for (a, b), (t0, t1) in zip(zip(ages, ages[1:]), zip(nights, nights[1:])):
        elapsed = t1.drilled_at - t0.drilled_at
        if elapsed <= 0 or b - a < elapsed / 2:
            return None
    return (f"tenant {tenant}: newest snapshot keeps getting older ({', '.join(units.age(a) for a in ages)} "
            f"at the last {len(ages)} drills): no newer backup arrived; check that its backups are still being taken")


def callouts(tonight: Night, history: Sequence[Night]) -> list[str]:
    """Every call-out of tonight against ``history``, RTOs first, by tenant."""
    tenants = sorted(tonight.tenants)
    found = [rto_callout(t, tonight, history) for t in tenants]
    found += [age_callout(t, tonight, history) for t in tenants]
    return [c for c in found if c]


# -- for people ----------------------------------------------------------------------------------


def sparkline(values: Iterable[float | None]) -> str:
    """``▁▃█``: each value's bar as high as the value against the highest (from zero, so that
    a few hundredths of a second of noise do not look like a jump); ``·`` for a night with none."""
    values = list(values)
    high = max((v for v in values if v is not None), default=None)
    if high is None:
        return ""

    def spark(v: float | None) -> str:
        if v is None:
            return "·"
        return SPARKS[0] if high <= 0 else SPARKS[round(max(v, 0.0) / high * (len(SPARKS) - 1))]

    return "".join(spark(v) for v in values)


def _series(tenant: int, nights: Sequence[Night], field: str) -> list[float | None]:
    return [getattr(n.tenants[tenant], field) if tenant in n.tenants else None for n in nights]


def chart_svg(nights: Sequence[Night], tenants: Sequence[int]) -> bytes:
    """RTO per tenant (seconds) over ``nights``, one line each, as an SVG drawn by pygal."""
    chart = pygal.Line(
        width=760, height=300, js=[], style=DefaultStyle, legend_at_bottom=True, truncate_legend=-1,
        x_label_rotation=20, show_minor_x_labels=True, dots_size=3, title="RTO per tenant (seconds)",
    )
    chart.x_labels = _labels([n.drilled_at for n in nights])
    for tenant in tenants:
        chart.add(f"tenant {tenant}", _series(tenant, nights, "rto_seconds"))
    return chart.render()


def _labels(times: Sequence[float]) -> list[str]:
    """The drills' times on the chart's axis, UTC: ``12-07 03:00``, to the second when two drills
    share a minute."""
    def at(spec: str) -> list[str]:
        return [datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(spec) for t in times]

    minutes = at("%m-%d %H:%M")
    return minutes if len(set(minutes)) == len(minutes) else at("%m-%d %H:%M:%S")


def worst_tenants(tonight: Night, found: Sequence[str], count: int) -> list[int]:
    """Up to ``count`` tenants: those called out (by id), then the slowest tonight."""
    named = [t for t in sorted(tonight.tenants) if any(c.startswith(f"tenant {t}:") for c in found)]
    slowest = sorted(tonight.tenants, key=lambda t: (-(tonight.tenants[t].rto_seconds or 0.0), t))
    return list(dict.fromkeys([*named, *slowest]))[:count]


def trend_markdown(backend_url: str, tonight: Night, history: Sequence[Night], found: Sequence[str]) -> str:
    """The trend artifact: the call-outs at the top, the chart, then a row per tenant (those called
    out, then the slowest: :data:`TABLE_TENANTS`) with its RTO and newest snapshot age tonight and
    as sparklines over the nights."""
    nights = [*history, tonight]
    head = (f"## Restore drill trend: {len(found)} call-out(s)" if found
            else "## Restore drill trend: nothing to call out")
    lines = [head, ""]
    lines += [f"- **{c}**" for c in found]
    if not history:
        lines.append("- the first drill of this deployment and backend: nothing to compare with yet")
    lines += ["", f"`{backend_url}`: this drill and the {len(history)} before it "
                  f"(from {_iso(nights[0].drilled_at)}; at most {TREND_NIGHTS} before), oldest first.", ""]
    if history:
        svg = base64.b64encode(chart_svg(nights, worst_tenants(tonight, found, CHART_TENANTS))).decode()
        lines += [f"![RTO per tenant over the last {len(nights)} drills](data:image/svg+xml;base64,{svg})", ""]
    lines += ["| tenant | RTO | RTO over the drills | median before | newest snapshot age | age over the drills |"
              " RPO | picked by |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    shown = worst_tenants(tonight, found, TABLE_TENANTS)
    for tenant in shown:
        now = tonight.tenants[tenant]
        rtos = _series(tenant, nights, "rto_seconds")
        before = [v for v in rtos[:-1] if v is not None]
        lines.append(
            f"| {tenant} | {units.duration(now.rto_seconds)} | {sparkline(rtos)} | "
            f"{units.duration(statistics.median(before)) if before else '-'} | {units.age(now.newest_age_seconds)} | "
            f"{sparkline(_series(tenant, nights, 'newest_age_seconds'))} | {units.age(now.rpo_seconds)} | "
            f"{now.picked_by} |")
    if len(shown) < len(tonight.tenants):
        lines += ["", f"{len(shown)} of {len(tonight.tenants)} tenants shown (called out, then the slowest); "
                      "every tenant's numbers are in the drill-metrics artifact."]
    return "\n".join(lines) + "\n"


def publish_trend(report: DrillReport, backend_url: str, drilled_at: float, deployment_id: UUID | None,
                  this_run: UUID | None) -> list[str]:
    """Compare the drill with the earlier ones, publish ``drill-trend`` and this drill's
    ``drill-metrics``; return the call-outs."""
    history = read_history(backend_url, deployment_id, this_run)
    rows = metrics_rows(report, drilled_at)
    tonight = night_of(rows) or Night(drilled_at=drilled_at, tenants={})
    found = callouts(tonight, history)
    create_table_artifact(table=rows, key=artifact_key("metrics", backend_url),
                          description=f"restore drill of {backend_url}: each tenant's numbers, for the trend")
    create_markdown_artifact(markdown=trend_markdown(backend_url, tonight, history, found),
                             key=artifact_key("trend", backend_url),
                             description=f"restore drill of {backend_url} against the {len(history)} before it")
    return found
