"""Byte progress of a restore, for whoever is watching (the CLI's progress bar).

Library code reports; it never draws. A listener is any callable taking a byte count; it is called
from download threads, so it must be thread-safe (rich's Progress is).
"""

from __future__ import annotations

import threading
from typing import Callable

Listener = Callable[[int], None]

_listeners: list[Listener] = []
_lock = threading.Lock()


def subscribe(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def unsubscribe(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def advance(nbytes: int) -> None:
    """Report ``nbytes`` more bytes received (negative when a retried item starts over)."""
    for listener in list(_listeners):
        listener(nbytes)
