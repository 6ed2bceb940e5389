"""The outcome of a restore: what was restored where, verified or not, how many bytes, how long.

It is the flow's persisted JSON result, the CLI's ``--json`` output, and, as artifacts in
Prefect, a table (one row per item) and a short markdown summary.
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
    status: str  # "restored", "planned" (dry run) or "verified" (verify)
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
    #: What the restore replaced and deleted from the data dir (a dry run: what it would).
    removed: list[RemovedEntry] = []

    @property
    def mib_per_second(self) -> float | None:
        if not self.total_bytes or self.seconds <= 0:
            return None
        return self.total_bytes / 2**20 / self.seconds


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
) -> RestoreOutcome:
    """Combine the plan with what staging found (``staged`` is None for a dry run) and what the
    restore replaced (``removed``: names and bytes)."""
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
    return RestoreOutcome(
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
    )


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


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


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


def summary_markdown(outcome: RestoreOutcome) -> str:
    verb = {"restored": "Restored", "planned": "Dry run of", "verified": "Verified"}[outcome.status]
    mode = f" ({outcome.mode.value})" if outcome.mode else ""
    rate = f", {outcome.mib_per_second:.1f} MiB/s" if outcome.mib_per_second else ""
    lines = [
        f"## {verb} snapshot `{outcome.snapshot_id}` of tenant {outcome.tenant_id}{mode}",
        "",
        f"- backend: `{outcome.backend}`",
    ]
    if outcome.data_dir:
        lines.append(f"- data dir: `{outcome.data_dir}`")
    unverified = sum(not i.verified for i in outcome.items)
    lines += [
        f"- {len(outcome.items)} items, {_size(outcome.total_bytes)} in {outcome.seconds:.2f} s{rate}",
        f"- verified: {len(outcome.items) - unverified} of {len(outcome.items)}",
    ]
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
        lines.append(f"  {i.kind:<24} {_size(i.bytes):>10}  {i.content_key} -> {i.destination}  {mark}".rstrip())
    rate = f", {outcome.mib_per_second:.1f} MiB/s" if outcome.mib_per_second else ""
    lines.append(f"  total {_size(outcome.total_bytes)} in {outcome.seconds:.2f} s{rate}")
    if outcome.check is not None:
        took = f" in {outcome.check_seconds:.2f} s" if outcome.check_seconds is not None else ""
        lines.append(f"  staged copy checked before the commit: {outcome.check}{took}"
                     if outcome.check != "none" else "  staged copy not checked before the commit (--check none)")
    lines += ["  " + line for line in removed_lines(outcome)]
    return "\n".join(lines)


def artifact_key(prefix: str, tenant_id: int) -> str:
    return f"{prefix}-tenant-{tenant_id}"


async def publish_outcome(outcome: RestoreOutcome) -> None:
    """Publish the outcome to Prefect: a table (one row per item) and a markdown summary, the two
    requests at once."""
    prefix = {"restored": "restore", "planned": "restore-plan", "verified": "verify"}[outcome.status]
    await asyncio.gather(
        acreate_table_artifact(
            table=table_rows(outcome),
            key=artifact_key(f"{prefix}-items", outcome.tenant_id),
            description=f"{outcome.status} items of snapshot {outcome.snapshot_id}",
        ),
        acreate_markdown_artifact(
            markdown=summary_markdown(outcome),
            key=artifact_key(f"{prefix}-summary", outcome.tenant_id),
            description=f"{outcome.status} snapshot {outcome.snapshot_id}",
        ),
    )


@task(name="outcome", cache_policy=NO_CACHE, persist_result=False)
async def publish_outcome_task(outcome: RestoreOutcome) -> None:
    """Publish the outcome's table and summary artifacts. Async, so that the artifacts go through
    the (async) flow's own API client."""
    await publish_outcome(outcome)
