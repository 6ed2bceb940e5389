"""Restore drills: prove, tenant by tenant, that the backups really restore, and how old they are.

For each tenant a drill restores the latest snapshot (by ``created_at_unix_micros``) into a fresh
scratch dir, checks what arrived, measures it, and deletes the copy. When the latest snapshot
fails, it walks back to older ones until one restores and checks clean: that one is the tenant's
last good snapshot, and its age is the recovery point the tenant really has.

The logic is plain functions: the snapshots to try and their order, the age rule, the walk back
(the checks of a restored copy are tasks/checks.py's, the report's models and tables
tasks/drill_report.py's). How one snapshot is tried is passed in. The
drills use :func:`attempt_plain`: :func:`tasks.restore.restore` and the checks as plain calls, a
transient backend error retried with backoff, each attempt one log line. The ``restore-drill``
flow makes each tenant one ``drill-tenant`` task run (in a fleet, one ``drill-tenant`` flow run)
and restores inside it, with no ``restore-snapshot`` subflow: a subflow per restore cost ~1.7 s
of orchestration per tenant against ~25 ms of restore work (BENCHMARKS.md, row 5).

Which snapshot a drill tries first is a :class:`SnapshotPick`: the latest (the default), or, as
AWS Backup's restore testing offers (``RANDOM_WITHIN_WINDOW``), one drawn at random among the
snapshots of the last days (:func:`pick_first`), so that over nights every retained generation is
restored, not only the newest. The walk back goes on from the one picked to older ones.

Each snapshot tried is restored into a scratch copy of its own (tasks/drill_scratch.py), deleted once
checked unless the tenant failed and ``keep_failed`` is set. With a ``validation`` (the operator's
own, tasks/validation.py), each copy that passed the drill's checks is then validated
(:func:`check_plain`): a copy that fails it is a failed check like any other, and its result is
kept for the report.
"""

from __future__ import annotations

import enum
import logging
import random
import secrets
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, overload

from prefect import task
from prefect.cache_policies import NO_CACHE

from memrestore.backends import Backend, SnapshotListing, list_snapshots, open_backend
from memrestore.backends.manifest import SnapshotManifest
from memrestore.backends.stream_control import DEFAULT_CEILING
from memrestore.backends.streams import DEFAULT_STREAMS, RateLimit, StreamBudget
from memrestore.tasks.checks import CheckLevel, check_restored, hnsw_sizes
from memrestore.tasks.drill_report import (
    AttemptResult,
    DrillReport,
    TenantDrillResult,
    build_report,
    describe_failure,
    no_snapshot_result,
)
from memrestore.tasks.errors import ValidationFailedError
from memrestore.tasks.outcome import RestoreOutcome
from memrestore.tasks.plan import DestinationState, RestoreMode, hnsw_destination, sqlite_destination
from memrestore.tasks import units
from memrestore.tasks.retry import RETRIES, RETRY_OPTIONS, retrying
from memrestore.tasks.drill_scratch import (
    close_scratch_root,
    discard_scratch_copy,
    new_scratch_copy,
    open_scratch_root,
    said_deleted,
)
from memrestore.tasks.restore import RestoreRequest, restore
from memrestore.tasks.validation import Validation, ValidationResult, check_hook, validate_copy

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
SECONDS_PER_DAY = 86_400
#: The window a random pick draws from when none is given, and the longest: AWS Backup's
#: restore testing takes 1-365 days, and defaults to 30.
DEFAULT_WINDOW_DAYS = 30.0
MAX_WINDOW_DAYS = 365.0
#: A drill's seed when none is given is drawn below this (and reported, so that a night's picks
#: can be drawn again with ``--seed``).
SEED_BOUND = 2**31



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


# -- which snapshot first ------------------------------------------------------------------------


class SnapshotPick(str, enum.Enum):
    """Which of a tenant's snapshots a drill restores first (the walk back goes on from it)."""

    #: The newest (by ``created_at_unix_micros``): the one a restore of ``latest`` takes today.
    LATEST = "latest"
    #: One drawn at random among those created within the window (the last ``window_days``), so
    #: that over nights every retained generation is restored. None so recent: the latest.
    RANDOM_WITHIN_WINDOW = "random-within-window"


