"""Restore drills: prove, tenant by tenant, that the backups really restore, and how old they are.

For each tenant a drill restores the latest snapshot (by ``created_at_unix_micros``) into a fresh
scratch dir, checks what arrived, measures it, and deletes the copy. When the latest snapshot
fails, it walks back to older ones until one restores and checks clean: that one is the tenant's
last good snapshot, and its age is the recovery point the tenant really has.

The logic is plain functions: the snapshots to try and their order, the age rule, the walk back
(the checks of a restored copy are tasks/checks.py's, the report's models and tables
tasks/drill_report.py's). How one snapshot is tried is passed in. The
drills use :func:`attempt_plain`: :func:`tasks.execute.execute` and the checks as plain calls, a
transient backend error retried with backoff, each attempt one log line. The ``restore-drill``
flow makes each tenant one ``drill-tenant`` task run (in a fleet, one ``drill-tenant`` flow run)
and restores inside it, with no ``restore-snapshot`` subflow: a subflow per restore cost ~1.7 s
of orchestration per tenant against ~25 ms of restore work (BENCHMARKS.md, row 5).
:func:`drill_plain` is the same drill with no Prefect at all.

Each snapshot tried is restored into a scratch copy of its own (tasks/drill_scratch.py), deleted once
checked unless the tenant failed and ``keep_failed`` is set.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, overload

from prefect import task
from prefect.cache_policies import NO_CACHE

from memrestore.backends import Backend, SnapshotListing, list_snapshots, open_backend
from memrestore.backends.manifest import SnapshotManifest
from memrestore.backends.stream_control import DEFAULT_CEILING
from memrestore.backends.streams import DEFAULT_STREAMS, RateLimit
from memrestore.tasks.checks import CheckLevel, check_restored, hnsw_sizes
from memrestore.tasks.drill_report import (
    AttemptResult,
    DrillReport,
    TenantDrillResult,
    build_report,
    describe_failure,
    no_snapshot_result,
)
from memrestore.tasks.execute import execute
from memrestore.tasks.outcome import RestoreOutcome
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks import units
from memrestore.tasks.retry import RETRIES, RETRY_OPTIONS, retrying
from memrestore.tasks.drill_scratch import (
    close_scratch_root,
    discard_scratch_copy,
    new_scratch_copy,
    open_scratch_root,
    said_deleted,
)
from memrestore.tasks.transfer import Transfer
from memrestore.tasks.validate import validate

#: Tenants drilled at once. Each restore already stages its blobs four at a time (and S3
#: restores keep ``--streams`` ranged GETs in flight), so four tenants keep a bucket and a small
#: machine busy without taking every core from the service the drill runs beside.
DEFAULT_DRILL_CONCURRENCY = 4
#: The most tenants drilled at once: the drill flow's thread pool is sized to it.
MAX_DRILL_CONCURRENCY = 16
#: Older snapshots tried after the latest fails. Each try is a full restore; a tenant whose ten
#: previous snapshots all fail has a problem no deeper search will make smaller.
MAX_WALK_BACK = 10

#: The event a failed tenant emits; a Prefect automation on it can page someone.
DRILL_FAILED_EVENT = "memrestore.drill.failed"
MICROS_PER_SECOND = 1_000_000
SECONDS_PER_HOUR = 3600

#: Where :func:`drill_plain` logs its attempts (silent unless the application configures logging).
_log = logging.getLogger(__name__)
_log.addHandler(logging.NullHandler())


# -- which snapshots, and how old --------------------------------------------------------------


def drill_candidates(listing: SnapshotListing, tenant_id: int) -> list[SnapshotManifest]:
    """The tenant's snapshots to try, newest first: the latest, then the ones to walk back to.

    The order is :meth:`SnapshotListing.latest`'s (``created_at_unix_micros``, ties to the greater
    id), so the first is always the snapshot a ``latest`` restore would pick.
    """
    return sorted(
        listing.for_tenant(tenant_id),
        key=lambda m: (m.created_at_unix_micros, m.snapshot_id),
        reverse=True,
    )


class ManifestsById(Sequence[SnapshotManifest]):
    """A tenant's snapshots to try, newest first, given by id: each manifest is read when the drill
    first needs it, and once. A healthy tenant's drill reads only its latest; a slice is another
    such sequence sharing what was read. A fleet drill sends its children ids, not manifests."""

    def __init__(self, snapshot_ids: Sequence[str], read: Callable[[str], SnapshotManifest],
                 _read_already: dict[str, SnapshotManifest] | None = None) -> None:
        self._ids = list(snapshot_ids)
        self._read = read
        self._manifests = {} if _read_already is None else _read_already

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> SnapshotManifest: ...
    @overload
    def __getitem__(self, index: slice) -> ManifestsById: ...
    def __getitem__(self, index: int | slice) -> SnapshotManifest | ManifestsById:
        if isinstance(index, slice):
            return ManifestsById(self._ids[index], self._read, self._manifests)
        snapshot_id = self._ids[index]
        if snapshot_id not in self._manifests:
            self._manifests[snapshot_id] = self._read(snapshot_id)
        return self._manifests[snapshot_id]


def tenants_to_drill(listing: SnapshotListing, tenants: Iterable[int] | None) -> list[int]:
    """The named tenants (each once, in the order given), or every tenant with a snapshot."""
    if tenants is not None:
        return list(dict.fromkeys(tenants))
    return listing.tenant_ids()


def snapshot_age_seconds(manifest: SnapshotManifest, now: float) -> float:
    """How old the snapshot is at ``now`` (Unix seconds): the recovery point it offers."""
    return round(now - manifest.created_at_unix_micros / MICROS_PER_SECOND, 3)


def over_max_age(age_seconds: float | None, max_age_hours: float | None) -> bool:
    """Whether a snapshot this old is over the limit (never, when there is no limit)."""
    return age_seconds is not None and max_age_hours is not None and age_seconds > max_age_hours * SECONDS_PER_HOUR


def stale_reason(tenant_id: int, age_seconds: float, max_age_hours: float | None) -> str | None:
    """Why the latest snapshot is too old, or None when it is recent enough (or no limit is set)."""
    if not over_max_age(age_seconds, max_age_hours):
        return None
    return (
        f"latest snapshot is {units.age(age_seconds)} old, above --max-age-hours {max_age_hours:g}: "
        f"check that backups of tenant {tenant_id} are still being taken."
    )


def stale_last_good_reason(manifest: SnapshotManifest, age_seconds: float, max_age_hours: float) -> str:
    """Why a tenant whose latest snapshot failed is also past its limit: the older snapshot the
    walk back found restorable is over it, so the recovery point the tenant really has is too."""
    return (
        f"The newest snapshot that restores, {manifest.snapshot_id}, is {units.age(age_seconds)} old, "
        f"above --max-age-hours {max_age_hours:g}: a restore today loses more than the limit allows."
    )


# -- one attempt, one tenant ---------------------------------------------------------------------

#: Restore ``manifest`` (mode new_cluster) into the empty directory given; raise on failure.
RestoreFn = Callable[[SnapshotManifest, Path], RestoreOutcome]
#: Check a restored copy; raise RestoredCopyCheckError when it fails.
CheckFn = Callable[[SnapshotManifest, Path], None]
AttemptFn = Callable[[SnapshotManifest], AttemptResult]


def drill_destination(manifest: SnapshotManifest) -> DestinationState:
    """The destination a drill restores as: one that accepts this snapshot, since the drill tests
    the backup, not a particular service (its wire version, any of its embedding models)."""
    models = manifest.embedding_models
    return DestinationState(wire_version=manifest.wire_version, embedding_model=models[0] if models else None)


def attempt_snapshot(manifest: SnapshotManifest, scratch_root: Path, restore: RestoreFn, check: CheckFn) -> AttemptResult:
    """Restore ``manifest`` into a fresh scratch copy and check it; a failure becomes the reason."""
    scratch = new_scratch_copy(scratch_root, manifest)
    started = time.monotonic()
    try:
        outcome = restore(manifest, scratch)
    except Exception as exc:  # noqa: BLE001 - a failed restore is a drill finding, not a crash
        return AttemptResult(snapshot_id=manifest.snapshot_id, scratch=str(scratch), restored=False,
                             ok=False, reason=describe_failure(exc))
    seconds = round(time.monotonic() - started, 3)
    measured = dict(snapshot_id=manifest.snapshot_id, scratch=str(scratch), restored=True,
                    restore_seconds=seconds, bytes=outcome.total_bytes)
    try:
        check(manifest, scratch)
    except Exception as exc:  # noqa: BLE001 - likewise
        return AttemptResult(**measured, ok=False, reason=describe_failure(exc))
    return AttemptResult(**measured, ok=True)


def drill_tenant(
    tenant_id: int,
    candidates: Sequence[SnapshotManifest],
    attempt: AttemptFn,
    *,
    backend_url: str,
    now: float,
    max_age_hours: float | None = None,
    keep_failed: bool = False,
    walk_back: int = MAX_WALK_BACK,
    unreadable: int = 0,
) -> TenantDrillResult:
    """Drill one tenant: try its latest snapshot, walk back while they fail, judge the age.

    ``candidates`` are newest first (:func:`drill_candidates`). Every scratch copy is deleted once
    judged, except a failed one when ``keep_failed`` is set; the reason names a copy's files only
    when the copy is kept (a deleted one is said to be deleted).
    """
    if not candidates:
        return no_snapshot_result(tenant_id, backend_url, unreadable)
    latest = candidates[0]
    age = snapshot_age_seconds(latest, now)
    first = attempt(latest)
    stale = stale_reason(tenant_id, age, max_age_hours)
    kept: list[str] = []

    def judged(result: AttemptResult, failed: bool) -> str | None:
        """Keep or delete the attempt's copy; its reason, as true once that is done."""
        if failed and keep_failed:
            kept.append(result.scratch)
            return result.reason
        discard_scratch_copy(result.scratch)
        return said_deleted(result.reason, result.scratch)

    why = judged(first, failed=not first.ok or stale is not None)
    reasons = [] if first.ok else [why or "the restore failed"]
    if stale:
        reasons.append(stale)
    last_good = latest if first.ok else None
    if last_good is None:
        older = candidates[1:]
        for manifest in older[:walk_back]:
            result = attempt(manifest)
            judged(result, failed=not result.ok)
            if result.ok:
                last_good = manifest
                break
        else:
            if len(older) > walk_back:
                reasons.append(
                    f"none of the {walk_back + 1} newest snapshots of tenant {tenant_id} restores "
                    f"cleanly ({len(older) - walk_back} older ones were not tried)."
                )
            else:
                reasons.append(f"no snapshot of tenant {tenant_id} restores cleanly ({len(candidates)} tried).")
    rpo = snapshot_age_seconds(last_good, now) if last_good else None
    if last_good is not None and last_good is not latest and over_max_age(rpo, max_age_hours):
        reasons.append(stale_last_good_reason(last_good, rpo, max_age_hours))
    return TenantDrillResult(
        tenant_id=tenant_id,
        snapshot_id=latest.snapshot_id,
        status="failed" if reasons else "ok",
        reason=" ".join(reasons) or None,
        restore_seconds=first.restore_seconds,
        snapshot_age_seconds=age,
        bytes=first.bytes,
        last_good_snapshot_id=last_good.snapshot_id if last_good else None,
        last_good_age_seconds=rpo,
        kept_copies=kept,
        rpo_over_max_age=over_max_age(rpo, max_age_hours),
    )


