"""Where memrestore keeps its own bookkeeping inside a data dir, and the marker it holds.

Everything of ours sits at the data dir's top level under a name starting with ``.restore``
(FORMAT.md); every other entry belongs to the service::

    .restore-in-progress    the marker (JSON: who holds it, which snapshot, which phase)
    .restore-staging/       new data, downloaded and verified, in the final layout
    .restore-aside/         the entries the commit replaced (all of them under wipe_and_restore),
                            kept until the restore is finished so that an abort can put them back
    .restore-trash/         the same, once the restore is done: deleted right after the marker

While a restore runs, its process also holds an exclusive ``flock`` on the data dir itself: the
kernel drops it when the process dies, however it dies, so "is that restore still running?" has
an exact answer and a resume or abort never takes over a live restore.

The service refuses to start while the marker exists; any marker blocks a new restore, whatever
its content (the service itself may write a bare snapshot id into it).
"""

from __future__ import annotations

import datetime
import enum
import fcntl
import os
import socket
import stat
import threading
import uuid
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from memrestore.backends.errors import shown
from memrestore.tasks.modes import RestoreMode
from memrestore.tasks.plan import tenant_dir_name

OURS_PREFIX = ".restore"
MARKER_NAME = ".restore-in-progress"
STAGING_NAME = ".restore-staging"
ASIDE_NAME = ".restore-aside"
TRASH_NAME = ".restore-trash"
MARKER_TMP_NAME = ".restore-marker.tmp"


class Phase(str, enum.Enum):
    """Where a restore is: what an interrupted one left behind depends on it."""

    PREFLIGHT = "preflight"    # marker taken; the mode's checks have not passed yet
    STAGING = "staging"        # old data untouched; new data partly staged
    COMMITTING = "committing"  # renames under way: resume finishes them, abort undoes them
    CLEANUP = "cleanup"        # new data in place; old data still aside until the marker goes


class RunRef(BaseModel):
    """The Prefect flow run a restore runs as, recorded in its marker."""

    flow_run_id: str
    api_url: str | None = None


class MarkerInfo(BaseModel):
    tool: str = "memrestore"
    snapshot_id: str
    tenant_id: int
    mode: str
    phase: Phase = Phase.PREFLIGHT
    pid: int
    host: str
    started_at: str
    #: The restore-snapshot flow run holding the marker, and the Prefect API it reports to: the
    #: next command to find the marker with no live holder marks that run Crashed.
    flow_run_id: str | None = None
    prefect_api_url: str | None = None


#: Told of a marker of ours whose process is gone (this process holds the data dir's lock): the
#: data dir, what the marker says, and what found it ("resume", "restore", "abort"). The flows
#: pass one that marks the dead restore's flow run Crashed (tasks/dead_restores.py).
DeadHolderFn = Callable[[Path, MarkerInfo, str], None]


def marker_path(data_dir: Path) -> Path:
    return data_dir / MARKER_NAME


def staging_dir(data_dir: Path) -> Path:
    return data_dir / STAGING_NAME


def aside_dir(data_dir: Path) -> Path:
    return data_dir / ASIDE_NAME


def is_temp_name(name: str) -> bool:
    """Our temp files (marker writes): always safe to delete when no restore holds the lock."""
    return name.startswith(OURS_PREFIX) and name.endswith(".tmp")


def trash_dir(data_dir: Path) -> Path:
    return data_dir / TRASH_NAME


def service_entries(data_dir: Path) -> list[str]:
    """Names in the data dir that belong to the service (everything not ``.restore*``)."""
    return sorted(name for name in os.listdir(data_dir) if not name.startswith(OURS_PREFIX))


def is_real_dir(path: Path) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def leaving_entries(data_dir: Path, tenant_id: int, mode: RestoreMode) -> list[str]:
    """The entries of ``data_dir`` that a restore in ``mode`` replaces (sets aside, then deletes
    once the new tenant is in place): under wipe_and_restore every service entry; otherwise the
    tenant's own dir, if there is one (empty, under single_tenant, which refuses otherwise)."""
    if mode is RestoreMode.WIPE_AND_RESTORE:
        return service_entries(data_dir)
    final = data_dir / tenant_dir_name(tenant_id)
    return [final.name] if os.path.lexists(final) else []


