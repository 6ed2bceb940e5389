"""The outcome of a restore: what was restored where, verified or not, how many bytes, how long;
or, for a restore that did not happen, why, and what the data dir holds.

It is the flow's persisted JSON result, the CLI's ``--json`` output, and, as artifacts in
Prefect, a table (one row per item) and a short markdown summary. A refused, failed or
interrupted restore has its summary too (no table): what stopped it and what the data dir holds,
so that the UI says it without a log being opened. Sizes and rates are written by
``tasks/units.py``, as everywhere.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from prefect import task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from memrestore.tasks import units
from memrestore.tasks.plan import RestoreMode, RestorePlan
from memrestore.tasks.stage import StagedItem
from memrestore.tasks.validation import ValidationResult

#: A restore that moved bytes, and its plan (a dry run); ``verified`` is the ``verify`` command's.
DONE = ("restored", "planned", "verified")
#: A restore that did not happen: a refusal (a precondition, bad input; nothing was touched), a
#: failure (its own work undone, or kept for a resume: ``data_dir_holds`` says), an interruption.
NOT_DONE = ("refused", "failed", "interrupted")


class ItemOutcome(BaseModel):
    kind: str
    content_key: str
    bytes: int | None
    destination: str
    checksum: str | None
    verified: bool


class RemovedEntry(BaseModel):
    """An entry of the data dir that the restore replaced and deleted (or, in a dry run's plan,
    would): a tenant's dir or any other file or dir of the service, with its bytes."""

    name: str
    bytes: int


class RestoreOutcome(BaseModel):
    status: str  # one of DONE or NOT_DONE
    tenant_id: int
    snapshot_id: str
    mode: RestoreMode | None
    backend: str
    data_dir: str | None
    items: list[ItemOutcome]
    total_bytes: int | None
    seconds: float
    warnings: list[str] = []
    #: How the staged copy was checked before the commit (tasks/checks.py), and how long it took.
    check: str | None = None
    check_seconds: float | None = None
    #: The operator's own validation of the staged copy (tasks/validation.py), when one ran.
    validation: ValidationResult | None = None
    #: What the restore replaced and deleted from the data dir (a dry run: what it would).
    removed: list[RemovedEntry] = []
    #: Why a restore did not happen (NOT_DONE): the refusal or error, as its run's state says it.
    reason: str | None = None
    #: What the data dir holds after a restore that did not happen.
    data_dir_holds: str | None = None
    #: The streams (concurrent GETs) the restore ran: the most at once, and those in force at its
    #: end (``backends.streams.StreamPool``); None when it read without them (a local folder).
    streams_peak: int | None = None
    streams_final: int | None = None
    #: How the count went: each change, ``[seconds since the first read, streams, why]`` (why:
    #: ``start``, ``fixed``, or the control's reason, e.g. ``no gain``): what the link gave.
    streams_changes: list[tuple[float, int, str]] = []
    #: The rate the bytes came down at, MB/s (10^6 bytes a second), as the benchmark writes it.
    mb_per_second: float | None = None

    @property
    def bytes_per_second(self) -> float | None:
        """The rate the bytes came down at; None for a plan, which read none of them."""
        if self.status not in ("restored", "verified") or not self.total_bytes or self.seconds <= 0:
            return None
        return self.total_bytes / self.seconds


def build_outcome(
    status: str,
    plan: RestorePlan,
    mode: RestoreMode | None,
    data_dir: Path | None,
    staged: list[StagedItem] | None,
    seconds: float,
    check: str | None = None,
    check_seconds: float | None = None,
    removed: list[tuple[str, int]] = (),
    validation: ValidationResult | None = None,
    streams: tuple[int, int, list[tuple[float, int, str]]] | None = None,
) -> RestoreOutcome:
    """Combine the plan with what staging found (``staged`` is None for a dry run), what the
    restore replaced (``removed``: names and bytes), how the operator's validation went, and
    ``streams``: the most streams the transfer ran at once and those at its end
    (``Transfer.streams_used``)."""
    by_key = {s.item.content_key: s for s in staged or []}
    items = []
    for item in plan.items:
        done = by_key.get(item.content_key)
        dest = str(Path(data_dir) / item.destination) if data_dir is not None else item.destination
        items.append(
            ItemOutcome(
                kind=item.label,
                content_key=item.content_key,
                bytes=done.bytes if done else item.size,
                destination=dest,
                checksum=done.checksum if done else item.expected_checksum,
                verified=done.verified if done else False,
            )
        )
    sizes = [i.bytes for i in items]
    outcome = RestoreOutcome(
        status=status,
        tenant_id=plan.tenant_id,
        snapshot_id=plan.snapshot_id,
        mode=mode,
        backend=plan.backend,
        data_dir=str(data_dir) if data_dir is not None else None,
        items=items,
        total_bytes=None if None in sizes else sum(sizes),  # type: ignore[arg-type]
        seconds=round(seconds, 3),
        warnings=plan.warnings,
        check=check,
        check_seconds=round(check_seconds, 3) if check_seconds is not None else None,
        removed=[RemovedEntry(name=name, bytes=size) for name, size in removed],
        validation=validation,
        streams_peak=streams[0] if streams else None,
        streams_final=streams[1] if streams else None,
        streams_changes=streams[2] if streams else [],
    )
    rate = outcome.bytes_per_second
    outcome.mb_per_second = round(rate / 1e6, 1) if rate is not None else None
    return outcome


