"""One restore's hold on a data dir: its lock and its marker, each taken once and let go once.

A restore (and an abort) opens a :class:`DataDirHold` with ``with``, and everything it does to
the data dir goes through it:

- the **lock**: an exclusive ``flock`` on the data dir (tasks/marker.py), taken by
  :meth:`DataDirHold.lock` and released when the ``with`` block ends, however it ends;
- the **marker**: created (:meth:`take_marker`) or, for a resume or an abort of a restore whose
  process is gone, adopted (:meth:`adopt_marker`); its phase moved on by :meth:`set_phase`;
  removed by :meth:`drop_marker`, at the instant the caller chooses: the cleanup removes it
  between setting the old data to trash and deleting the trash, the undo once the old data is
  back. A hold whose block ends with an error while its marker is still in phase preflight (the
  mode's checks refused, nothing staged) removes the marker too: such a restore never started.

In every other case the marker stays when the block ends: an interrupted restore (Ctrl-C,
SIGTERM), a failed undo or a failed cleanup leaves it in its phase for ``--resume`` or ``abort``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

from memrestore.tasks.errors import DestinationIOError, MarkerVanishedError
from memrestore.tasks.crash_points import crash_point
from memrestore.tasks.marker import (
    MarkerInfo,
    Phase,
    create_marker,
    fsync_dir,
    lock_data_dir,
    marker_path,
    read_marker,
    unlock_data_dir,
    update_marker,
)


class DataDirHold:
    """A data dir's lock and marker for one restore or abort; use it with ``with``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.locked = False
        #: What the finished restore replaced and deleted (name, bytes), as its cleanup found it
        #: set aside: the outcome lists it.
        self.removed: list[tuple[str, int]] = []
        #: The phase of the marker this hold took or adopted; None while it holds none.
        self.phase: Phase | None = None

    @property
    def marker(self) -> Path:
        return marker_path(self.data_dir)

    def __enter__(self) -> "DataDirHold":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc is not None and self.phase is Phase.PREFLIGHT:
                self.drop_marker()  # refused before anything was staged: as if never started
        finally:
            self.release()

    def lock(self, create: bool = False) -> bool:
        """Take the data dir's lock (creating the data dir first with ``create``); False when
        another restore holds it. A file-system failure is a DestinationIOError."""
        if self.locked:
            return True
        try:
            if create:
                self.data_dir.mkdir(parents=True, exist_ok=True)
            self.locked = lock_data_dir(self.data_dir)
        except OSError as exc:
            raise DestinationIOError("locking the data dir", self.data_dir, exc) from exc
        return self.locked

    def release(self) -> None:
        """Let the lock go (a no-op once released, or if never taken)."""
        if self.locked:
            self.locked = False
            unlock_data_dir(self.data_dir)

    def take_marker(self, info: MarkerInfo) -> None:
        """Create the marker (raises FileExistsError if any marker is there). Locked only."""
        assert self.locked, "the marker is taken under the data dir's lock"
        create_marker(self.data_dir, info)
        self.phase = info.phase
        crash_point("marker-created")

    def adopt_marker(self, info: MarkerInfo, rewrite: bool = True) -> None:
        """Make the marker of a restore whose process is gone this hold's: rewritten as ``info``
        (a resume names itself as the holder), or as it is (an abort). Locked only."""
        assert self.locked, "a marker is adopted under the data dir's lock"
        if rewrite:
            update_marker(self.data_dir, info)
        self.phase = info.phase

    def set_phase(self, phase: Phase) -> None:
        """Record that the restore reached ``phase``; refused if the marker vanished or is no
        longer ours (another process is changing the data dir)."""
        info = read_marker(self.data_dir)
        if info is None:
            raise MarkerVanishedError(self.marker)
        if info.phase is not phase:
            update_marker(self.data_dir, info.model_copy(update={"phase": phase}))
            crash_point(f"phase-{phase.value}")
        self.phase = phase

    def drop_marker(self) -> None:
        """Remove the marker, durably: from here on the service may start on the data dir."""
        self.marker.unlink(missing_ok=True)
        fsync_dir(self.data_dir)
        self.phase = None

    def __repr__(self) -> str:
        state = "locked" if self.locked else "unlocked"
        return f"DataDirHold({os.fspath(self.data_dir)!r}, {state}, marker phase {self.phase})"