def replaced_by(data_dir: Path, tenant_id: int, mode: RestoreMode) -> list[tuple[str, int]]:
    """What a restore of ``tenant_id`` in ``mode`` would delete from ``data_dir`` as it stands
    now: each entry's name and bytes (for a dry run's plan and the command line's question)."""
    if not is_real_dir(data_dir):
        return []
    return [(name, entry_bytes(data_dir / name)) for name in leaving_entries(data_dir, tenant_id, mode)]


def entry_bytes(path: Path) -> int:
    """The bytes of the files under ``path`` (a file, or a tree walked without following links)."""
    if not is_real_dir(path):
        return os.lstat(path).st_size if os.path.lexists(path) else 0
    total = 0
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return total


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_marker(snapshot_id: str, tenant_id: int, mode: str, run: RunRef | None = None) -> MarkerInfo:
    return MarkerInfo(
        snapshot_id=snapshot_id,
        tenant_id=tenant_id,
        mode=mode,
        flow_run_id=run.flow_run_id if run else None,
        prefect_api_url=run.api_url if run else None,
        pid=os.getpid(),
        host=socket.gethostname(),
        started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )


def create_marker(data_dir: Path, info: MarkerInfo) -> None:
    """Create the marker atomically, complete: raises FileExistsError if any marker is there.

    The content is written to a temp file first and hard-linked into place: link(2) fails if
    the name exists, like O_EXCL, and a marker never exists without its content (a crash
    between create and write would otherwise leave an empty marker nobody can claim).
    """
    tmp = data_dir / f"{MARKER_NAME}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(info.model_dump_json().encode())
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, marker_path(data_dir))
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(data_dir)


_held: dict[str, int] = {}
_held_lock = threading.Lock()


def lock_data_dir(data_dir: Path) -> bool:
    """Take this process's exclusive lock on ``data_dir``; False if another process holds it."""
    key = os.path.realpath(data_dir)
    with _held_lock:
        if key in _held:
            return False  # another restore in this same process (a drill's thread, say)
        fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        _held[key] = fd
        return True


def unlock_data_dir(data_dir: Path) -> None:
    """Release the lock taken by :func:`lock_data_dir` (a no-op if not held)."""
    with _held_lock:
        fd = _held.pop(os.path.realpath(data_dir), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor drops the flock


def update_marker(data_dir: Path, info: MarkerInfo) -> None:
    """Rewrite the marker in place atomically: it is present at every instant."""
    tmp = data_dir / MARKER_TMP_NAME
    with open(tmp, "wb") as f:
        f.write(info.model_dump_json().encode())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker_path(data_dir))
    fsync_dir(data_dir)


#: A marker of ours is a few hundred bytes; reading more would only serve a hostile one.
MARKER_READ_LIMIT = 4096


def _read_marker_file(data_dir: Path) -> bytes | str | None:
    """The marker's first bytes; a string describing it when it is not a regular file; None
    when absent. Never follows a symlink and never blocks (a FIFO planted as the marker)."""
    path = marker_path(data_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if os.path.islink(path):
            return f"a symlink to {os.readlink(path)!r}, not written by memrestore"
        return f"unreadable ({exc.strerror}), not written by memrestore"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            return f"{kind}, not written by memrestore"
        return os.read(fd, MARKER_READ_LIMIT)
    except OSError as exc:
        return f"unreadable ({exc.strerror}), not written by memrestore"
    finally:
        os.close(fd)


def read_marker(data_dir: Path) -> MarkerInfo | None:
    """The marker's content if it is ours; ``None`` if it is absent or was not written by us."""
    raw = _read_marker_file(data_dir)
    if not isinstance(raw, bytes):
        return None
    try:
        return MarkerInfo.model_validate_json(raw)
    except ValueError:
        return None


def describe_marker(data_dir: Path) -> str:
    """A short account of who holds the marker, for messages."""
    raw = _read_marker_file(data_dir)
    if raw is None:
        return "gone by now"
    if isinstance(raw, str):
        return raw
    try:
        info = MarkerInfo.model_validate_json(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        return f"not written by memrestore; it reads {shown(text)}" if text else "empty, not written by memrestore"
    return (
        f"memrestore restore of snapshot {info.snapshot_id!r} (tenant {info.tenant_id}, "
        f"{info.mode}) started {info.started_at} by pid {info.pid} on {info.host}, "
        f"phase {info.phase.value}"
    )