def removed_lines(outcome: RestoreOutcome) -> list[str]:
    """What the restore deleted from the data dir, a line an entry (a dry run: what it would)."""
    if not outcome.removed:
        return []
    verb = "would delete" if outcome.status == "planned" else "deleted"
    total = sum(e.bytes for e in outcome.removed)
    count = f"{len(outcome.removed)} {'entry' if len(outcome.removed) == 1 else 'entries'}"
    return [f"{verb} from the data dir: {count}, {units.size(total)}"] + [
        f"  {e.name} ({_removed_entry(outcome, e)})" for e in outcome.removed]


def _removed_entry(outcome: RestoreOutcome, entry: RemovedEntry) -> str:
    if entry.name == f"tenant_{outcome.tenant_id}":
        return f"{units.size(entry.bytes)}, the tenant's data before the restore"
    return units.size(entry.bytes)


def not_done_outcome(
    status: str,
    reason: str,
    data_dir_holds: str | None,
    tenant_id: int,
    snapshot: str,
    mode: RestoreMode | None,
    backend: str,
    data_dir: Path | None,
    seconds: float,
    plan: RestorePlan | None = None,
) -> RestoreOutcome:
    """The outcome of a restore that did not happen (``status`` in NOT_DONE): the snapshot as far
    as it was resolved (``plan``, when the manifest was read; else the one asked for)."""
    assert status in NOT_DONE, status
    return RestoreOutcome(
        status=status,
        tenant_id=tenant_id,
        snapshot_id=plan.snapshot_id if plan is not None else snapshot,
        mode=mode,
        backend=backend,
        data_dir=str(data_dir) if data_dir is not None else None,
        items=[],
        total_bytes=plan.total_bytes if plan is not None else None,
        seconds=round(seconds, 3),
        warnings=plan.warnings if plan is not None else [],
        reason=reason,
        data_dir_holds=data_dir_holds,
    )


def speed(outcome: RestoreOutcome) -> str:
    """``, 52.0 MiB/s on 48 streams at most, 32 at the end`` after a restore's time (the rate only
    when it read without streams; nothing when no byte moved): the summary's, the CLI's and the
    run log's words alike."""
    rate = f", {units.rate(outcome.bytes_per_second)}" if outcome.bytes_per_second else ""
    if outcome.streams_peak is None:
        return rate
    return f"{rate} on {outcome.streams_peak} streams at most, {outcome.streams_final} at the end"


def table_rows(outcome: RestoreOutcome) -> list[dict]:
    return [
        {
            "kind": i.kind,
            "content_key": i.content_key,
            "bytes": i.bytes,
            "destination": i.destination,
            "checksum": i.checksum,
            "verified": i.verified,
        }
        for i in outcome.items
    ]


_HEADINGS = {
    "restored": "Restored", "planned": "Plan (dry run): would restore", "verified": "Verified",
    "refused": "Refused: the restore of", "failed": "Failed: the restore of",
    "interrupted": "Interrupted: the restore of",
}


