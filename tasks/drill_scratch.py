"""A drill's scratch dirs: where it restores the snapshots it tries, and their removal.

A scratch copy lives in ``<scratch_dir>/tenant-<id>-<snapshot>-<random>/`` and is deleted once
checked, unless the tenant failed and ``keep_failed`` is set; a scratch dir the drill created
itself (none was given) is removed at the end when nothing was kept in it. A reason that named
a file of a copy since deleted says so instead (:func:`said_deleted`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from memrestore.backends.manifest import SnapshotManifest
from memrestore.tasks.errors import ScratchDirError

#: The name a scratch dir the drill creates itself starts with (in the system's temp dir).
SCRATCH_PREFIX = "memrestore-drill-"


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


#: How a file of a deleted copy is named in a reason: where it was within the copy, and that the
#: copy is gone (the drill's own words for keeping it: --keep-failed, keep_failed in the UI).
DELETED = "(in a scratch copy since deleted; --keep-failed keeps failed copies)"
_TRAILING = ".,;:)'\""


def said_deleted(text: str | None, copy: str | Path) -> str | None:
    """``text`` with every path inside the scratch copy ``copy``, which has just been deleted,
    told as the file it was within the copy and that the copy is gone:
    ``.../tenant-5-snap-x1y2/tenant_5/data.sqlite`` becomes ``tenant_5/data.sqlite (in a scratch
    copy since deleted; --keep-failed keeps failed copies)``."""
    if not text:
        return text

    def told(match: re.Match) -> str:
        inside = match.group(1) or ""
        tail = inside[len(inside.rstrip(_TRAILING)):]
        inside = inside[:len(inside) - len(tail)].lstrip("/")
        if not inside:
            return f"a scratch copy since deleted (--keep-failed keeps failed copies){tail}"
        return f"{inside} {DELETED}{tail}"

    return re.sub(re.escape(str(copy)) + r"(/\S*)?", told, text)
