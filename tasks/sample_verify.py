"""Sampled verify: each run hashes a share of the blobs of every retained snapshot, whole, against
their manifests, without restoring; over nights, every stored blob is read.

A drill restores one snapshot of each tenant. An older snapshot, the one a walk back would need on
the bad day, is otherwise never read until that day. So, as restic's ``check --read-data-subset``
and Kopia's ``snapshot verify --verify-files-percent`` do, each run reads a slice of everything
stored:

- The blobs are those of every finished snapshot of the tenants in scope, each content key once
  (a blob shared by several snapshots is read once, and a failure names every snapshot holding
  it). Every one of them is sized first (a HEAD on S3), so a missing blob is found every night.
- They stand in one ring, ordered by a hash of their key, each taking as much of it as its bytes.
  Night ``n`` (by default the number of UTC days since 1970) reads the blobs that start within
  ``[n * budget, (n + 1) * budget)`` of the ring, wrapped; ``budget`` is the share asked for (a
  percent of the stored bytes, or a byte count). So ``ceil(100 / percent)`` nights in a row read
  every blob at least once, as restic's ``n/t`` subsets do, and a blob added since slots in at a
  place of its own. A blob is read whole, so a night reads its budget give or take one blob.
- Each read goes through the rate limit given (``--limit-rate``), several blobs at once.

:func:`sample_verify` is the plain function; :func:`sample_verify_task` its task. The report
(:class:`SampleReport`) lists what failed with the snapshots and key; flows/sample_verify.py emits
an event per failed blob and publishes the artifacts.
"""

from __future__ import annotations

import bisect
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from memrestore.backends import Backend, SnapshotListing, list_snapshots, open_backend
from memrestore.backends.errors import RestoreError
from memrestore.backends.streams import RateLimit
from memrestore.tasks import units
from memrestore.tasks.plan import PlanItem
from memrestore.tasks.retry import retrying
from memrestore.tasks.share import Share, parse_share
from memrestore.tasks.stage import hash_item
from memrestore.tasks.validate import plan_items

#: The event a blob that fails a sampled verify emits (resource ``memrestore.tenant.<id>``, as a
#: failed drill's); flows/ops/alerts.py's blob_failed_automation notifies on it.
SAMPLE_FAILED_EVENT = "memrestore.verify.failed"
#: Blobs hashed at once: a few reads in flight keep a far store busy without taking every core
#: from the service (the restore stages four at once too: tasks/restore.py's ITEM_CONCURRENCY).
HASH_CONCURRENCY = 4
#: Objects sized at once (HEADs on S3), as the snapshot listing sizes them.
SIZE_CONCURRENCY = 16
SECONDS_PER_DAY = 86_400