# -- a whole drill with no Prefect ----------------------------------------------------------------


def restore_plain(backend: Backend, streams: int | None = DEFAULT_STREAMS, limit: RateLimit | None = None,
                  max_streams: int = DEFAULT_CEILING) -> RestoreFn:
    """Restore with plain function calls (:func:`tasks.execute.execute`), each restore on
    ``streams`` streams of its own (None: as many as its pool finds pay, up to ``max_streams``), all of them under ``limit`` (the drill's, shared by the
    tenants it restores at once) when one is given."""

    def restore(manifest: SnapshotManifest, data_dir: Path) -> RestoreOutcome:
        plan = validate(manifest, drill_destination(manifest), backend.url)
        with Transfer(streams, limit=limit, max_streams=max_streams) as transfer:
            # No pre-commit check: the drill checks the restored copy in full (check_plain).
            return execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER, transfer=transfer,
                           check=CheckLevel.NONE)

    return restore


def check_plain(backend: Backend) -> CheckFn:
    def check(manifest: SnapshotManifest, data_dir: Path) -> None:
        check_restored(data_dir, manifest, hnsw_sizes(backend, manifest))

    return check


def attempt_plain(
    backend: Backend, scratch_root: Path, logger: logging.Logger | logging.LoggerAdapter = _log,
    streams: int | None = DEFAULT_STREAMS, limit: RateLimit | None = None, keep_failed: bool = False,
    max_streams: int = DEFAULT_CEILING,
) -> AttemptFn:
    """Try snapshots with plain function calls in the caller's own run (a ``drill-tenant`` task or
    flow run, or none): :func:`attempt_snapshot` with :func:`restore_plain` and :func:`check_plain`.

    A transient backend error in the restore or the check is retried with the tasks' backoff
    (:func:`tasks.retry.retrying`); a restore tried again starts over in the same scratch copy,
    which :func:`tasks.execute.execute` emptied when it rolled the failed try back. Any other
    error is the attempt's finding. Each retry and each attempt's result is a line of ``logger``;
    a failed attempt's line names its copy's files only when ``keep_failed`` keeps the copy
    (:func:`drill_tenant` deletes it otherwise).
    """
    restore, check = restore_plain(backend, streams, limit, max_streams), check_plain(backend)

    def attempt(manifest: SnapshotManifest) -> AttemptResult:
        def on_retry(step: str):
            def log(exc: Exception, failed: int, wait: float) -> None:
                logger.warning("tenant %s, snapshot %s: the %s failed (try %d of %d), trying again in %.1f s: %s",
                               manifest.tenant_id, manifest.snapshot_id, step, failed, RETRIES + 1, wait, exc)

            return log

        result = attempt_snapshot(manifest, scratch_root, retrying(restore, on_retry=on_retry("restore")),
                                  retrying(check, on_retry=on_retry("check")))
        where = f"tenant {manifest.tenant_id}, snapshot {manifest.snapshot_id}"
        why = result.reason if keep_failed else said_deleted(result.reason, result.scratch)
        if not result.restored:
            logger.warning("%s: the restore failed: %s", where, why)
        elif result.ok:
            logger.info("%s: restored %s in %s, checked clean", where, units.size(result.bytes),
                        units.duration(result.restore_seconds))
        else:
            logger.warning("%s: restored %s in %s, but the check failed: %s", where, units.size(result.bytes),
                           units.duration(result.restore_seconds), why)
        return result

    return attempt


