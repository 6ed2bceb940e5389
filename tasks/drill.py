"""Restore drills: prove, tenant by tenant, that the backups really restore, and how old they are.

For each tenant a drill restores the latest snapshot (by ``created_at_unix_micros``) into a fresh
scratch dir, checks what arrived, measures it, and deletes the copy. When the latest snapshot
fails, it walks back to older ones until one restores and checks clean: that one is the tenant's
last good snapshot, and its age is the recovery point the tenant really has.

The logic is plain functions: the checks on a restored copy, the snapshots to try and their
order, the age rule, the walk back, the report. How one snapshot is tried is passed in. The
drills use :func:`attempt_plain`: :func:`tasks.execute.execute` and the checks as plain calls, a
transient backend error retried with backoff, each attempt one log line. The ``restore-drill``
flow makes each tenant one ``drill-tenant`` task run (in a fleet, one ``drill-tenant`` flow run)
and restores inside it, with no ``restore-snapshot`` subflow: a subflow per restore cost ~1.7 s
of orchestration per tenant against ~25 ms of restore work (BENCHMARKS.md, row 5).
:func:`drill_plain` is the same drill with no Prefect at all.

A scratch copy lives in ``<scratch_dir>/tenant-<id>-<snapshot>-<random>/`` and is deleted once
checked, unless the tenant failed and ``keep_failed`` is set; a scratch dir the drill created
itself (none was given) is removed at the end when nothing was kept in it.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Literal, Mapping, Sequence, overload

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from memrestore.backends import Backend, SnapshotListing, list_snapshots, open_backend
from memrestore.backends.errors import RestoreError
from memrestore.backends.manifest import SnapshotManifest
from memrestore.tasks.errors import RestoredCopyCheckError, ScratchDirError
from memrestore.backends.streams import DEFAULT_STREAMS, RateLimit
from memrestore.tasks.execute import execute
from memrestore.tasks.outcome import RestoreOutcome
from memrestore.tasks.plan import DestinationState, RestoreMode, hnsw_destination, sqlite_destination
from memrestore.tasks.retry import RETRIES, RETRY_OPTIONS, retrying
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
#: How many of ``integrity_check``'s complaints a reason quotes (it can list a hundred).
INTEGRITY_PROBLEMS_SHOWN = 3

#: The event a failed tenant emits; a Prefect automation on it can page someone.
DRILL_FAILED_EVENT = "memrestore.drill.failed"
SCRATCH_PREFIX = "memrestore-drill-"
MICROS_PER_SECOND = 1_000_000
SECONDS_PER_HOUR = 3600
BYTES_PER_MB = 1_000_000

#: Where :func:`drill_plain` logs its attempts (silent unless the application configures logging).
_log = logging.getLogger(__name__)
_log.addHandler(logging.NullHandler())


# -- the checks on a restored copy ------------------------------------------------------------


def check_sqlite_integrity(path: Path) -> None:
    """``PRAGMA integrity_check`` on the database at ``path``, opened read-only, must say ``ok``."""
    if not path.is_file():
        raise RestoredCopyCheckError(
            f"the restored SQLite checkpoint {path} is missing; the restore reported success "
            "without writing it. Run the drill again with --keep-failed and inspect the copy."
        )
    try:
        db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            rows = [row[0] for row in db.execute("PRAGMA integrity_check")]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    if rows != ["ok"]:
        shown = "; ".join(str(r) for r in rows[:INTEGRITY_PROBLEMS_SHOWN])
        more = f" (and {len(rows) - INTEGRITY_PROBLEMS_SHOWN} more)" if len(rows) > INTEGRITY_PROBLEMS_SHOWN else ""
        raise RestoredCopyCheckError(
            f"SQLite integrity_check of the restored checkpoint {path} failed: {shown}{more}. The "
            "bytes match the snapshot's checksum, so the checkpoint was damaged when the backup "
            "was taken: restore an older snapshot, and check how the service writes checkpoints."
        )


def check_tables(path: Path, tables: Iterable[str]) -> None:
    """Every table in ``tables`` (the manifest's ``table_schema_versions``) exists in the database."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        raise RestoredCopyCheckError(f"cannot list the tables of the restored checkpoint {path}: {exc}") from exc
    finally:
        db.close()
    missing = sorted(set(tables) - present)
    if missing:
        raise RestoredCopyCheckError(
            f"the restored checkpoint {path} lacks table(s) {', '.join(repr(t) for t in missing)} "
            f"that the manifest's table_schema_versions names (it has: "
            f"{', '.join(sorted(present)) or 'no tables'}). The checkpoint does not match its "
            "manifest: restore an older snapshot, and check the service's backup of this tenant."
        )


def hnsw_sizes(backend: Backend, manifest: SnapshotManifest) -> dict[str, int]:
    """The size the backend reports for each HNSW blob, by content key."""
    return {e.content_key: backend.object_size(e.content_key) for e in manifest.hnsw_snapshots}


def check_hnsw_files(data_dir: Path, manifest: SnapshotManifest, reported_sizes: Mapping[str, int]) -> None:
    """Every HNSW file is where FORMAT.md puts it, with the size the backend reported."""
    for entry in manifest.hnsw_snapshots:
        path = data_dir / hnsw_destination(manifest.tenant_id, entry.embedding_model)
        expected = reported_sizes[entry.content_key]
        if not path.is_file():
            raise RestoredCopyCheckError(
                f"the HNSW file of model {entry.embedding_model!r} is missing at {path} after the "
                "restore reported success. Run the drill again with --keep-failed and inspect the copy."
            )
        actual = path.stat().st_size
        if actual != expected:
            raise RestoredCopyCheckError(
                f"the restored HNSW file {path} (model {entry.embedding_model!r}) is {actual} bytes, "
                f"but the backend reports {expected} bytes for {entry.content_key!r}. The copy is "
                "incomplete or the object changed during the drill: run the drill again, and "
                "restore an older snapshot if it fails the same way."
            )


def check_restored(data_dir: Path, manifest: SnapshotManifest, reported_sizes: Mapping[str, int]) -> None:
    """All of a restored copy's checks; the first that fails raises RestoredCopyCheckError."""
    sqlite_path = data_dir / sqlite_destination(manifest.tenant_id)
    check_sqlite_integrity(sqlite_path)
    check_tables(sqlite_path, manifest.table_schema_versions)
    check_hnsw_files(data_dir, manifest, reported_sizes)


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


def hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / SECONDS_PER_HOUR:.1f} h"