def drill_seed(seed: int | None) -> int:
    """The seed of a drill's random picks: the one given, or a fresh one (reported with the
    drill, so that the same picks can be drawn again)."""
    return secrets.randbelow(SEED_BOUND) if seed is None else seed


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def pick_first(
    candidates: Sequence[SnapshotManifest],
    pick: SnapshotPick,
    *,
    now: float,
    window_days: float = DEFAULT_WINDOW_DAYS,
    seed: int = 0,
) -> tuple[int, str]:
    """Where in ``candidates`` (newest first, :func:`drill_candidates`) the drill starts, and how
    that snapshot was chosen, in the report's words (``latest``; ``random within 30 d, seed 7:
    3rd newest of 5``).

    A random pick is drawn from ``random.Random`` seeded with the drill's ``seed`` and the
    tenant, so one seed gives each tenant a pick of its own and the same picks every time; each
    snapshot created within the window (at or after ``now - window_days``) is equally likely.
    """
    if pick is SnapshotPick.LATEST or not candidates:
        return 0, SnapshotPick.LATEST.value
    floor_micros = (now - window_days * SECONDS_PER_DAY) * MICROS_PER_SECOND
    within = [i for i, m in enumerate(candidates) if m.created_at_unix_micros >= floor_micros]
    if not within:
        return 0, f"latest (none within {window_days:g} d)"
    index = random.Random(f"{seed}/{candidates[0].tenant_id}").choice(within)
    return index, f"random within {window_days:g} d, seed {seed}: {_ordinal(index + 1)} newest of {len(within)}"


# -- one attempt, one tenant ---------------------------------------------------------------------

#: Restore ``manifest`` (mode new_cluster) into the empty directory given; raise on failure.
RestoreFn = Callable[[SnapshotManifest, Path], RestoreOutcome]
#: Check a restored copy; raise RestoredCopyCheckError when it fails (ValidationFailedError, with
#: its result, when the operator's validation fails it). Returns the validation's result, or None
#: when no validation is set.
CheckFn = Callable[[SnapshotManifest, Path], ValidationResult | None]
AttemptFn = Callable[[SnapshotManifest], AttemptResult]


def drill_destination(manifest: SnapshotManifest) -> DestinationState:
    """The destination a drill restores as: one that accepts this snapshot, since the drill tests
    the backup, not a particular service (its wire version, any of its embedding models)."""
    models = manifest.embedding_models
    return DestinationState(wire_version=manifest.wire_version, embedding_model=models[0] if models else None)


