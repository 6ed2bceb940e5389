"""How memrestore writes sizes, rates, durations and ages for people: one unit system everywhere.

Sizes and rates are in powers of 1024 (KiB, MiB, GiB; MiB/s), the units ``--limit-rate`` is
spelled in (``50M`` is 50 MiB/s), so that a capped restore shows its cap and the CLI's bar, the
outcome, the UI's artifacts and the drill report agree with each other. No Prefect import: the
command line uses this before Prefect is loaded.
"""

from __future__ import annotations

_BINARY = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def size(n: float | None) -> str:
    """``1.5 GiB``, ``317.0 MiB``, ``63.2 KiB``, ``512 B``; ``-`` when unknown."""
    if n is None:
        return "-"
    for unit, scale in _BINARY:
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def rate(bytes_per_second: float | None) -> str:
    """``53.1 MiB/s``; ``-`` when unknown."""
    if bytes_per_second is None:
        return "-"
    return f"{size(bytes_per_second)}/s"


def duration(seconds: float | None) -> str:
    """``0.42 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 07 min``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def age(seconds: float | None) -> str:
    """A snapshot's age: ``45 s``, ``12 min``, ``5.2 h``, ``3.1 d``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{max(0, int(seconds))} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def eta(done: float, total: float | None, bytes_per_second: float | None) -> str | None:
    """What is left at the current rate (``4 min 05 s``), or None when it cannot be told."""
    if not total or not bytes_per_second or bytes_per_second <= 0 or done >= total:
        return None
    return duration((total - done) / bytes_per_second)
