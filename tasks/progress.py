"""Byte progress of a restore, for whoever is watching: the CLI's progress bar (listeners of this
process) and the Prefect UI (progress artifacts of a run).

Library code reports; it never draws. A listener is any callable taking a byte count; it is called
from download threads, so it must be thread-safe (rich's Progress is).
"""

from __future__ import annotations

import contextvars
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

Listener = Callable[[int], None]

_listeners: list[Listener] = []
_total_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe_total(listener: Listener) -> None:
    """``listener(total_bytes)`` is called once the restore knows how many bytes it will fetch."""
    with _lock:
        _total_listeners.append(listener)


def expect(total_bytes: int) -> None:
    for listener in list(_total_listeners):
        listener(total_bytes)


def subscribe(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    with _lock:
        for group in (_listeners, _total_listeners):
            if listener in group:
                group.remove(listener)


def advance(nbytes: int) -> None:
    """Report ``nbytes`` more bytes received (negative when a retried item starts over)."""
    for listener in list(_listeners):
        listener(nbytes)


#: How often a restore's progress artifact is brought up to date while its blobs come down: often
#: enough to watch, rarely enough that the API calls (one each) cost nothing beside the download.
ARTIFACT_UPDATE_SECONDS = 1.0


class ProgressArtifact:
    """A Prefect progress artifact of the current run, moved from 0 to 100 % by :meth:`update`:
    the drill's tenants drilled, a restore's bytes received. Created at 0 % when constructed,
    inside a flow or task run (async or sync alike); updates that change nothing are not sent."""

    def __init__(self, key: str, description: str) -> None:
        from prefect.artifacts import create_progress_artifact

        self.id = create_progress_artifact(0.0, key=key, description=description, _sync=True)
        self._shown: tuple[float, str] = (0.0, description)

    def update(self, percent: float, description: str, client=None) -> None:
        """Show ``percent`` and ``description``; through ``client`` (a sync Prefect client kept open
        by the caller) when given, else through a client of Prefect's own for this call."""
        from prefect.artifacts import update_progress_artifact
        from prefect.client.schemas.actions import ArtifactUpdate

        shown = (round(min(100.0, max(0.0, percent)), 1), description)
        if shown == self._shown:
            return
        if client is None:
            update_progress_artifact(self.id, shown[0], description=description, _sync=True)
        else:
            client.update_artifact(artifact_id=self.id, artifact=ArtifactUpdate(data=shown[0], description=description))
        self._shown = shown


def _size(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


@contextmanager
def bytes_artifact(key: str, total: int, received: Callable[[], int],
                   every: float = ARTIFACT_UPDATE_SECONDS) -> Iterator[ProgressArtifact]:
    """A progress artifact ``key`` showing ``received()`` of ``total`` bytes, brought up to date
    every ``every`` seconds by a thread of its own while the block runs, and once more at its end.

    The thread runs in a copy of the caller's context, so it talks to the caller's Prefect API as
    the run does. A failed update is left for the next one: progress is for watching, and must
    never fail a restore."""
    started = time.monotonic()

    def describe() -> tuple[float, str]:
        done = received()
        seconds = time.monotonic() - started
        rate = f", {done / seconds / 1e6:.1f} MB/s" if seconds > 0 and done > 0 else ""
        return (100.0 * done / total if total else 100.0), f"{_size(done)} of {_size(total)} received{rate}"

    artifact = ProgressArtifact(key, f"0 B of {_size(total)} received")
    stop = threading.Event()

    def bring_up_to_date(client=None) -> None:
        try:
            artifact.update(*describe(), client=client)
        except Exception:  # noqa: BLE001 - see the docstring
            pass

    def publish() -> None:
        from prefect.client.orchestration import get_client

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
        yield artifact
    finally:
        stop.set()
        thread.join()
        bring_up_to_date()