def attempt_snapshot(manifest: SnapshotManifest, scratch_root: Path, restore: RestoreFn, check: CheckFn) -> AttemptResult:
    """Restore ``manifest`` into a fresh scratch copy and check it (the operator's validation
    too, when one is set); a failure becomes the reason, the validation's result is kept."""
    scratch = new_scratch_copy(scratch_root, manifest)
    started = time.monotonic()
    try:
        outcome = restore(manifest, scratch)
    except Exception as exc:  # noqa: BLE001 - a failed restore is a drill finding, not a crash
        return AttemptResult(snapshot_id=manifest.snapshot_id, scratch=str(scratch), restored=False,
                             ok=False, reason=describe_failure(exc))
    seconds = round(time.monotonic() - started, 3)
    measured = dict(snapshot_id=manifest.snapshot_id, scratch=str(scratch), restored=True,
                    restore_seconds=seconds, bytes=outcome.total_bytes, streams_peak=outcome.streams_peak,
                    streams_final=outcome.streams_final)
    try:
        validation = check(manifest, scratch)
    except Exception as exc:  # noqa: BLE001 - likewise
        return AttemptResult(**measured, ok=False, reason=describe_failure(exc),
                             validation=exc.result if isinstance(exc, ValidationFailedError) else None)
    return AttemptResult(**measured, ok=True, validation=validation)


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
    start: int = 0,
    picked_by: str = SnapshotPick.LATEST.value,
) -> TenantDrillResult:
    """Drill one tenant: try its snapshot at ``start`` (the latest, unless a random pick chose
    another: :func:`pick_first`, whose words ``picked_by`` are), walk back to older ones while
    they fail, judge the age.

    ``candidates`` are newest first (:func:`drill_candidates`). The age limit is the latest's
    whichever snapshot is tried; the recovery point is judged against it only when the drill
    started from the latest (a random pick tests no newer snapshot, so it cannot tell what a
    restore today would lose). Every scratch copy is deleted once judged, except a failed one
    when ``keep_failed`` is set; the reason names a copy's files only when the copy is kept (a
    deleted one is said to be deleted).
    """
    if not candidates:
        return no_snapshot_result(tenant_id, backend_url, unreadable)
    newest_age = snapshot_age_seconds(candidates[0], now)
    picked = candidates[start]
    age = snapshot_age_seconds(picked, now)
    first = attempt(picked)
    stale = stale_reason(tenant_id, newest_age, max_age_hours)
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
    last_good = picked if first.ok else None
    if last_good is None:
        older = candidates[start + 1:]
        for manifest in older[:walk_back]:
            result = attempt(manifest)
            judged(result, failed=not result.ok)
            if result.ok:
                last_good = manifest
                break
        else:
            back = "" if start == 0 else f" from {picked.snapshot_id} back"
            if len(older) > walk_back:
                newest = "newest " if start == 0 else ""
                reasons.append(
                    f"none of the {walk_back + 1} {newest}snapshots of tenant {tenant_id}{back} restores "
                    f"cleanly ({len(older) - walk_back} older ones were not tried)."
                )
            else:
                reasons.append(f"no snapshot of tenant {tenant_id}{back} restores cleanly "
                               f"({len(candidates) - start} tried).")
    rpo = snapshot_age_seconds(last_good, now) if last_good else None
    judged_rpo = start == 0 and over_max_age(rpo, max_age_hours)
    if last_good is not None and last_good is not picked and judged_rpo:
        reasons.append(stale_last_good_reason(last_good, rpo, max_age_hours))
    return TenantDrillResult(
        tenant_id=tenant_id,
        snapshot_id=picked.snapshot_id,
        status="failed" if reasons else "ok",
        reason=" ".join(reasons) or None,
        restore_seconds=first.restore_seconds,
        snapshot_age_seconds=age,
        bytes=first.bytes,
        last_good_snapshot_id=last_good.snapshot_id if last_good else None,
        last_good_age_seconds=rpo,
        kept_copies=kept,
        rpo_over_max_age=judged_rpo,
        picked_by=picked_by,
        newest_age_seconds=newest_age,
        validation=first.validation,
        streams_peak=first.streams_peak,
        streams_final=first.streams_final,
    )


# -- a snapshot tried with plain calls ------------------------------------------------------------


def restore_plain(backend: Backend, streams: int | None = DEFAULT_STREAMS, limit: RateLimit | None = None,
                  max_streams: int = DEFAULT_CEILING, budget: StreamBudget | None = None) -> RestoreFn:
    """Restore with plain function calls (:func:`tasks.restore.restore`), each restore on
    ``streams`` streams of its own (None: as many as its pool finds pay, up to ``max_streams``),
    all of them under ``limit`` and within ``budget`` (the drill's, shared by the tenants it
    restores at once) when given."""

    def restore_into(manifest: SnapshotManifest, data_dir: Path) -> RestoreOutcome:
        request = RestoreRequest(
            backend=backend.url, tenant_id=manifest.tenant_id, snapshot=manifest.snapshot_id, data_dir=data_dir,
            mode=RestoreMode.NEW_CLUSTER, destination=drill_destination(manifest), streams=streams,
            max_streams=max_streams,
            check=CheckLevel.NONE)  # no pre-commit check: the drill checks the restored copy in full (check_plain)
        return restore(request, backend=backend, manifest=manifest, limit=limit, budget=budget)

    return restore_into


def check_plain(backend: Backend, validation: Validation | None = None,
                logger: logging.Logger | logging.LoggerAdapter | None = None) -> CheckFn:
    """The drill's checks of a copy (tasks/checks.check_restored), then the operator's
    ``validation`` of it, when one is set (tasks/validation.validate_copy: the copy's files
    read-only while it runs and hashed again after, what it leaves beside them removed)."""

    def check(manifest: SnapshotManifest, data_dir: Path) -> ValidationResult | None:
        check_restored(data_dir, manifest, hnsw_sizes(backend, manifest))
        if validation is None or not validation.active:
            return None
        files = {sqlite_destination(manifest.tenant_id): manifest.sqlite_checkpoint_checksum} | {
            hnsw_destination(manifest.tenant_id, e.embedding_model): e.checksum for e in manifest.hnsw_snapshots}
        return validate_copy(validation, data_dir, manifest.tenant_id, manifest.snapshot_id, files, "restored",
                             logger)

    return check


