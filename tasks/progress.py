"""Byte progress of a restore, for whoever is watching (the CLI's progress bar).

Library code reports; it never draws. A listener is any callable taking a byte count; it is called
from download threads, so it must be thread-safe (rich's Progress is).
"""

from __future__ import annotations

import threading
from typing import Callable

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
