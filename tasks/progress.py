"""Byte progress of a restore, for whoever is watching: a :class:`Listener` (the CLI's progress
bar) and the Prefect UI (progress artifacts of a run, :func:`bytes_artifact`).

Library code reports; it never draws. There is one route from what reports (a
:class:`~tasks.transfer.Transfer`, :func:`tasks.measure.measure_plan`,
:func:`tasks.stage.hash_item`) to whoever watches: a flow's parameters are JSON, so a caller
that runs a flow (the CLI) cannot hand it a listener; it watches instead, for the span of the
call::

    with progress.watching(progress.Listener(on_bytes=bar_advance, on_total=bar_total)):
        run(restore_snapshot(...))

and what reports tells the listener watching (:func:`current`). The listener lives in a
:class:`contextvars.ContextVar`, so it follows the run into the threads Prefect's task runner
starts (they run in a copy of the caller's context) and into an event loop started from the
block, while a restore run by another thread of the process, not started from the block, does
not see it.
"""

from __future__ import annotations

import contextvars
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate

from memrestore.tasks import units


@dataclass(frozen=True, slots=True)
class Listener:
    """Who is told of a restore's progress; either callable may be left out.

    ``on_bytes(n)``: ``n`` more bytes received (negative when a retried item starts over), called
    from download threads, so it must be thread-safe (rich's Progress is). ``on_total(n)``: the
    restore will fetch ``n`` bytes in all, called once the objects are measured."""

    on_bytes: Callable[[int], None] | None = None
    on_total: Callable[[int], None] | None = None

    def advance(self, nbytes: int) -> None:
        if self.on_bytes is not None:
            self.on_bytes(nbytes)

    def expect(self, total_bytes: int) -> None:
        if self.on_total is not None:
            self.on_total(total_bytes)


#: The listener of nobody watching: told everything, tells no one.
NOBODY = Listener()

_watching: contextvars.ContextVar[Listener] = contextvars.ContextVar("memrestore_progress",
                                                                   default=NOBODY)


@contextmanager
def watching(listener: Listener) -> Iterator[Listener]:
    """Make ``listener`` the one told of the progress of every restore run inside the block (in
    this context, and the threads and event loops it starts)."""
    token = _watching.set(listener)
    try:
        yield listener
    finally:
        _watching.reset(token)


def current() -> Listener:
    """The listener watching here (:func:`watching`), :data:`NOBODY` outside any such block."""
    return _watching.get()


#: How often a restore's progress artifact is brought up to date while its blobs come down: often
#: enough to watch, rarely enough that the API calls (one each) cost nothing beside the download.
ARTIFACT_UPDATE_SECONDS = 1.0
#: How long the end of a restore waits for an update in flight (one takes milliseconds on an API
#: that answers) before leaving it, and the last update, undone.
UPDATE_WAIT_SECONDS = 2.0


class ProgressArtifact:
    """A Prefect progress artifact of the current run, moved from 0 to 100 % by :meth:`update`:
    the drill's tenants drilled, a restore's bytes received. Created at 0 % when constructed,
    inside a flow or task run (async or sync alike); updates that change nothing are not sent,
    nor, with ``every``, those that come sooner than ``every`` seconds after the last one sent,
    except the one at 100 %.

    ``every`` is for callers that update as often as things happen: the drill, once a tenant.
    Each update is an API call made where it is called, and the drill's loop that calls it also
    hands the next tenant to a free thread: a drill of 200 tenants of 1 MiB took 9.4-12.1 s with
    an update each, against 5.5-6.5 s with one a second (3 runs each, `memrestore drill` against
    a standing server)."""

    def __init__(self, key: str, description: str, every: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:

        self.id = create_progress_artifact(0.0, key=key, description=description, _sync=True)
        self._shown: tuple[float, str] = (0.0, description)
        self._every = every
        self._clock = clock
        self._sent_at = clock()

    def update(self, percent: float, description: str, client=None) -> None:
        """Show ``percent`` and ``description``; through ``client`` (a sync Prefect client kept open
        by the caller) when given, else through a client of Prefect's own for this call."""

        shown = (round(min(100.0, max(0.0, percent)), 1), description)
        if shown == self._shown:
            return
        if shown[0] < 100.0 and self._clock() - self._sent_at < self._every:
            return
        if client is None:
            update_progress_artifact(self.id, shown[0], description=description, _sync=True)
        else:
            client.update_artifact(artifact_id=self.id, artifact=ArtifactUpdate(data=shown[0], description=description))
        self._shown, self._sent_at = shown, self._clock()


def describe_bytes(done: int, total: int | None, seconds: float) -> str:
    """``1.5 MiB of 4.0 MiB received, 2.1 MiB/s, 1.19 s left``: the bytes, the mean rate since the
    first (the one a ``--limit-rate`` cap holds it to) and what is left at that rate, in
    tasks/units.py's units, as the CLI's bar and the outcome write them."""
    rate = done / seconds if seconds > 0 and done > 0 else None
    text = f"{units.size(done)} of {units.size(total)} received"
    if rate is not None:
        text += f", {units.rate(rate)}"
        left = units.eta(done, total, rate)
        if left is not None:
            text += f", {left} left"
    return text


@contextmanager
def bytes_artifact(key: str, total: int, received: Callable[[], int],
                   every: float = ARTIFACT_UPDATE_SECONDS) -> Iterator[None]:
    """A progress artifact ``key`` showing ``received()`` of ``total`` bytes, made by a thread of
    its own once the block has run ``every`` seconds, brought up to date every ``every`` seconds
    after that, and once more at the block's end. A block that ends sooner (a small restore) makes
    none: its run's summary says it all, and a progress bar that appears full says nothing (it
    would cost two API calls, more than such a restore's own work).

    The thread runs in a copy of the caller's context, so it talks to the caller's Prefect API as
    the run does. A failed update is left for the next one: progress is for watching, and must
    never fail a restore."""
    started = time.monotonic()
    artifact: ProgressArtifact | None = None

    def describe() -> tuple[float, str]:
        done = received()
        return (100.0 * done / total if total else 100.0), describe_bytes(done, total, time.monotonic() - started)

    def bring_up_to_date(client=None) -> None:
        nonlocal artifact
        try:
            if artifact is None:
                artifact = ProgressArtifact(key, describe()[1])
            artifact.update(*describe(), client=client)
        except Exception:  # noqa: BLE001 - see the docstring
            pass

    stop = threading.Event()

    def publish() -> None:
        try:
            with get_client(sync_client=True) as client:  # one client for every update
                while not stop.wait(every):
                    bring_up_to_date(client)
        except Exception:  # noqa: BLE001 - no client: the last update, at the end, still tries
            pass

    thread = threading.Thread(target=contextvars.copy_context().run, args=(publish,),
                              name="memrestore-progress-artifact", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        # An update still waiting on an API that does not answer is left to its (daemon) thread,
        # and the last one is not tried: a restore that is stopping, or done, does not wait out
        # Prefect's HTTP timeouts and retries for its progress (minutes, measured).
        thread.join(timeout=UPDATE_WAIT_SECONDS)
        if not thread.is_alive() and artifact is not None:
            bring_up_to_date()