def stale_reason(tenant_id: int, age_seconds: float, max_age_hours: float | None) -> str | None:
    """Why the latest snapshot is too old, or None when it is recent enough (or no limit is set)."""
    if max_age_hours is None or age_seconds <= max_age_hours * SECONDS_PER_HOUR:
        return None
    return (
        f"latest snapshot is {hours(age_seconds)} old, above --max-age-hours {max_age_hours:g}: "
        f"check that backups of tenant {tenant_id} are still being taken."
    )


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
            "the tenant id, and that this tenant's backups run (`memrestore snapshots --backend URL "
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


# -- scratch copies -----------------------------------------------------------------------------


def open_scratch_root(scratch_dir: str | Path | None) -> tuple[Path, bool]:
    """The directory scratch copies go in, and whether the drill created it (and may remove it)."""
    if scratch_dir is None:
        return Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX)), True
    root = Path(scratch_dir).expanduser().absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ScratchDirError(root, "it exists and is not a directory") from None
    except OSError as exc:
        raise ScratchDirError(root, f"creating it failed ({exc.strerror or exc})") from exc
    if not root.is_dir():
        raise ScratchDirError(root, "it is not a directory")
    if not os.access(root, os.W_OK | os.X_OK):
        raise ScratchDirError(root, "this user cannot create entries in it")
    return root, False


def close_scratch_root(root: Path, created: bool) -> None:
    """Remove a scratch dir the drill created, if nothing was kept in it."""
    if created:
        try:
            root.rmdir()
        except OSError:
            pass  # a kept copy is in it: the report names it


def new_scratch_copy(root: Path, manifest: SnapshotManifest) -> Path:
    """A fresh, empty directory for one restore (new_cluster accepts an empty data dir)."""
    try:
        return Path(tempfile.mkdtemp(prefix=f"tenant-{manifest.tenant_id}-{manifest.snapshot_id}-", dir=root))
    except OSError as exc:
        raise ScratchDirError(root, f"creating a directory in it failed ({exc.strerror or exc})") from exc


