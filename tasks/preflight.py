"""Mode preflight: take the lock and the marker atomically, then check the mode's precondition.

The marker is created atomically (like O_EXCL) *before* the checks, under the data dir's lock, so
two restores started together on one data dir cannot both pass: exactly one creates the marker,
the other is refused. A refusal after the marker was taken removes it again (the
:class:`~memrestore.tasks.hold.DataDirHold` does, as its block ends) and changes nothing else.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from memrestore.tasks.errors import (
    DataDirNotEmptyError,
    DestinationIOError,
    ForeignMarkerError,
    InsufficientSpaceError,
    LeftoverAsideError,
    OtherRestoreError,
    RestoreInProgressError,
    TenantPathOccupiedError,
    UnsafeDestinationError,
)
from memrestore.tasks.hold import DataDirHold
from memrestore.tasks.marker import (
    MARKER_NAME,
    OURS_PREFIX,
    DeadHolderFn,
    Phase,
    RunRef,
    aside_dir,
    describe_marker,
    new_marker,
    read_marker,
    service_entries,
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
            raise DataDirNotEmptyError(data_dir, entries, plan.tenant_id)
    tenant = data_dir / plan.tenant_dir
    if mode is RestoreMode.SINGLE_TENANT and _check_is_plain_dir(tenant, "tenant directory"):
        if os.listdir(tenant):
            raise TenantPathOccupiedError(plan.tenant_id, tenant)
    if mode is RestoreMode.REPLACE_TENANT:
        _check_is_plain_dir(tenant, "tenant directory")  # whatever it holds is replaced, never followed
    # wipe_and_restore has no precondition: it replaces whatever is there.


def check_space(plan: RestorePlan, data_dir: Path) -> None:
    """Refuse if the data dir's file system cannot hold the staged snapshot beside the old data."""
    needed = plan.total_bytes
    if needed is None:
        return
    free = shutil.disk_usage(data_dir).free
    if free < needed + SPACE_HEADROOM:
        raise InsufficientSpaceError(data_dir, needed + SPACE_HEADROOM, free)


def _drop_leftovers(data_dir: Path) -> None:
    """Delete the bookkeeping an interrupted restore left behind without its marker (staged
    copies, a finished restore's trash, temp files); refuse if an aside dir holds data, which may
    be the only copy of the data dir's previous contents."""
    aside = aside_dir(data_dir)
    if os.path.isdir(aside) and not os.path.islink(aside) and os.listdir(aside):
        raise LeftoverAsideError(aside)
    for name in os.listdir(data_dir):
        path = data_dir / name
        if name.startswith(OURS_PREFIX) and name != MARKER_NAME and path != aside:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)


def _adopt_for_resume(plan: RestorePlan, hold: DataDirHold, mode: RestoreMode, run: RunRef | None,
                      on_dead_holder: DeadHolderFn | None) -> Phase:
    """The phase to resume from, if the marker is ours and names this very restore; the hold
    then holds that marker, with this process as its holder."""
    data_dir = hold.data_dir
    info = read_marker(data_dir)
    if info is None:
        raise ForeignMarkerError(hold.marker, describe_marker(data_dir), "resume")
    found = (info.snapshot_id, info.tenant_id, info.mode)
    asked = (plan.snapshot_id, plan.tenant_id, mode.value)
    if found != asked:
        raise OtherRestoreError(data_dir, found, asked)
    if on_dead_holder is not None:
        on_dead_holder(data_dir, info, "resume")
    me = new_marker(plan.snapshot_id, plan.tenant_id, mode.value, run)
    hold.adopt_marker(info.model_copy(update={
        "pid": me.pid, "host": me.host, "flow_run_id": me.flow_run_id, "prefect_api_url": me.prefect_api_url}))
    return info.phase


def _take_marker(plan: RestorePlan, hold: DataDirHold, mode: RestoreMode, run: RunRef | None,
                 on_dead_holder: DeadHolderFn | None) -> None:
    """Create this restore's marker; refused if any marker is there (our lock is held, so the
    restore of a marker of ours is dead: ``on_dead_holder`` hears of it)."""
    data_dir = hold.data_dir
    try:
        hold.take_marker(new_marker(plan.snapshot_id, plan.tenant_id, mode.value, run))
    except FileExistsError:
        held = read_marker(data_dir)
        if held is None:
            raise RestoreInProgressError(hold.marker, describe_marker(data_dir)) from None
        if on_dead_holder is not None:
            on_dead_holder(data_dir, held, "restore")
        raise RestoreInProgressError.gone(hold.marker, describe_marker(data_dir)) from None
    except OSError as exc:
        raise DestinationIOError("taking the restore marker in", data_dir, exc) from exc


def preflight(
    plan: RestorePlan,
    hold: DataDirHold,
    mode: RestoreMode,
    dry_run: bool = False,
    resume: bool = False,
    run: RunRef | None = None,
    on_dead_holder: DeadHolderFn | None = None,
) -> Phase | None:
    """Take the data dir's lock and the marker through ``hold``, and check the mode; with
    ``dry_run``, check only, write nothing. The marker records ``run``, the flow run this restore
    runs as (if any); ``on_dead_holder`` hears of a marker whose process died.

    Returns the phase an interrupted restore of this same snapshot reached (``resume`` and a
    marker of ours): staging, committing or cleanup; or None for a fresh restore. A refusal leaves
    the marker in phase preflight, which the hold removes when its ``with`` block ends.
    """
    data_dir = hold.data_dir
    exists = _check_is_plain_dir(data_dir, "data dir")

    if dry_run:
        if os.path.lexists(hold.marker) and not resume:
            raise RestoreInProgressError(hold.marker, describe_marker(data_dir))
        if exists and not os.path.lexists(hold.marker):
            check_mode(plan, data_dir, mode)
            check_space(plan, data_dir)
        return None

    if not hold.lock(create=True):
        if os.path.lexists(hold.marker):
            raise RestoreInProgressError.running(hold.marker, describe_marker(data_dir))
        raise RestoreInProgressError.locking(hold.marker)
    if resume and os.path.lexists(hold.marker):
        phase = _adopt_for_resume(plan, hold, mode, run, on_dead_holder)
        if phase is not Phase.PREFLIGHT:
            return phase
        # Interrupted before its checks passed: nothing was staged; check as a fresh restore.
    else:
        _take_marker(plan, hold, mode, run, on_dead_holder)
    check_mode(plan, data_dir, mode)
    check_space(plan, data_dir)
    _drop_leftovers(data_dir)
    hold.set_phase(Phase.STAGING)
    return None
