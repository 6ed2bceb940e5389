"""Mode preflight: take the marker atomically, then check the mode's precondition.

The marker is created with O_EXCL *before* the checks, so two restores started together on one
data dir cannot both pass: exactly one creates the marker, the other is refused. A refusal
after the marker was taken removes it again and changes nothing else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from memrestore.tasks.errors import (
    DataDirNotEmptyError,
    DestinationIOError,
    InsufficientSpaceError,
    LeftoverAsideError,
    RestoreInProgressError,
    ResumeRefusedError,
    TenantPathOccupiedError,
    UnsafeDestinationError,
)
from memrestore.tasks.failpoints import crash_point
from memrestore.tasks.layout import (
    MARKER_NAME,
    OURS_PREFIX,
    DeadHolderFn,
    Phase,
    RunRef,
    aside_dir,
    create_marker,
    describe_marker,
    fsync_dir,
    lock_data_dir,
    marker_path,
    new_marker,
    read_marker,
    service_entries,
    unlock_data_dir,
    update_marker,
)
from memrestore.tasks.plan import RestoreMode, RestorePlan

#: Headroom kept free beyond the snapshot's bytes: directory blocks, the marker, and a margin so
#: that the restore does not leave the service's own volume at zero bytes.
SPACE_HEADROOM = 16 * 1024 * 1024


def _check_is_plain_dir(path: Path, what: str) -> bool:
    """True if ``path`` is a real directory, False if absent; refuses symlinks and files."""
    if os.path.islink(path):
        raise UnsafeDestinationError(path, f"a symlink (to {os.readlink(path)}), not the {what}")
    if not os.path.lexists(path):
        return False
    if not os.path.isdir(path):
        raise UnsafeDestinationError(path, f"a file, not the {what}")
    return True


def check_mode(plan: RestorePlan, data_dir: Path, mode: RestoreMode) -> None:
    """Refuse if ``mode``'s precondition does not hold in ``data_dir`` (which exists)."""
    if mode is RestoreMode.NEW_CLUSTER:
        entries = service_entries(data_dir)
        if entries:
            raise DataDirNotEmptyError(data_dir, entries)
    tenant = data_dir / plan.tenant_dir
    if mode is RestoreMode.SINGLE_TENANT and _check_is_plain_dir(tenant, "tenant directory"):
        if os.listdir(tenant):
            raise TenantPathOccupiedError(plan.tenant_id, tenant)
    # wipe_and_restore has no precondition: it replaces whatever is there.


def check_space(plan: RestorePlan, data_dir: Path) -> None:
    """Refuse if the data dir's file system cannot hold the staged snapshot beside the old data."""
    needed = plan.total_bytes
    if needed is None:
        return
    free = shutil.disk_usage(data_dir).free
    if free < needed + SPACE_HEADROOM:
        raise InsufficientSpaceError(data_dir, needed + SPACE_HEADROOM, free)


def _check_leftovers(data_dir: Path) -> None:
    """Deal with bookkeeping an interrupted restore left behind without its marker."""
    aside = aside_dir(data_dir)
    if os.path.isdir(aside) and not os.path.islink(aside) and os.listdir(aside):
        raise LeftoverAsideError(aside)  # a real dir with entries: maybe the only copy of old data
    # Staged copies of snapshot data, a finished restore's trash, temp files: safe to drop.
    for name in os.listdir(data_dir):
        path = data_dir / name
        if name.startswith(OURS_PREFIX) and name != MARKER_NAME and path != aside:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def _check_resumable(plan: RestorePlan, data_dir: Path, mode: RestoreMode, run: RunRef | None,
                     on_dead_holder: DeadHolderFn | None) -> Phase:
    """The phase to resume from, if the marker is ours and names this very restore; the marker
    then names this process as its holder."""
    info = read_marker(data_dir)
    marker = marker_path(data_dir)
    if info is None:
        raise ResumeRefusedError(
            f"cannot resume: marker {marker} was not written by memrestore "
            f"({describe_marker(data_dir)}); the service or an operator put it there. Find out "
            "why before removing it by hand; memrestore will not touch it."
        )
    ours = (info.snapshot_id, info.tenant_id, info.mode)
    asked = (plan.snapshot_id, plan.tenant_id, mode.value)
    if ours != asked:
        raise ResumeRefusedError(
            f"cannot resume: the interrupted restore in {data_dir} is of snapshot "
            f"{info.snapshot_id!r}, tenant {info.tenant_id}, mode {info.mode}, not snapshot "
            f"{plan.snapshot_id!r}, tenant {plan.tenant_id}, mode {mode.value}. Resume it with "
            f"those arguments, or undo it with `memrestore abort --data-dir {data_dir}` first."
        )
    if on_dead_holder is not None:
        on_dead_holder(data_dir, info, "resume")
    me = new_marker(plan.snapshot_id, plan.tenant_id, mode.value, run)
    update_marker(data_dir, info.model_copy(update={
        "pid": me.pid, "host": me.host, "flow_run_id": me.flow_run_id, "prefect_api_url": me.prefect_api_url}))
    return info.phase