def drill_plain(
    backend: Backend,
    tenants: Iterable[int] | None = None,
    *,
    max_age_hours: float | None = None,
    scratch_dir: str | Path | None = None,
    keep_failed: bool = False,
    now: float | None = None,
) -> DrillReport:
    """The drill as plain function calls, one tenant after another: for tests and measurements.
    The ``restore-drill`` flow does the same with several tenants at once, each in a task run of
    its own, and artifacts and events."""
    now = time.time() if now is None else now
    listing = list_snapshots(backend)
    root, created = open_scratch_root(scratch_dir)
    attempt = attempt_plain(backend, root, keep_failed=keep_failed)
    try:
        results = [
            drill_tenant(
                tenant_id,
                drill_candidates(listing, tenant_id),
                attempt,
                backend_url=backend.url, now=now, max_age_hours=max_age_hours,
                keep_failed=keep_failed, unreadable=len(listing.unreadable),
            )
            for tenant_id in tenants_to_drill(listing, tenants)
        ]
    finally:
        close_scratch_root(root, created)
    return build_report(results, listing.unreadable)


@task(name="list-snapshots", cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def list_snapshots_task(backend_url: str) -> SnapshotListing:
    """Read every finished snapshot's manifest; transient backend errors are retried."""
    return list_snapshots(open_backend(backend_url))