def attempt_plain(
    backend: Backend, scratch_root: Path, logger: logging.Logger | logging.LoggerAdapter,
    streams: int | None = DEFAULT_STREAMS, limit: RateLimit | None = None, keep_failed: bool = False,
    validation: Validation | None = None, max_streams: int = DEFAULT_CEILING, budget: StreamBudget | None = None,
) -> AttemptFn:
    """Try snapshots with plain function calls in the caller's own run (a ``drill-tenant`` task or
    flow run, or none): :func:`attempt_snapshot` with :func:`restore_plain` and :func:`check_plain`
    (the operator's ``validation`` too, when one is set).

    A transient backend error in the restore or the check is retried with the tasks' backoff
    (:func:`tasks.retry.retrying`); a restore tried again starts over in the same scratch copy,
    which :func:`tasks.restore.restore` emptied when it rolled the failed try back. Any other
    error is the attempt's finding. Each retry and each attempt's result is a line of ``logger``;
    a failed attempt's line names its copy's files only when ``keep_failed`` keeps the copy
    (:func:`drill_tenant` deletes it otherwise).
    """
    restore, check = restore_plain(backend, streams, limit, max_streams, budget), check_plain(backend, validation, logger)

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
            validated = f", validation {result.validation.short()}" if result.validation else ""
            logger.info("%s: restored %s in %s, checked clean%s", where, units.size(result.bytes),
                        units.duration(result.restore_seconds), validated)
        else:
            logger.warning("%s: restored %s in %s, but the check failed: %s", where, units.size(result.bytes),
                           units.duration(result.restore_seconds), why)
        return result

    return attempt


@task(name="list-snapshots", cache_policy=NO_CACHE, persist_result=False, **RETRY_OPTIONS)
def list_snapshots_task(backend_url: str) -> SnapshotListing:
    """Read every finished snapshot's manifest; transient backend errors are retried."""
    return list_snapshots(open_backend(backend_url))


def drill_plain(
    backend: Backend,
    tenants: Iterable[int] | None = None,
    *,
    max_age_hours: float | None = None,
    scratch_dir: str | Path | None = None,
    keep_failed: bool = False,
    now: float | None = None,
    validation: Validation | None = None,
    pick: SnapshotPick = SnapshotPick.LATEST,
    window_days: float = DEFAULT_WINDOW_DAYS,
    seed: int | None = None,
) -> DrillReport:
    """The drill as plain function calls, one tenant after another, with no Prefect at all: the
    tests' reference and the benchmark's baseline (BENCHMARKS.md row 5). The ``restore-drill``
    flow does the same with several tenants at once, each in a task run of its own, and artifacts
    and events (and picks each tenant's first snapshot the same way). A ``validation`` hook that
    cannot run is refused first."""
    if validation is not None and validation.active:
        check_hook(validation)
    now = time.time() if now is None else now
    seed = drill_seed(seed) if pick is not SnapshotPick.LATEST else None
    listing = list_snapshots(backend)
    root, created = open_scratch_root(scratch_dir)
    attempt = attempt_plain(backend, root, logging.getLogger("memrestore.drill"), keep_failed=keep_failed,
                            validation=validation)
    results = []
    try:
        for tenant_id in tenants_to_drill(listing, tenants):
            candidates = drill_candidates(listing, tenant_id)
            start, picked_by = pick_first(candidates, pick, now=now, window_days=window_days, seed=seed or 0)
            results.append(drill_tenant(
                tenant_id, candidates, attempt,
                backend_url=backend.url, now=now, max_age_hours=max_age_hours,
                keep_failed=keep_failed, unreadable=len(listing.unreadable), start=start, picked_by=picked_by,
            ))
    finally:
        close_scratch_root(root, created)
    return build_report(results, listing.unreadable, seed=seed)