def _checks_under_marker(plan: RestorePlan, data_dir: Path, mode: RestoreMode) -> None:
    """The mode's checks, with our marker held; the marker goes if they refuse."""
    try:
        check_mode(plan, data_dir, mode)
        check_space(plan, data_dir)
        _check_leftovers(data_dir)
        info = read_marker(data_dir)
        if info is not None:
            update_marker(data_dir, info.model_copy(update={"phase": Phase.STAGING}))
    except BaseException:
        marker_path(data_dir).unlink(missing_ok=True)
        fsync_dir(data_dir)
        raise


def preflight(
    plan: RestorePlan,
    data_dir: Path,
    mode: RestoreMode,
    dry_run: bool = False,
    resume: bool = False,
    run: RunRef | None = None,
    on_dead_holder: DeadHolderFn | None = None,
) -> Phase | None:
    """Check the mode and take the lock and the marker; with ``dry_run``, check only, write nothing.
    The marker records ``run``, the flow run this restore runs as (if any); ``on_dead_holder``
    hears of a marker whose process died.

    Returns the phase an interrupted restore of this same snapshot reached (``resume`` and a
    marker of ours): staging, committing or cleanup; or None for a fresh restore. On return
    (not dry run) this process holds the data dir's lock; the cleanup or the undo releases it.
    """
    data_dir = Path(data_dir)
    exists = _check_is_plain_dir(data_dir, "data dir")
    marker = marker_path(data_dir)

    if dry_run:
        if os.path.lexists(marker) and not resume:
            raise RestoreInProgressError(marker, describe_marker(data_dir))
        if exists and not os.path.lexists(marker):
            check_mode(plan, data_dir, mode)
            check_space(plan, data_dir)
        return None

    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        locked = lock_data_dir(data_dir)
    except OSError as exc:
        raise DestinationIOError("locking the data dir", data_dir, exc) from exc
    if not locked:
        if os.path.lexists(marker):
            raise RestoreInProgressError(marker, describe_marker(data_dir) + "; its process is still running")
        raise RestoreInProgressError(marker, "starting, or just finishing", locked=True)
    try:
        if resume and os.path.lexists(marker):
            phase = _check_resumable(plan, data_dir, mode, run, on_dead_holder)
            if phase is not Phase.PREFLIGHT:
                return phase
            # Interrupted before its checks passed: nothing was staged; check as a fresh restore.
            _checks_under_marker(plan, data_dir, mode)
            return None
        try:
            create_marker(data_dir, new_marker(plan.snapshot_id, plan.tenant_id, mode.value, run))
            crash_point("marker-created")
        except FileExistsError:
            held = read_marker(data_dir)  # we hold the lock: its restore's process is gone
            if held is not None and on_dead_holder is not None:
                on_dead_holder(data_dir, held, "restore")
            gone = "; its process is gone (nothing holds the data dir's lock)" if held is not None else ""
            raise RestoreInProgressError(marker, describe_marker(data_dir) + gone) from None
        except OSError as exc:
            raise DestinationIOError("taking the restore marker in", data_dir, exc) from exc
        _checks_under_marker(plan, data_dir, mode)
        return None
    except BaseException:
        unlock_data_dir(data_dir)
        raise


@task(name="preflight", cache_policy=NO_CACHE, persist_result=False)
def preflight_task(
    plan: RestorePlan, data_dir: str, mode: RestoreMode, dry_run: bool = False, resume: bool = False,
    run: RunRef | None = None,
) -> Phase | None:
    """Take the lock and the marker, and check the mode's precondition (never retried); a dead
    restore's flow run found on the way is marked Crashed."""
    from memrestore.tasks.orphans import mark_dead_run

    return preflight(plan, Path(data_dir), mode, dry_run, resume, run, mark_dead_run)