def summary_markdown(outcome: RestoreOutcome) -> str:
    mode = f" ({outcome.mode.value})" if outcome.mode else ""
    lines = [
        f"## {_HEADINGS[outcome.status]} snapshot `{outcome.snapshot_id}` of tenant {outcome.tenant_id}{mode}",
        "",
    ]
    if outcome.status in NOT_DONE:
        lines += [f"**{outcome.reason}**", ""]
        if outcome.data_dir_holds:
            lines += [f"- data dir: {outcome.data_dir_holds}"]
    lines.append(f"- backend: `{outcome.backend}`")
    if outcome.data_dir and outcome.status in DONE:
        lines.append(f"- data dir: `{outcome.data_dir}`")
    if outcome.status == "planned":
        lines += [
            f"- {len(outcome.items)} items, {units.size(outcome.total_bytes)} to fetch (planned in "
            f"{units.duration(outcome.seconds)}); nothing was read or written",
        ]
        lines += [f"- `{i.content_key}` ({units.size(i.bytes)}) -> `{i.destination}`" for i in outcome.items]
    elif outcome.status in DONE:
        unverified = sum(not i.verified for i in outcome.items)
        lines += [
            f"- {len(outcome.items)} items, {units.size(outcome.total_bytes)} in "
            f"{units.duration(outcome.seconds)}{speed(outcome)}",
            f"- verified: {len(outcome.items) - unverified} of {len(outcome.items)}",
        ]
        if outcome.check is not None:
            lines.append(f"- staged copy checked before the commit: {outcome.check}"
                         + (f" in {units.duration(outcome.check_seconds)}" if outcome.check_seconds is not None else ""))
        if outcome.validation is not None:
            lines.append(f"- staged copy validated before the commit: {outcome.validation.hooks} "
                         f"{outcome.validation.short()}"
                         + (f" (left beside it, removed: {', '.join(outcome.validation.removed)})"
                            if outcome.validation.removed else ""))
    else:
        lines.append(f"- stopped after {units.duration(outcome.seconds)}")
    lines += [f"- warning: {w}" for w in outcome.warnings]
    removed = removed_lines(outcome)
    if removed:
        lines += [f"- {removed[0]}:"] + [f"    - `{e.name}` ({_removed_entry(outcome, e)})" for e in outcome.removed]
    return "\n".join(lines) + "\n"


def human_summary(outcome: RestoreOutcome) -> str:
    """The CLI's text output."""
    verb = {"restored": "restored", "planned": "would restore", "verified": "verified"}[outcome.status]
    mode = f" ({outcome.mode.value})" if outcome.mode else ""
    lines = [f"tenant {outcome.tenant_id}, snapshot {outcome.snapshot_id}{mode}: {verb}"]
    for i in outcome.items:
        mark = "verified" if i.verified else ("unverified" if outcome.status != "planned" else "")
        lines.append(f"  {i.kind:<24} {units.size(i.bytes):>10}  {i.content_key} -> {i.destination}  {mark}".rstrip())
    if outcome.status == "planned":
        lines.append(f"  total {units.size(outcome.total_bytes)} to fetch (planned in "
                     f"{units.duration(outcome.seconds)}; nothing read or written)")
    else:
        lines.append(f"  total {units.size(outcome.total_bytes)} in {units.duration(outcome.seconds)}{speed(outcome)}")
    if outcome.check is not None:
        took = f" in {units.duration(outcome.check_seconds)}" if outcome.check_seconds is not None else ""
        lines.append(f"  staged copy checked before the commit: {outcome.check}{took}"
                     if outcome.check != "none" else "  staged copy not checked before the commit (--check none)")
    if outcome.validation is not None:
        lines.append(f"  staged copy validated before the commit: {outcome.validation.hooks} "
                     f"{outcome.validation.short()}")
        if outcome.validation.removed:
            lines.append(f"  the validation left {', '.join(outcome.validation.removed)} beside the copy's files: "
                         "removed, not committed")
    lines += ["  " + line for line in removed_lines(outcome)]
    return "\n".join(lines)


def artifact_key(prefix: str, tenant_id: int) -> str:
    return f"{prefix}-tenant-{tenant_id}"


def artifact_prefix(outcome: RestoreOutcome, dry_run: bool = False) -> str:
    """``restore``, ``restore-plan`` (a dry run, refused or not) or ``verify``."""
    if outcome.status == "verified":
        return "verify"
    return "restore-plan" if dry_run or outcome.status == "planned" else "restore"


async def publish_outcome(outcome: RestoreOutcome, dry_run: bool = False) -> None:
    """Publish the outcome to Prefect: a markdown summary and, for what was done, a table (one row
    per item), the two requests at once. A restore that did not happen has its summary alone, under
    the same key as a done one's: the tenant's latest summary is its latest outcome."""
    prefix = artifact_prefix(outcome, dry_run)
    requests = [acreate_markdown_artifact(
        markdown=summary_markdown(outcome),
        key=artifact_key(f"{prefix}-summary", outcome.tenant_id),
        description=f"{outcome.status} snapshot {outcome.snapshot_id}",
    )]
    if outcome.status in DONE:
        requests.append(acreate_table_artifact(
            table=table_rows(outcome),
            key=artifact_key(f"{prefix}-items", outcome.tenant_id),
            description=f"{outcome.status} items of snapshot {outcome.snapshot_id}",
        ))
    await asyncio.gather(*requests)


@task(name="outcome", cache_policy=NO_CACHE, persist_result=False)
async def publish_outcome_task(outcome: RestoreOutcome, dry_run: bool = False) -> None:
    """Publish the outcome's summary (and table) artifacts. Async, so that the artifacts go through
    the (async) flow's own API client."""
    await publish_outcome(outcome, dry_run)
