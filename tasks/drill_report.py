"""A restore drill's report: each tenant's result, the whole report, and how people see it (the
CLI's table, the Prefect artifacts: a table and a markdown summary, under keys of the backend's
own, and the drill run's name).

The report is sorted worst first (:func:`worst_first`); sizes, rates, durations and ages are
written by tasks/units.py, as everywhere else. Built by tasks/drill.py, which drills; read by the
command line, the drill flows and the fleet.
"""

from __future__ import annotations

import datetime
import hashlib
import re
from pathlib import Path
from typing import Iterable, Literal, Mapping
from urllib.parse import unquote, urlparse

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.serializers import JSONSerializer, prefect_json_object_decoder, prefect_json_object_encoder
from pydantic import BaseModel

from memrestore.backends.errors import RestoreError
from memrestore.tasks import units
from memrestore.tasks.sample_verify import SampleReport
from memrestore.tasks.validation import ValidationResult

#: The longest backend label in a run name or an artifact key: enough for a bucket and a prefix
#: (``s3-backups-memory``), short enough that the UI's run list shows the time after it.
LABEL_CHARS = 40
#: Hex digits of the backend URL's hash in an artifact key: two backends whose labels agree
#: (``/a/backups/memory``, ``/b/backups/memory``) still get histories of their own.
KEY_HASH_CHARS = 8


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
    #: The operator's validation of the copy (tasks/validation.py), when one is set and it ran.
    validation: ValidationResult | None = None
    #: The streams its restore ran (the most at once, those at the end); None without them.
    streams_peak: int | None = None
    streams_final: int | None = None