def tonight(at: float) -> int:
    """The night's number in the rotation: whole UTC days since 1970 at ``at`` (Unix seconds)."""
    return int(at // SECONDS_PER_DAY)


# -- what is stored ------------------------------------------------------------------------------


@dataclass
class StoredBlob:
    """One content key of the backend, with every snapshot that names it."""

    item: PlanItem
    tenant_id: int
    snapshot_ids: list[str] = field(default_factory=list)
    size: int | None = None
    #: Why it could not be sized (missing, refused), when it could not.
    missing: str | None = None

    @property
    def ring_order(self) -> bytes:
        return hashlib.blake2b(self.item.content_key.encode(), digest_size=8).digest()


def stored_blobs(listing: SnapshotListing, tenants: Iterable[int] | None) -> list[StoredBlob]:
    """Every blob of every finished snapshot of ``tenants`` (all, when None), each key once, the
    snapshots that hold it oldest first."""
    chosen = set(listing.tenant_ids() if tenants is None else tenants)
    blobs: dict[str, StoredBlob] = {}
    snapshots = sorted((m for m in listing.snapshots if m.tenant_id in chosen),
                       key=lambda m: (m.created_at_unix_micros, m.snapshot_id))
    for manifest in snapshots:
        for item in plan_items(manifest):
            blob = blobs.setdefault(item.content_key, StoredBlob(item=item, tenant_id=manifest.tenant_id))
            blob.snapshot_ids.append(manifest.snapshot_id)
    return list(blobs.values())


def size_blobs(backend: Backend, blobs: list[StoredBlob]) -> None:
    """Each blob's size from the backend, ``SIZE_CONCURRENCY`` at a time; one that cannot be
    sized is marked missing with why (a restore of it would fail too)."""
    head = retrying(backend.object_size)

    def size_one(blob: StoredBlob) -> None:
        try:
            blob.size = head(blob.item.content_key)
        except RestoreError as exc:
            blob.missing = str(exc)

    with ThreadPoolExecutor(max_workers=max(1, min(SIZE_CONCURRENCY, len(blobs)))) as pool:
        list(pool.map(size_one, blobs))


def night_slice(blobs: list[StoredBlob], share: Share, night: int) -> list[StoredBlob]:
    """The blobs night ``night`` reads: those starting within its stretch of the ring (module
    docstring). Blobs that could not be sized take no room in it, and are not read."""
    ring = sorted((b for b in blobs if b.size is not None), key=lambda b: b.ring_order)
    starts, total = [], 0
    for blob in ring:
        starts.append(total)
        total += blob.size or 0
    budget = share.budget(total)
    if total == 0 or budget <= 0:
        return []
    if budget >= total:
        return ring
    begin = (night * budget) % total
    end = begin + budget
    chosen = ring[bisect.bisect_left(starts, begin):bisect.bisect_left(starts, end)]
    if end > total:  # wrapped past the ring's end
        chosen += ring[:bisect.bisect_left(starts, end - total)]
    return chosen


# -- the report ----------------------------------------------------------------------------------


class FailedBlob(BaseModel):
    """A blob that did not hash to its manifest's checksum, or could not be read at all."""

    tenant_id: int
    #: Every snapshot that names the blob, oldest first: each would fail a restore.
    snapshot_ids: list[str]
    key: str
    reason: str


class SampleReport(BaseModel):
    """One sampled verify: what is stored, what was read, what failed."""

    share: str
    night: int
    tenants: list[int]
    snapshots: int
    blobs_stored: int
    bytes_stored: int
    blobs_read: int
    bytes_read: int
    #: Blobs read whose manifest gives no checksum: hashed, with nothing to compare to.
    unverified: int = 0
    seconds: float = 0.0
    failed: list[FailedBlob] = []

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        """The verify in words: what was read of what is stored, then each failed blob."""
        share = f"{self.bytes_read / self.bytes_stored:.1%}" if self.bytes_stored else "0%"
        lines = [
            f"sampled verify ({self.share} a night, night {self.night}): read {self.blobs_read} of "
            f"{self.blobs_stored} blobs, {units.size(self.bytes_read)} of {units.size(self.bytes_stored)} "
            f"({share}) of {_count(self.snapshots, 'snapshot')} of {_count(len(self.tenants), 'tenant')}, in "
            f"{units.duration(self.seconds)}; {len(self.failed)} failed"
        ]
        if self.unverified:
            lines.append(f"{self.unverified} blobs read have no checksum in their manifest: hashed, not verified")
        for f in self.failed:
            lines.append(f"tenant {f.tenant_id}, snapshot {', '.join(f.snapshot_ids)}, key {f.key}: {f.reason}")
        return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _checked(backend: Backend, blob: StoredBlob, limit: RateLimit | None) -> tuple[int, bool, str | None]:
    """Hash one blob: (bytes read, whether it had a checksum to compare, why it failed or None)."""
    try:
        staged = retrying(hash_item)(blob.item, backend, limit=limit)
    except RestoreError as exc:
        return 0, True, str(exc)
    return staged.bytes, staged.verified, None


def sample_verify(
    backend: Backend,
    share: Share | str,
    *,
    tenants: Iterable[int] | None = None,
    night: int | None = None,
    limit: RateLimit | None = None,
    listing: SnapshotListing | None = None,
    now: float | None = None,
) -> SampleReport:
    """Hash tonight's slice of every blob stored for ``tenants`` (every tenant when None) against
    the manifests, under ``limit``; ``night`` picks the slice (default: :func:`tonight`).

    Raises only what stops the whole verify (the listing failing); each blob's own failure is a
    line of the report."""
    started = time.monotonic()
    share = parse_share(share) if isinstance(share, str) else share
    night = tonight(time.time() if now is None else now) if night is None else night
    listing = list_snapshots(backend) if listing is None else listing
    chosen = sorted(set(listing.tenant_ids() if tenants is None else tenants))
    blobs = stored_blobs(listing, chosen)
    size_blobs(backend, blobs)
    failed = [FailedBlob(tenant_id=b.tenant_id, snapshot_ids=b.snapshot_ids, key=b.item.content_key,
                         reason=f"cannot be read: {b.missing}") for b in blobs if b.missing]
    picked = night_slice(blobs, share, night)
    with ThreadPoolExecutor(max_workers=max(1, min(HASH_CONCURRENCY, len(picked)))) as pool:
        checked = list(pool.map(lambda b: _checked(backend, b, limit), picked))
    unverified = 0
    for blob, (_read, verified, why) in zip(picked, checked):
        if why is not None:
            failed.append(FailedBlob(tenant_id=blob.tenant_id, snapshot_ids=blob.snapshot_ids,
                                     key=blob.item.content_key, reason=why))
        elif not verified:
            unverified += 1
    return SampleReport(
        share=str(share), night=night, tenants=chosen,
        snapshots=len({sid for b in blobs for sid in b.snapshot_ids}),
        blobs_stored=len(blobs), bytes_stored=sum(b.size or 0 for b in blobs),
        blobs_read=len(picked), bytes_read=sum(read for read, _, _ in checked),
        unverified=unverified, seconds=round(time.monotonic() - started, 3), failed=failed,
    )


@task(name="sample-verify", cache_policy=NO_CACHE, persist_result=False)
def sample_verify_task(backend_url: str, share: str, tenants: list[int] | None, night: int | None,
                       limit: RateLimit | None, listing: SnapshotListing | None = None,
                       now: float | None = None) -> SampleReport:
    """Hash tonight's slice of the stored blobs (:func:`sample_verify`)."""
    return sample_verify(open_backend(backend_url), share, tenants=tenants, night=night, limit=limit,
                         listing=listing, now=now)
