"""Atomic writes, marker cleanup, and undo: moving verified data in, and old data out.

Every blob was fsynced and renamed to its final name inside ``.restore-staging/`` by the stage
step. The commit is then a few renames on one file system, each made durable by an fsync of the
directory, and the marker records the phase. Until the marker is removed, the entries the
commit replaced wait in ``.restore-aside/``, so an interrupted restore can be finished
(``--resume``) or undone (``abort``) exactly, whatever instant it was interrupted at:

    staging     old data untouched                  resume: stage what is missing, commit
                                                    abort:  drop the staging
    committing  entries moving into .restore-aside   resume: finish the renames
                and the new tenant moving in         abort:  new tenant out, old entries back
    cleanup     new data in place, old aside         resume: delete the old, drop the marker
                                                    abort:  as for committing

Each function here is idempotent: running it again after a crash completes the same end state.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from memrestore.tasks.errors import (
    DestinationIOError,
    ForeignMarkerError,
    NothingToAbortError,
    RestoreInProgressError,
    TenantPathOccupiedError,
)
from memrestore.tasks.crash_points import crash_point
from memrestore.tasks.hold import DataDirHold
from memrestore.tasks.marker import (
    MARKER_NAME,
    OURS_PREFIX,
    DeadHolderFn,
    MarkerInfo,
    Phase,
    aside_dir,
    describe_marker,
    entry_bytes,
    fsync_dir,
    is_real_dir,
    is_temp_name,
    leaving_entries,
    read_marker,
    staging_dir,
    trash_dir,
)
from memrestore.tasks.plan import RestoreMode, tenant_dir_name


def commit_staged(hold: DataDirHold, tenant_id: int, mode: RestoreMode) -> None:
    """Put the staged tenant at ``data_dir/tenant_<id>``.

    What it replaces (:func:`leaving_entries`) goes to ``.restore-aside/`` first: under
    wipe_and_restore every service entry, otherwise only the tenant's own dir, if there is one.
    """
    data_dir = hold.data_dir
    staged = staging_dir(data_dir) / tenant_dir_name(tenant_id)
    final = data_dir / tenant_dir_name(tenant_id)
    aside = aside_dir(data_dir)
    try:
        hold.set_phase(Phase.COMMITTING)
        new_is_in = not os.path.lexists(staged)  # a resumed commit may have moved it already
        leaving = leaving_entries(data_dir, tenant_id, mode)
        if new_is_in and final.name in leaving:
            leaving.remove(final.name)
        if leaving:
            try:
                os.mkdir(aside)
            except FileExistsError:
                if not is_real_dir(aside):  # never move the service's data through a symlink
                    raise DestinationIOError("setting old data aside in", aside, OSError(errno.ENOTDIR, "not a directory")) from None
            for name in leaving:
                if mode is RestoreMode.SINGLE_TENANT and (not is_real_dir(final) or os.listdir(final)):
                    raise TenantPathOccupiedError(tenant_id, final)  # it changed since preflight
                os.rename(data_dir / name, aside / name)
                crash_point("moved-aside")
            fsync_dir(aside)
            fsync_dir(data_dir)
        if not new_is_in:
            try:
                os.rename(staged, final)
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise TenantPathOccupiedError(tenant_id, final) from exc
                raise
            fsync_dir(data_dir)
            crash_point("tenant-moved-in")
        hold.set_phase(Phase.CLEANUP)
    except OSError as exc:
        raise DestinationIOError("moving the restored data into", data_dir, exc) from exc


def _remove(path: Path) -> None:
    if is_real_dir(path):
        shutil.rmtree(path)  # removes symlinks inside, never follows them
    elif os.path.lexists(path):
        os.unlink(path)


def remove_leftovers(hold: DataDirHold) -> None:
    """Finish: drop the staging, then the marker, then the old data.

    The old entries are renamed to ``.restore-trash`` before the marker goes, and deleted
    after: until the marker is gone an abort can still put them back, and once it is gone a
    trash left by a crash is plainly a finished restore's garbage (the next preflight drops it).
    """
    data_dir = hold.data_dir
    for name in sorted(os.listdir(data_dir)):
        if name.startswith(OURS_PREFIX) and name not in (MARKER_NAME, aside_dir(data_dir).name, trash_dir(data_dir).name):
            _remove(data_dir / name)
    old = aside_dir(data_dir) if is_real_dir(aside_dir(data_dir)) else trash_dir(data_dir)  # a resumed cleanup: trash
    if is_real_dir(old):
        hold.removed = [(name, entry_bytes(old / name)) for name in sorted(os.listdir(old))]
    if os.path.lexists(aside_dir(data_dir)):
        if os.path.lexists(trash_dir(data_dir)):
            _remove(trash_dir(data_dir))
        os.rename(aside_dir(data_dir), trash_dir(data_dir))
    fsync_dir(data_dir)
    crash_point("cleanup-trashed")
    hold.drop_marker()
    crash_point("marker-removed")
    _remove(trash_dir(data_dir))
    fsync_dir(data_dir)


def clean_up(hold: DataDirHold) -> None:
    """:func:`remove_leftovers`, a file-system failure a DestinationIOError (the new data is in
    place, and a resume finishes the cleanup)."""
    try:
        remove_leftovers(hold)
    except OSError as exc:
        raise DestinationIOError("cleaning up after the restore in", hold.data_dir, exc) from exc


def roll_back(hold: DataDirHold, tenant_id: int) -> None:
    """Undo an unfinished restore: the data dir's previous contents come back exactly.

    Before the commit that is only dropping the staged data. From the commit on, the new tenant
    dir (if it was moved in) goes back to staging and every entry set aside returns.
    """
    data_dir = hold.data_dir
    info = read_marker(data_dir)
    staged = staging_dir(data_dir) / tenant_dir_name(tenant_id)
    final = data_dir / tenant_dir_name(tenant_id)
    if info is not None and info.phase in (Phase.COMMITTING, Phase.CLEANUP):
        if not os.path.lexists(staged) and is_real_dir(final):
            staged.parent.mkdir(exist_ok=True)
            os.rename(final, staged)  # the new tenant, moved in before the interruption
        for holder in (trash_dir(data_dir), aside_dir(data_dir)):
            if is_real_dir(holder):
                for name in sorted(os.listdir(holder)):
                    os.rename(holder / name, data_dir / name)
        fsync_dir(data_dir)
        ours = [n for n in os.listdir(data_dir) if n.startswith(OURS_PREFIX) and n != MARKER_NAME]
    else:
        # Nothing was moved yet: drop only what this restore made. An aside dir here is
        # not ours (preflight refuses to start beside one holding data): never touch it.
        ours = [n for n in os.listdir(data_dir) if n == staging_dir(data_dir).name or is_temp_name(n)]
    for name in sorted(ours):
        _remove(data_dir / name)
    fsync_dir(data_dir)
    hold.drop_marker()


def abort(data_dir: Path, on_dead_holder: DeadHolderFn | None = None) -> MarkerInfo:
    """Roll back the interrupted restore in ``data_dir``; returns what its marker said.
    ``on_dead_holder`` hears of the marker first (its restore's process is gone)."""
    with DataDirHold(data_dir) as hold:
        if not os.path.lexists(hold.marker):
            if is_real_dir(hold.data_dir) and hold.lock():  # no restore running: sweep a finished one's leftovers
                for name in os.listdir(hold.data_dir):
                    if name == trash_dir(hold.data_dir).name or is_temp_name(name):
                        _remove(hold.data_dir / name)
            raise NothingToAbortError(hold.data_dir)
        if not hold.lock():
            raise RestoreInProgressError.running(hold.marker, describe_marker(hold.data_dir))
        info = read_marker(hold.data_dir)
        if info is None:
            raise ForeignMarkerError(hold.marker, describe_marker(hold.data_dir), "abort")
        if on_dead_holder is not None:
            on_dead_holder(hold.data_dir, info, "abort")
        hold.adopt_marker(info, rewrite=False)
        try:
            roll_back(hold, info.tenant_id)
        except OSError as exc:
            raise DestinationIOError("rolling back the restore in", hold.data_dir, exc) from exc
        return info
