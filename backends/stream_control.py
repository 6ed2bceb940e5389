"""How many streams a restore keeps in flight when not told (no ``--streams``): decided while it
runs, from what it measures, by :class:`StreamControl`.

No one number suits every store. A server in the same rack fills the link (or this machine's
CPU) with a few connections, and more only cost CPU; a far bucket gives each connection a few
MB/s, and the restore is only as fast as the number of GETs it keeps in flight (BENCHMARKS.md,
"Choosing --streams": 46 MB/s on 8 streams, 167 on 48, through the same proxy). So the restore
starts with :data:`START` streams and climbs, as TCP's slow start does:

* every step, the count doubles (up to the ceiling, ``--max-streams``), or quadruples when the last
  step paid nearly in full (each added stream brought as much as each one before: connections
  each capped, as a far store's are), and the first window after it is not judged (new
  connections, each request's first-byte wait);
* the next window is: if the throughput grew by at least :data:`GAIN_SHARE` of what the added
  streams would give on a link of capped connections (25% for a doubling), it climbs again;
  if not, the added streams bought nothing and are shed: back to the count before, and there it
  stays;
* it stays too when this process's CPU is the limit (CPU seconds per wall second at
  :data:`CPU_BUSY` of the cores it may run on): more streams would only cost more CPU; and at the
  ceiling;
* a window in which a stream waited for a part (the pool looks every 0.1 s; a quarter of the looks
  or more) says nothing of the link (the restore's last parts, small blobs): it is not judged;
* once settled, it tries one step up again after :data:`REPROBE_WINDOWS` windows, and after
  twice as many each time the step did not pay, so that a link that got better is found.

:class:`StreamControl` only decides: it is given :class:`Sample` s (bytes, seconds, CPU seconds
of a window) and answers with the count for the next window. ``backends.streams.StreamPool``
takes the samples and sets the count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: Streams a restore starts with: what the peers keep in flight on one file (rclone: 4).
START = 4
#: The ceiling unless told (``--max-streams``): every stream holds a connection and a read buffer,
#: and at 48 a restore of 1 GiB through the far links peaked at 168-176 MiB of RSS (BENCHMARKS.md,
#: rows 11 and 12; 189 MiB for 2 GiB at 48 fixed streams in "Choosing --streams").
DEFAULT_CEILING = 48
#: The share of the ideal gain a step must show to be kept: doubling the streams must add 25%.
GAIN_SHARE = 0.25
#: The share of the ideal gain above which the next step is a leap (x4, not x2): the link gives
#: every connection the same, so the climb need not take a window per doubling.
LEAP_SHARE = 0.75
#: This process's CPU seconds per wall second, as a share of the cores it may use, above which
#: the CPU is the limit.
CPU_BUSY = 0.85
#: A window lasts at least this long, and until each stream has had READS_PER_WINDOW reads (so
#: that the 1 MiB reads a byte count moves by are a small part of it), at most MAX_WINDOW.
MIN_WINDOW = 0.6
READS_PER_WINDOW = 4
MAX_WINDOW = 4.0
#: The window after a change is a warm-up, not judged: this long.
WARMUP_WINDOW = 0.4
#: Windows judged at a settled count before one more step up is tried (then twice as many, ...).
REPROBE_WINDOWS = 5


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Sample:
    """What a pool saw in one window at one stream count."""

    seconds: float  # wall time
    bytes: int  # bytes received, all streams together
    cpu_seconds: float  # this process's CPU (user + system)
    starved: bool = False  # a stream found no part waiting

    @property
    def rate(self) -> float:
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


@dataclass
class StreamControl:
    """Closed-loop choice of a stream count; :meth:`decide` is fed one window at a time."""

    ceiling: int = DEFAULT_CEILING
    start: int = START
    cores: int = field(default_factory=usable_cores)
    read_size: int = 1024 * 1024
    min_window: float = MIN_WINDOW
    max_window: float = MAX_WINDOW
    warmup_window: float = WARMUP_WINDOW
    streams: int = 0  # the count now (start, at first)
    #: Why the count is what it is, for a log line: "climbing", "no gain", "CPU", "ceiling", "starved".
    reason: str = "start"

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            raise ValueError(f"the ceiling must be at least 1 stream, not {self.ceiling!r}")
        self.start = max(1, min(self.start, self.ceiling))
        self.streams = self.streams or self.start
        self._warming = True  # the first window (connections opening) is not judged
        self._below: tuple[int, float] | None = None  # the count and rate the last step started from
        self._settled = False
        self._retrying = False  # this step up is a settled count's try again
        self._since_probe = 0
        self._reprobe = REPROBE_WINDOWS

    @property
    def warming(self) -> bool:
        """Whether the next window is a warm-up (the first after a change), not judged."""
        return self._warming

    def window_done(self, sample: Sample) -> bool:
        """Whether ``sample`` is long enough to be decided on."""
        if self._warming:
            return sample.seconds >= self.warmup_window
        if sample.seconds < self.min_window:
            return False
        return sample.seconds >= self.max_window or sample.bytes >= self.streams * self.read_size * READS_PER_WINDOW

    def decide(self, sample: Sample) -> int:
        """The stream count for the next window, given the last one's ``sample``."""
        if self._warming:
            self._warming = False
            return self.streams
        if sample.starved:
            self.reason = "starved"
            return self.streams
        rate = sample.rate
        below, self._below = self._below, None
        factor = 2
        if below is not None:  # the window after a step up: did it pay?
            was, was_rate = below
            ideal = was_rate * (self.streams / was - 1)
            if rate >= was_rate + LEAP_SHARE * ideal:
                factor = 4
            if rate < was_rate + GAIN_SHARE * ideal:
                self.reason = "no gain"
                if self._retrying:  # a step tried again that still does not pay: try less often
                    self._reprobe *= 2
                self._settle()
                return self._set(was)
        cpu_bound = sample.cpu_seconds >= CPU_BUSY * self.cores * sample.seconds
        if cpu_bound or self.streams >= self.ceiling:
            self.reason = "CPU" if cpu_bound else "ceiling"
            self._settle()
            return self.streams
        if self._settled:
            self._since_probe += 1
            if self._since_probe < self._reprobe:
                return self.streams
        self.reason = "climbing"
        self._retrying = self._settled
        self._settled = False
        self._below = (self.streams, rate)
        return self._set(min(self.ceiling, self.streams * factor))

    def _settle(self) -> None:
        self._settled = True
        self._retrying = False
        self._since_probe = 0

    def _set(self, streams: int) -> int:
        if streams != self.streams:
            self._warming = True
        self.streams = streams
        return streams