class TenantDrillResult(BaseModel):
    """One tenant's line of the drill report (the ``--json`` output's ``tenants`` items).

    ``snapshot_id``, ``restore_seconds``, ``snapshot_age_seconds`` and ``bytes`` are about the
    snapshot tried first: the latest, unless a random pick chose another (``picked_by``);
    ``last_good_*`` about the newest one that restored and checked clean (the one tried first
    itself when it did). ``restore_seconds`` (the RTO) is the restore's wall time as the
    drill saw it, so it includes the run's own overhead and any contention with the tenants
    drilled alongside; it is None when the restore failed. ``kept_copies`` are scratch copies
    kept with ``keep_failed`` (a reason never names a copy that was deleted). ``lost_runs``
    (fleet drills only, ``flows/ops/fleet.py``) name the runs of this tenant's drill that were lost
    before one finished (their worker died, or they outlived the child timeout), each with its
    worker and what became of it: the line is the retry's. ``rpo_over_max_age`` (added) says
    whether the effective RPO, ``last_good_age_seconds``, is over the drill's maximum age.
    ``validation`` (added) is the operator's validation of the latest snapshot's copy: its
    result, seconds, output tail and what it left beside the copy; None when no validation is
    set or it did not run (the restore or the drill's own check failed first).
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
    #: True when a maximum age was set and the effective RPO (the last good snapshot's age) is
    #: over it; False when it is within it, or when there is no limit or no good snapshot, or when
    #: the drill started from a random pick (it tested no newer snapshot).
    rpo_over_max_age: bool = False
    #: How ``snapshot_id`` was chosen (tasks/drill.py's pick_first): ``latest``, or ``random within
    #: 30 d, seed 7: 3rd newest of 5``.
    picked_by: str = "latest"
    #: The age of the tenant's newest snapshot, whichever was tried: how fresh its backups are
    #: (the age limit and the trend's "keeps growing" are judged on it). None in reports from
    #: before it was added, and when the tenant has no snapshot.
    newest_age_seconds: float | None = None
    validation: ValidationResult | None = None
    #: The streams (concurrent GETs) the restore of ``snapshot_id`` ran: the most at once, and
    #: those in force at its end (a drill's tenants share its budget of streams,
    #: backends/streams.py); None when it read without them (a local folder) or did not restore.
    streams_peak: int | None = None
    streams_final: int | None = None

    @property
    def bytes_per_second(self) -> float | None:
        if not self.bytes or not self.restore_seconds:
            return None
        return self.bytes / self.restore_seconds


class DrillReport(BaseModel):
    """The whole drill: the flow's persisted result and ``memrestore drill --json``.

    ``unreadable`` names snapshots whose manifest could not be read (with why): they belong to no
    tenant the drill can tell, so they are reported here rather than failing one.
    """

    tenants: list[TenantDrillResult]
    ok: int
    failed: int
    unreadable: dict[str, str] = {}
    #: The seed of the drill's random picks (None when every tenant's latest was tried): a drill
    #: given this seed (``--seed``) draws the same snapshots again.
    seed: int | None = None
    #: The drill's sampled verify (tasks/sample_verify.py), when it ran one.
    sample: SampleReport | None = None
    #: What the trend calls out (tasks/drill_trend.py): a tenant whose RTO doubled, whose newest
    #: snapshot keeps getting older. Empty with no earlier drill to compare with.
    callouts: list[str] = []

    @property
    def failures(self) -> list[TenantDrillResult]:
        return [t for t in self.tenants if t.status == "failed"]


class TenantDrillFailed(Exception):
    """A tenant failed its drill: the data of a fleet child's Failed state, the tenant's result
    inside. Prefect's engine raises a failed run's data as its last step (and logs it in the
    run's log): this says the tenant's reason there, where a bare dict raised a TypeError. Its
    JSON (:data:`RESULT_SERIALIZER`) keeps the whole result, which the drill reads back."""

    def __init__(self, result: TenantDrillResult) -> None:
        self.result = result
        super().__init__(f"tenant {result.tenant_id} failed the drill: {result.reason}")

    def __reduce__(self):
        return TenantDrillFailed, (self.result,)


_FAILED_TENANT = "__memrestore_tenant_drill_failed__"


def result_encoder(obj: object) -> object:
    """Prefect's JSON encoder, and a failed tenant's result kept whole."""

    if isinstance(obj, TenantDrillFailed):
        return {_FAILED_TENANT: obj.result.model_dump(mode="json")}
    return prefect_json_object_encoder(obj)


def result_decoder(obj: dict) -> object:
    """Prefect's JSON decoder, and a failed tenant's result read back as :class:`TenantDrillFailed`."""

    if _FAILED_TENANT in obj:
        return TenantDrillFailed(TenantDrillResult.model_validate(obj[_FAILED_TENANT]))
    return prefect_json_object_decoder(obj)


def _result_serializer():

    return JSONSerializer(object_encoder=f"{__name__}.result_encoder", object_decoder=f"{__name__}.result_decoder")


#: The fleet child's results: JSON, a failed tenant's (:class:`TenantDrillFailed`) included.
RESULT_SERIALIZER = _result_serializer()


def worst_first(result: TenantDrillResult) -> tuple:
    """The report's order: failed tenants before the ones that passed; among each, a tenant with
    no snapshot that restores first, then the oldest effective RPO (last good snapshot's age);
    then by tenant id."""
    rpo = result.last_good_age_seconds
    return (result.status == "ok", rpo is not None, -(rpo or 0.0), result.tenant_id)


def build_report(results: Iterable[TenantDrillResult], unreadable: Mapping[str, str] | None = None,
                 seed: int | None = None) -> DrillReport:
    """The report of ``results``, sorted worst first (:func:`worst_first`)."""
    results = sorted(results, key=worst_first)
    failed = sum(r.status == "failed" for r in results)
    return DrillReport(tenants=results, ok=len(results) - failed, failed=failed, unreadable=dict(unreadable or {}),
                       seed=seed)


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


# -- names and keys: one history per backend -------------------------------------------------------


def canonical_backend_url(url: str) -> str:
    """The backend URL as the backends spell it (``file:///abs/path``, ``s3://bucket/prefix``), so
    that a bare path and its file URL, or a trailing slash, name one backend. Never raises: a URL
    the backends would refuse comes back stripped, and the drill refuses it on its own."""
    url = url.strip()
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        prefix = parsed.path.strip("/")
        return f"s3://{parsed.netloc}/{prefix}" if prefix else f"s3://{parsed.netloc}"
    if parsed.scheme == "file":
        return Path(unquote(parsed.path) or "/").absolute().as_uri()
    if url and not (parsed.scheme and len(parsed.scheme) > 1):
        return Path(url).expanduser().absolute().as_uri()
    return url


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def backend_label(url: str) -> str:
    """A short name of the backend for people: ``s3-backups-memory`` for ``s3://backups/memory``
    (the bucket and the prefix's last part), ``file-nightly-memory`` for ``/srv/nightly/memory``
    (the path's last two parts), their end when they are long; only ``a-z0-9-``."""
    parsed = urlparse(canonical_backend_url(url))
    parts = [p for p in unquote(parsed.path).split("/") if p]
    body = _slug("-".join([parsed.netloc, *parts[-1:]] if parsed.scheme == "s3" else parts[-2:]))
    if len(body) > LABEL_CHARS:  # keep the end, where the names differ, from a word's start
        body = body[-LABEL_CHARS:].split("-", 1)[-1]
    return "-".join(filter(None, [_slug(parsed.scheme) or "backend", body]))


def backend_key(url: str) -> str:
    """The backend's part of the drill's artifact keys: its label and a short hash of its
    canonical URL. The same for every drill of one backend, different between backends."""
    digest = hashlib.sha256(canonical_backend_url(url).encode()).hexdigest()[:KEY_HASH_CHARS]
    return f"{backend_label(url)}-{digest}"


def artifact_key(kind: str, backend_url: str) -> str:
    """``drill-report-<backend>``, ``drill-summary-<backend>``, ``drill-progress-<backend>``: each
    artifact's history (its versions, one per drill) is one backend's."""
    return f"drill-{kind}-{backend_key(backend_url)}"


def run_name(backend_url: str, at: float) -> str:
    """The drill run's name: ``drill-<backend label>-2026-12-07T03:00Z`` (UTC, to the minute: a
    scheduled run is named for the time it was scheduled for)."""
    when = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    return f"drill-{backend_label(backend_url)}-{when}"


# -- the report, for people ------------------------------------------------------------------------


def rpo_text(result: TenantDrillResult, max_age_hours: float | None) -> str:
    """The effective RPO, the last good snapshot's age: ``5.0 h``; ``30.0 h, over the 24 h
    limit``; ``none restores`` when no snapshot of the tenant restored clean."""
    if result.last_good_age_seconds is None:
        return "none restores"
    shown = units.age(result.last_good_age_seconds)
    if result.rpo_over_max_age and max_age_hours is not None:
        return f"{shown}, over the {max_age_hours:g} h limit"
    return shown


def _on_streams(r: TenantDrillResult) -> str:
    """``, 48 streams`` (or ``, 16-8 streams``: the most, then those at the end) after a rate read
    on streams; nothing for a local folder's."""
    if r.streams_peak is None:
        return ""
    if r.streams_final in (None, r.streams_peak):
        return f", {r.streams_peak} streams"
    return f", {r.streams_peak}-{r.streams_final} streams"


def table_rows(report: DrillReport, max_age_hours: float | None = None) -> list[dict]:
    """One row per tenant, worst first: status, the snapshot tried first (and how it was picked,
    when the drill picked at random), its age, its restore's
    duration (RTO), size and rate, the last good snapshot, the effective RPO (flagged when over
    ``max_age_hours``), the operator's validation (only when one ran: ``passed in 0.12 s``), the
    reason."""
    picked = report.seed is not None  # some snapshots were picked at random: say which, and how
    validated = any(r.validation is not None for r in report.tenants)
    return [
        {
            "tenant": r.tenant_id,
            "status": r.status,
            "snapshot": r.snapshot_id or "-",
            **({"picked by": r.picked_by} if picked else {}),
            "age": units.age(r.snapshot_age_seconds),
            "RTO": units.duration(r.restore_seconds),
            "size": units.size(r.bytes),
            "rate": units.rate(r.bytes_per_second) + _on_streams(r),
            "last good": r.last_good_snapshot_id or "none",
            "RPO": rpo_text(r, max_age_hours),
            **({"validation": r.validation.short() if r.validation else "-"} if validated else {}),
            "reason": r.reason or "",
        }
        for r in report.tenants
    ]


def summary_markdown(report: DrillReport, backend_url: str, drilled_at: float, max_age_hours: float | None) -> str:
    """The drill in a few lines, worst first, each failed tenant's reason whole (the table's
    cells show only the start of a long one)."""
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
    if report.seed is not None:
        lines.append(f"- snapshots picked at random (the table's *picked by*), seed {report.seed}: "
                     f"`--seed {report.seed}` draws the same ones again")
    lines[2:2] = [f"- **{callout}**" for callout in report.callouts]
    for r in report.failures:
        good = (
            f"last good snapshot `{r.last_good_snapshot_id}`, RPO {rpo_text(r, max_age_hours)}"
            if r.last_good_snapshot_id else "no snapshot restores"
        )
        lines.append(f"- **tenant {r.tenant_id} failed** ({good}): {r.reason}")
        lines += [f"  - kept for inspection: `{path}`" for path in r.kept_copies]
        if r.validation is not None and r.validation.status != "passed" and r.validation.output:
            lines += [f"  - the validation's output ({r.validation.short()}), its last lines:", "", "    ```",
                      *(f"    {line}" for line in r.validation.output.splitlines()), "    ```", ""]
    passed = [r for r in report.tenants if r.status == "ok"]
    if passed:
        oldest = max(r.last_good_age_seconds or 0.0 for r in passed)
        slowest = max((r.restore_seconds for r in passed if r.restore_seconds is not None), default=None)
        lines.append(f"- {len(passed)} tenant(s) passed; oldest RPO {units.age(oldest)}, "
                     f"longest RTO {units.duration(slowest)}")
    for r in report.tenants:
        if r.lost_runs:
            lines.append(f"- tenant {r.tenant_id}: {len(r.lost_runs)} run(s) of its drill were lost on the way:")
            lines += [f"  - {lost}" for lost in r.lost_runs]
    if report.sample is not None:
        first, *rest = report.sample.lines()
        lines.append(f"- {first}" if report.sample.ok else f"- **{first}**")
        lines += [f"  - {line}" for line in rest]
    for sid, why in sorted(report.unreadable.items()):
        lines.append(f"- warning: snapshot `{sid}` was skipped, its manifest is unreadable: {why}")
    return "\n".join(lines) + "\n"


def publish_report(report: DrillReport, backend_url: str, drilled_at: float, max_age_hours: float | None) -> None:
    """The report as Prefect artifacts, keyed by the backend (:func:`artifact_key`): a table (one
    row per tenant, worst first) and a markdown summary."""
    create_table_artifact(table=table_rows(report, max_age_hours), key=artifact_key("report", backend_url),
                          description=f"restore drill of {backend_url}: {report.ok} ok, {report.failed} failed")
    create_markdown_artifact(markdown=summary_markdown(report, backend_url, drilled_at, max_age_hours),
                             key=artifact_key("summary", backend_url), description=f"restore drill of {backend_url}")


@task(name="drill-report", cache_policy=NO_CACHE, persist_result=False)
def publish_report_task(report: DrillReport, backend_url: str, drilled_at: float, max_age_hours: float | None) -> None:
    """Publish the drill's table and summary artifacts."""
    publish_report(report, backend_url, drilled_at, max_age_hours)
