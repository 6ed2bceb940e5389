"""A restore's stop request: set when its process is told to stop (Ctrl-C, SIGTERM), read by the
threads that stage blobs, so that they stop at their next chunk instead of finishing the download.

Only the main thread receives a signal; the staging threads would otherwise carry on writing
until their blobs were complete, and the process would wait for them before it could exit. A
stopped restore keeps its marker and its phase: ``--resume`` continues it, ``abort`` undoes it.
"""

from __future__ import annotations

import threading

_stop = threading.Event()


class StopRequested(KeyboardInterrupt):
    """Raised in a staging thread once its process was asked to stop."""

    def __init__(self) -> None:
        super().__init__("the restore's process was asked to stop")


def request_stop() -> None:
    """Ask every restore of this process to stop at its next chunk (never undone: the process is
    ending)."""
    _stop.set()


def check() -> None:
    """Raise :class:`StopRequested` if the process was asked to stop."""
    if _stop.is_set():
        raise StopRequested()
