"""Crash points, for the crash-safety tests: a restore can be killed at an exact instant.

``MEMRESTORE_CRASH_AT=<point>:<n>`` makes the n-th pass (1-based) through ``crash_point(<point>)``
kill the process with SIGKILL, as a power cut or the OOM killer would: no cleanup, no finally
blocks. Unset (always, outside those tests), a crash point is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "MEMRESTORE_CRASH_AT"

_counts: dict[str, int] = {}
_lock = threading.Lock()


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, nth = spec.rpartition(":")
    if point != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        if _counts[name] == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
