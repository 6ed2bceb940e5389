"""Crash points, for the crash-safety tests: a restore can be killed at an exact instant.

``MEMRESTORE_CRASH_AT=<point>:<n>`` makes the n-th pass (1-based) through ``crash_point(<point>)``
kill the process with SIGKILL, as a power cut or the OOM killer would: no cleanup, no finally
blocks. Unset (always, outside those tests), a crash point is one dictionary lookup.

``MEMRESTORE_PAUSE_AT=<point>:<n>`` instead holds the n-th pass there until the process is told
to stop (a signal, or :func:`tasks.interrupt.request_stop`), having first written ``<point>`` to
the file named by ``MEMRESTORE_PAUSE_FILE``: the signal tests use it to stop a restore in a
known phase.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from memrestore.tasks import interrupt

ENV = "MEMRESTORE_CRASH_AT"
PAUSE_ENV = "MEMRESTORE_PAUSE_AT"
PAUSE_FILE_ENV = "MEMRESTORE_PAUSE_FILE"

_counts: dict[str, int] = {}
_lock = threading.Lock()


def _nth_pass(spec: str, name: str) -> bool:
    point, _, nth = spec.rpartition(":")
    if point != name:
        return False
    with _lock:
        _counts[spec] = _counts.get(spec, 0) + 1
        return _counts[spec] == int(nth)


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if spec and _nth_pass(spec, name):
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get(PAUSE_ENV)
    if pause and _nth_pass(pause, name):
        _pause(name)


def _pause(name: str) -> None:
    if path := os.environ.get(PAUSE_FILE_ENV):
        with open(path, "w") as f:
            f.write(name)
    while True:  # a signal's exception (main thread) or the stop request (any thread) ends it
        interrupt.check()
        time.sleep(0.02)
