"""A restore's sequence after its preflight, written once for the ``restore-snapshot`` flow and for
the plain path (:func:`memrestore.tasks.execute.execute`, which the drills use): stage or recheck,
check the staged copy, commit, undo on failure, clean up, all under the restore's
:class:`~memrestore.tasks.hold.DataDirHold` (which its caller opened for the preflight, and which
lets the data dir's lock go once, when the caller's ``with`` block ends).

The two callers differ only in how each step runs (the flow's as Prefect task runs, the plain
path's as calls), so they pass the steps in; what a failure means and how it is reported is here:

- told to stop (Ctrl-C, SIGTERM): the staging threads are asked to stop at their next chunk, and
  nothing is undone (an undo could itself be cut short); the marker keeps its phase for a resume
  or an abort;
- any other failure before the cleanup: the restore is undone; if the undo fails too, the marker
  stays and :class:`RollbackFailedError` names both failures;
- a failure of the cleanup (the new data is in place): :class:`DestinationIOError`, the marker
  kept in phase cleanup, so that a resume finishes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from prefect.exceptions import TerminationSignal

from memrestore.tasks.commit import remove_leftovers, roll_back
from memrestore.tasks.errors import DestinationIOError, RollbackFailedError
from memrestore.tasks.hold import DataDirHold
from memrestore.tasks.interrupt import request_stop
from memrestore.tasks.stage import StagedItem


def is_interrupt(exc: BaseException) -> bool:
    """Ctrl-C, SIGTERM (Prefect's TerminationSignal, or ours), a stop request: the process is
    being told to stop, not the restore failing."""
    return isinstance(exc, (KeyboardInterrupt, TerminationSignal))


def undo(hold: DataDirHold, tenant_id: int, cause: BaseException) -> None:
    """Undo the unfinished restore after ``cause``; if even that fails, keep the marker and say
    what is left (RollbackFailedError, from ``cause``)."""
    try:
        roll_back(hold, tenant_id)
    except Exception as undo_exc:  # noqa: BLE001 - reported together with the first failure
        raise RollbackFailedError(hold.data_dir, cause, undo_exc) from cause


def clean_up(hold: DataDirHold) -> None:
    """Drop the staging, the marker, then the old data; a file-system failure is a
    DestinationIOError (the new data is in place, and a resume finishes the cleanup)."""
    try:
        remove_leftovers(hold)
    except OSError as exc:
        raise DestinationIOError("cleaning up after the restore in", hold.data_dir, exc) from exc


@dataclass
class Steps:
    """How each step runs: ``stage`` stages (or, after an interrupted commit, rechecks) every item
    and returns them; ``check`` checks the staged copy and returns its seconds (None when there was
    nothing to check); ``commit`` moves it into place; ``cleanup`` finishes."""

    stage: Callable[[], list[StagedItem]]
    check: Callable[[], float | None]
    commit: Callable[[], None]
    cleanup: Callable[[DataDirHold], None] = clean_up


def run(hold: DataDirHold, tenant_id: int, steps: Steps,
        on_failure: Callable[[BaseException], None] | None = None) -> tuple[list[StagedItem], float | None]:
    """Stage, check, commit and clean up with ``steps``, in the data dir ``hold`` holds; undo on
    failure (``on_failure`` is told of it after the undo). Returns what was staged and the
    check's seconds."""
    try:
        staged = steps.stage()
        check_seconds = steps.check()
        steps.commit()
    except BaseException as exc:
        if is_interrupt(exc):
            request_stop()
            raise
        undo(hold, tenant_id, exc)
        if on_failure is not None:
            on_failure(exc)
        raise
    steps.cleanup(hold)
    return staged, check_seconds
