"""Atomic writes: move the verified, staged tenant into place, and (wipe) the old data aside.

Every blob was fsynced and renamed to its final name inside ``.restore-staging/`` by the stage
step; the commit is then a handful of renames on one file system, each made durable with an
fsync of the directory. The marker records the phase, so that an interrupted commit can be
finished (resume) or undone (abort) exactly. Both functions here are idempotent: running them
again after a crash at any instant completes the same end state.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.errors import DestinationIOError, RestoreRefusedError, TenantPathOccupiedError
from tasks.layout import (
    MARKER_NAME,
    OURS_PREFIX,
    Phase,
    aside_dir,
    fsync_dir,
    marker_path,
    read_marker,
    service_entries,
    staging_dir,
    update_marker,
)
from tasks.plan import RestoreMode, tenant_dir_name


def _set_phase(data_dir: Path, phase: Phase) -> None:
    info = read_marker(data_dir)
    if info is None:
        raise RestoreRefusedError(
            f"the restore marker {marker_path(data_dir)} vanished or was replaced mid-restore; "
            "another process is changing this data dir. Stop it, check the data dir, and run "
            "the restore again."
        )
    update_marker(data_dir, info.model_copy(update={"phase": phase}))


def commit_staged(data_dir: Path, tenant_id: int, mode: RestoreMode) -> None:
    """Put the staged tenant at ``data_dir/tenant_<id>``; under wipe_and_restore, first move
    every other service entry into ``.restore-aside/`` (deleted only once the new data is in)."""
    data_dir = Path(data_dir)
    staged = staging_dir(data_dir) / tenant_dir_name(tenant_id)
    final = data_dir / tenant_dir_name(tenant_id)
    try:
        _set_phase(data_dir, Phase.COMMITTING)
        if mode is RestoreMode.WIPE_AND_RESTORE:
            aside = aside_dir(data_dir)
            aside.mkdir(exist_ok=True)
            for name in service_entries(data_dir):
                if name == final.name and not staged.exists():
                    continue  # a resumed commit: this is already the new tenant
                os.rename(data_dir / name, aside / name)
            fsync_dir(aside)
            fsync_dir(data_dir)
        if staged.exists():
            if os.path.islink(final):
                raise TenantPathOccupiedError(tenant_id, final)
            try:
                os.rename(staged, final)  # onto an absent or empty directory: atomic
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise TenantPathOccupiedError(tenant_id, final) from exc
                raise
            fsync_dir(data_dir)
        _set_phase(data_dir, Phase.CLEANUP)
    except OSError as exc:
        raise DestinationIOError("moving the restored data into", data_dir, exc) from exc


def remove_leftovers(data_dir: Path) -> None:
    """Delete our bookkeeping (staging, aside, temp files), then the marker, last."""
    data_dir = Path(data_dir)
    for name in sorted(os.listdir(data_dir)):
        if not name.startswith(OURS_PREFIX) or name == MARKER_NAME:
            continue
        path = data_dir / name
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)  # removes symlinks inside, never follows them
        else:
            os.unlink(path)
    fsync_dir(data_dir)
    marker_path(data_dir).unlink(missing_ok=True)
    fsync_dir(data_dir)


def roll_back(data_dir: Path, tenant_id: int) -> None:
    """Undo an unfinished restore: the data dir's previous contents come back exactly.

    Before the commit, that is only dropping the staged data. Mid-commit, the new tenant dir
    (if it was already moved in) goes back to staging and every entry set aside returns.
    After the commit (phase ``cleanup``) there is nothing to undo: the new data is complete.
    """
    data_dir = Path(data_dir)
    info = read_marker(data_dir)
    if info is not None and info.phase is Phase.CLEANUP:
        raise RestoreRefusedError(
            f"the restore of snapshot {info.snapshot_id!r} in {data_dir} had already put the new "
            "data in place (phase cleanup), so there is nothing to undo; finish it with "
            "`memrestore restore ... --resume`."
        )
    staged = staging_dir(data_dir) / tenant_dir_name(tenant_id)
    final = data_dir / tenant_dir_name(tenant_id)
    aside = aside_dir(data_dir)
    if info is not None and info.phase is Phase.COMMITTING:
        if not staged.exists() and os.path.isdir(final) and not os.path.islink(final):
            staged.parent.mkdir(exist_ok=True)
            os.rename(final, staged)  # the new tenant, moved in before the interruption
        if aside.is_dir():
            for name in sorted(os.listdir(aside)):
                os.rename(aside / name, data_dir / name)
        fsync_dir(data_dir)
    remove_leftovers(data_dir)


@task(name="atomic-writes", cache_policy=NO_CACHE, persist_result=False)
def commit_task(data_dir: str, tenant_id: int, mode: RestoreMode) -> None:
    """Move the verified data into place (never retried: it is local and idempotent)."""
    commit_staged(Path(data_dir), tenant_id, mode)


@task(name="marker-cleanup", cache_policy=NO_CACHE, persist_result=False)
def cleanup_task(data_dir: str) -> None:
    """Delete staging and set-aside data, then the marker."""
    try:
        remove_leftovers(Path(data_dir))
    except OSError as exc:
        raise DestinationIOError("cleaning up after the restore in", Path(data_dir), exc) from exc