def discard_scratch_copy(path: str | Path) -> None:
    shutil.rmtree(path)


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
    judged, except a failed one when ``keep_failed`` is set.
    """
    if not candidates:
        return no_snapshot_result(tenant_id, backend_url, unreadable)
    latest = candidates[0]
    age = snapshot_age_seconds(latest, now)
    first = attempt(latest)
    reasons = [] if first.ok else [first.reason or "the restore failed"]
    stale = stale_reason(tenant_id, age, max_age_hours)
    if stale:
        reasons.append(stale)
    kept: list[str] = []

    def judged(result: AttemptResult, failed: bool) -> None:
        if failed and keep_failed:
            kept.append(result.scratch)
        else:
            discard_scratch_copy(result.scratch)

    judged(first, failed=bool(reasons))
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
    return TenantDrillResult(
        tenant_id=tenant_id,
        snapshot_id=latest.snapshot_id,
        status="failed" if reasons else "ok",
        reason=" ".join(reasons) or None,
        restore_seconds=first.restore_seconds,
        snapshot_age_seconds=age,
        bytes=first.bytes,
        last_good_snapshot_id=last_good.snapshot_id if last_good else None,
        last_good_age_seconds=snapshot_age_seconds(last_good, now) if last_good else None,
        kept_copies=kept,
    )


# -- a whole drill with no Prefect ----------------------------------------------------------------


def restore_plain(backend: Backend, streams: int = DEFAULT_STREAMS, limit: RateLimit | None = None) -> RestoreFn:
    """Restore with plain function calls (:func:`tasks.execute.execute`), each restore on
    ``streams`` streams of its own, all of them under ``limit`` (the drill's, shared by the
    tenants it restores at once) when one is given."""

    def restore(manifest: SnapshotManifest, data_dir: Path) -> RestoreOutcome:
        plan = validate(manifest, drill_destination(manifest), backend.url)
        with Transfer(streams, limit=limit) as transfer:
            return execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER, transfer=transfer)

    return restore


def check_plain(backend: Backend) -> CheckFn:
    def check(manifest: SnapshotManifest, data_dir: Path) -> None:
        check_restored(data_dir, manifest, hnsw_sizes(backend, manifest))

    return check


def attempt_plain(
    backend: Backend, scratch_root: Path, logger: logging.Logger | logging.LoggerAdapter = _log,
    streams: int = DEFAULT_STREAMS, limit: RateLimit | None = None,
) -> AttemptFn:
    """Try snapshots with plain function calls in the caller's own run (a ``drill-tenant`` task or
    flow run, or none): :func:`attempt_snapshot` with :func:`restore_plain` and :func:`check_plain`.

    A transient backend error in the restore or the check is retried with the tasks' backoff
    (:func:`tasks.retry.retrying`); a restore tried again starts over in the same scratch copy,
    which :func:`tasks.execute.execute` emptied when it rolled the failed try back. Any other
    error is the attempt's finding. Each retry and each attempt's result is a line of ``logger``.
    """
    restore, check = restore_plain(backend, streams, limit), check_plain(backend)

    def attempt(manifest: SnapshotManifest) -> AttemptResult:
        def on_retry(step: str):
            def log(exc: Exception, failed: int, wait: float) -> None:
                logger.warning("tenant %s, snapshot %s: the %s failed (try %d of %d), trying again in %.1f s: %s",
                               manifest.tenant_id, manifest.snapshot_id, step, failed, RETRIES + 1, wait, exc)

            return log

        result = attempt_snapshot(manifest, scratch_root, retrying(restore, on_retry=on_retry("restore")),
                                  retrying(check, on_retry=on_retry("check")))
        where = f"tenant {manifest.tenant_id}, snapshot {manifest.snapshot_id}"
        if not result.restored:
            logger.warning("%s: the restore failed: %s", where, result.reason)
        elif result.ok:
            logger.info("%s: restored %d bytes in %.3f s, checked clean", where, result.bytes, result.restore_seconds)
        else:
            logger.warning("%s: restored %d bytes in %.3f s, but the check failed: %s",
                           where, result.bytes, result.restore_seconds, result.reason)
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
    attempt = attempt_plain(backend, root)
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
