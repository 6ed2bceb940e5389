"""How a restore reads: a pool of streams (concurrent GETs) shared by all of its blobs, and a rate
limit shared by all of its streams (or by every restore of a drill).

A far object store gives each connection a bounded rate (~80-100 MB/s on AWS S3) and makes every
request wait 20-100 ms for its first byte, so a restore is only as fast as the number of requests
it keeps in flight. :class:`StreamPool` keeps ``streams`` of them in flight until the last byte
(by default as many as ``backends.stream_control`` finds pay, measured as the restore runs):
each blob is cut into parts (ranged GETs, :data:`PART_SIZE`), and whichever stream is free takes
the next part of the blob that has the fewest parts in flight. So blobs of like size come down
side by side, each at its hash's frontier, and a lone large blob left at the end gets every
stream, where a fixed share per blob left all but one stream idle (BENCHMARKS.md, far store).

:class:`StreamBudget` bounds the streams of several pools together (a drill's restores at once),
so that memory and connections stay those of one restore however many run.

:class:`RateLimit` is a token bucket: a stream reserves the bytes of its next read before it reads
them, so whatever the number of streams, the bytes read by time ``t`` never exceed
``burst + rate * t``.

Nothing here knows S3: a part is any callable. The S3 backend cuts objects into parts and runs
them here; the local backend takes only the rate limit.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, TypeVar

from memrestore.backends.errors import RateSpellingError
from memrestore.backends.stream_control import DEFAULT_CEILING, Sample, StreamControl

MiB = 1024 * 1024
T = TypeVar("T")

#: Streams a restore keeps in flight unless told otherwise: None, the closed loop of
#: ``backends.stream_control`` (start with a few, add while the throughput grows, up to a ceiling).
#: Before it, a fixed 32 chosen on one proxy profile (BENCHMARKS.md, "Choosing --streams"): through
#: a proxy that caps each connection at 6 MB/s and delays each request 20 ms, a 2 GiB restore went
#: at 46, 88, 139 and 167 MB/s with 8, 16, 32 and 48 streams, and peak RSS was 136, 150, 172 and
#: 189 MiB; on loopback SeaweedFS, 32 streams took 4.4-4.9 s in the flow against 3.9-4.3 s for 4.
DEFAULT_STREAMS: int | None = None
#: The most a restore may ask for. Every stream holds a connection and a read buffer, the buffers
#: sharing READ_BUFFERS between them beyond 32 streams (:func:`read_size`), so that peak memory
#: stays flat.
MAX_STREAMS = 64
#: Bytes of read buffers all of a pool's streams hold at most (with at least MIN_READ_SIZE each).
READ_BUFFERS = 32 * MiB
MAX_READ_SIZE = 1 * MiB
MIN_READ_SIZE = 256 * 1024


def read_size(streams: int) -> int:
    """The read buffer of each of ``streams`` streams: 1 MiB up to 32 streams, then a share of
    READ_BUFFERS (512 KiB each at 64)."""
    return max(MIN_READ_SIZE, min(MAX_READ_SIZE, READ_BUFFERS // max(1, streams)))
#: The size of one ranged GET, within AWS's guidance for S3 of 8-16 MiB: large enough that a
#: request's first-byte wait (20-100 ms) is small beside its transfer at ~90 MB/s (~90-180 ms),
#: small enough that the last parts of a restore leave streams idle for at most one part's time.
#: A blob takes the largest size that still gives each stream a part (:func:`part_size`).
PART_SIZE = 16 * MiB
MIN_PART_SIZE = 8 * MiB


def part_size(size: int, streams: int) -> int:
    """The part size for a blob of ``size`` bytes read by up to ``streams`` streams: PART_SIZE,
    or less (down to MIN_PART_SIZE) when that leaves a blob of a few parts to one stream each."""
    wanted = -(-size // max(1, streams))  # ceil
    return max(min(PART_SIZE, wanted), min(MIN_PART_SIZE, PART_SIZE))

#: ``--limit-rate`` spellings: a number, an optional unit (``k``, ``M``, ``G``, ``T``, powers of
#: 1024 as in rclone and restic), an optional ``B`` or ``iB``, an optional ``/s``.
RATE_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?(/s)?\s*$"
_RATE = re.compile(RATE_PATTERN)
_UNITS = {"": 1, "k": 1024, "m": MiB, "g": 1024 * MiB, "t": 1024 * 1024 * MiB}
#: The lowest rate accepted: below it a restore of even a small snapshot would take hours.
MIN_RATE = 1024


def parse_rate(text: str | int | float) -> int:
    """Bytes a second from ``50M``, ``1G``, ``500k``, ``1.5MiB/s`` or a plain number of bytes.
    Units are powers of 1024 (``k`` = KiB), as rclone's ``--bwlimit`` and restic's
    ``--limit-download`` read them; ``B``, ``iB`` and ``/s`` may follow."""
    if isinstance(text, bool):
        raise RateSpellingError(f"{text!r} is not a rate")
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        match = _RATE.match(text)
        if match is None:
            raise RateSpellingError(
                f"{text!r} is not a rate: give bytes a second as a number with an optional unit, "
                "k, M, G or T (powers of 1024), e.g. 50M, 1G, 500k or 1.5MiB/s")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < MIN_RATE:
        raise RateSpellingError(f"{text!r} is {value} bytes a second, below the lowest limit of "
                                f"{MIN_RATE} (1k); give a higher rate, or no limit")
    return value


class RateLimit:
    """A token bucket shared by every stream that reads under it; thread-safe.

    ``reserve(n)`` blocks until ``n`` more bytes are within the rate, and a stream calls it before
    each read (then :meth:`refund` whatever the read did not use). The bucket holds at most
    ``burst`` bytes of credit, so a pause earns no more than that.
    """

    def __init__(self, bytes_per_second: float, burst: int | None = None) -> None:
        if bytes_per_second <= 0:
            raise ValueError(f"a rate limit must be positive, not {bytes_per_second!r}")
        self.rate = float(bytes_per_second)
        #: A tenth of a second of the rate, at least 64 KiB: small beside any restore worth
        #: limiting, large enough that streams do not wake for every few KiB.
        self.burst = int(burst if burst is not None else max(64 * 1024, self.rate / 10))
        self._tokens = float(self.burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def reserve(self, n: int, stop: threading.Event | None = None) -> None:
        """Take ``n`` bytes from the bucket, waiting (in steps, so that ``stop`` is heeded) until
        the debt they leave is paid off by the rate."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= n
            ready = now + max(0.0, -self._tokens) / self.rate
        while (wait := ready - time.monotonic()) > 0:
            if stop is not None and stop.is_set():
                return
            time.sleep(min(wait, 0.25))

    def refund(self, n: int) -> None:
        """Give back bytes reserved and not read (a short read, the end of a body)."""
        if n > 0:
            with self._lock:
                self._tokens = min(self.burst, self._tokens + n)


def metered(limit: RateLimit | None, want: int, read: Callable[[], T], used: Callable[[T], int],
            stop: threading.Event | None = None) -> T:
    """``read()`` (at most ``want`` bytes) under ``limit``, when there is one: ``want`` bytes
    reserved first, and what the read did not use (``used`` of its result; all of them if it
    raised) given back."""
    if limit is None:
        return read()
    limit.reserve(want, stop)
    n = 0
    try:
        result = read()
        n = used(result)
        return result
    finally:
        limit.refund(want - n)


#: The most streams a drill's restores at once keep in flight together (its :class:`StreamBudget`):
#: four tenants, the default, each at the default ceiling. The read buffers of each of those
#: streams are sized to this many (:attr:`StreamPool.buffer_size`: 256 KiB each, 48 MiB in all),
#: and the S3 client keeps a connection for each (backends/s3.py).
#:
#: Measured (4 tenants of 256 MiB through the far-store proxy, one drill each way, 2 runs): with
#: every tenant's pool its own, up to 48 streams and 682 KiB reads each, peak RSS was 209 MiB at
#: 10 MB/s a connection and 238-241 MiB at 3 MB/s, over issue 20's 200. With the 4 tenants
#: sharing 48 streams, 184 MiB, but the very far link's drill took 16.3-17.4 s against 9.4 s.
#: Sharing 192, with reads sized to them: 175 MiB and 6.3-6.6 s at 10 MB/s a connection (6.3 s
#: before), 187-188 MiB and 9.5-10.5 s at 3 MB/s (9.4 s before).
DRILL_STREAMS = 4 * DEFAULT_CEILING


class StreamBudget:
    """The most streams several pools run together: a drill's restores at once share one
    (:data:`DRILL_STREAMS`), as they share its ``--limit-rate``. Each stream a pool runs is
    taken from the budget, and given back when it ends. A pool's first stream is never refused,
    so that every restore moves: ``n`` pools at once run at most ``total + n - 1`` streams (a pool
    that starts while the others hold them all still gets its one). A pool that finds the budget
    spent runs the streams it has, and takes more when the others give theirs back.

    Why: every stream holds a read buffer and a connection, and a drill runs up to 16 restores at
    once, each free to climb to its ceiling."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"a budget of streams must be at least 1, not {total!r}")
        self.total = total
        self._taken = 0
        self._lock = threading.Lock()

    @property
    def taken(self) -> int:
        return self._taken

    def take(self, first: bool = False) -> bool:
        """One stream, if the budget has one left; a pool's ``first`` always."""
        with self._lock:
            if self._taken >= self.total and not first:
                return False
            self._taken += 1
            return True

    def give(self) -> None:
        with self._lock:
            self._taken -= 1


#: One part: called with the job's stop event (set when another part of the same blob failed or the
#: caller was interrupted), it reads its bytes and returns, or raises.
Part = Callable[[threading.Event], None]


@dataclass(eq=False)
class _Job:
    """One blob's parts, as the pool works through them."""

    parts: list[Part]
    order: int
    next: int = 0
    running: int = 0
    finished: int = 0
    failure: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def waiting(self) -> bool:
        return self.next < len(self.parts) and not self.stop.is_set()

    @property
    def done(self) -> bool:
        return self.running == 0 and (self.finished == len(self.parts) or self.stop.is_set())


class StreamPool:
    """Threads that run parts, shared by every blob of a restore: ``streams`` of them, or, with
    none given, as many as a :class:`~backends.stream_control.StreamControl` decides while the
    restore runs (starting with a few, up to ``ceiling``).

    :meth:`run` hands in one blob's parts and returns once all of them are done (raising the first
    failure, once none of its parts is still running). Several threads may call it at once (a
    restore stages several blobs at a time): a free stream takes the next part of the job with the
    fewest parts running, the oldest first among equals. The threads start on first use and end at
    :meth:`close` (or the end of a ``with`` block). A backend reports each read's bytes with
    :meth:`count`: the control judges the streams by them. With a ``budget`` shared with other
    pools, every stream is also taken from it (:class:`StreamBudget`).
    """

    def __init__(self, streams: int | None = DEFAULT_STREAMS, limit: RateLimit | None = None, *,
                 ceiling: int = DEFAULT_CEILING, control: StreamControl | None = None,
                 budget: StreamBudget | None = None) -> None:
        if streams is not None and not 1 <= streams <= MAX_STREAMS:
            raise ValueError(f"streams must be 1 to {MAX_STREAMS}, not {streams!r}")
        if not 1 <= ceiling <= MAX_STREAMS:
            raise ValueError(f"the ceiling of streams must be 1 to {MAX_STREAMS}, not {ceiling!r}")
        if streams is None and control is None:
            control = StreamControl(ceiling=ceiling, read_size=read_size(ceiling))
        #: The closed loop deciding the count; None when it was given (``--streams``).
        self.control = control if streams is None else None
        #: The most streams this pool may run: what its read buffers and parts are sized for.
        self.ceiling = streams if streams is not None else self.control.ceiling
        #: The streams wanted now (the control changes it as it goes).
        self.streams = streams if streams is not None else self.control.streams
        self.limit = limit
        self.budget = budget
        #: The most streams that ran at once, and (seconds since the first part, count, why) at
        #: each change of the count.
        self.peak = 0
        self.history: list[tuple[float, int, str]] = []
        self._cond = threading.Condition()
        self._jobs: list[_Job] = []
        self._workers: list[threading.Thread] = []
        self._idle = 0
        self._order = 0
        self._closed = False
        self._bytes = 0
        self._started: float | None = None
        self._monitor: threading.Thread | None = None
        self._quit = threading.Event()  # the control's thread ends

    def __enter__(self) -> "StreamPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def buffer_size(self) -> int:
        """The read buffer of each stream: :func:`read_size` of the most streams this pool may
        run, or, sharing a budget, of the budget's (a drill's restores, all together)."""
        return read_size(max(self.ceiling, self.budget.total) if self.budget is not None else self.ceiling)

    @property
    def final(self) -> int:
        """The streams in force at the end (or now): no more than ever ran at once."""
        return min(self.streams, self.peak)

    def count(self, nbytes: int) -> None:
        """Bytes one read of a part brought in (the control's measure)."""
        with self._cond:
            self._bytes += nbytes

    def close(self) -> None:
        """Stop the threads once the parts they are running return."""
        with self._cond:
            self._closed = True
            self._quit.set()
            self._cond.notify_all()
            workers = list(self._workers)
            monitor = self._monitor
        for worker in workers:
            worker.join()
        if monitor is not None:
            monitor.join()

    def run(self, parts: Sequence[Part]) -> None:
        """Run ``parts`` on the pool's streams; return when every one has finished. On a failure
        (or Ctrl-C in the caller) the blob's parts not yet started are dropped and the running
        ones told to stop; the first failure is raised once none is running."""
        if not parts:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError("the stream pool is closed")
            if self._started is None:
                self._started = time.monotonic()
                self.history.append((0.0, self.streams, "start" if self.control else "fixed"))
                if self.control is not None:
                    self._monitor = threading.Thread(target=self._steer, name="memrestore-stream-control",
                                                     daemon=True)
                    self._monitor.start()
            job = _Job(list(parts), self._order)
            self._order += 1
            self._jobs.append(job)
            self._grow()
            self._cond.notify_all()
            try:
                while not job.done:
                    self._cond.wait()
            except BaseException:
                job.stop.set()
                while not job.done:
                    self._cond.wait()
                raise
            finally:
                self._jobs.remove(job)
        if job.failure is not None:
            raise job.failure

    def _grow(self) -> None:
        """Start threads (under the lock) until the parts waiting have one idle thread each, up
        to ``streams`` threads in all."""
        waiting = sum(len(j.parts) - j.next for j in self._jobs if j.waiting)
        while len(self._workers) < self.streams and self._idle < waiting:
            if self.budget is not None and not self.budget.take(first=not self._workers):
                break  # spent by the other pools: their streams, given back, are taken later
            worker = threading.Thread(target=self._work, name=f"memrestore-stream-{len(self._workers)}",
                                      daemon=True)
            self._workers.append(worker)
            self._idle += 1
            worker.start()
        self.peak = max(self.peak, len(self._workers))

    def _take(self) -> tuple[_Job, Part] | None:
        """The next part to run (under the lock), or None when there is none."""
        ready = [j for j in self._jobs if j.waiting]
        if not ready:
            return None
        job = min(ready, key=lambda j: (j.running, j.order))
        part = job.parts[job.next]
        job.next += 1
        job.running += 1
        return job, part

    def _work(self) -> None:
        with self._cond:
            while True:
                if len(self._workers) > self.streams:  # the count went down: this stream ends
                    self._end_worker()
                    return
                taken = self._take()
                if taken is None:
                    if self._closed:
                        self._end_worker()
                        return
                    self._cond.wait()
                    continue
                self._idle -= 1
                job, part = taken
                self._cond.release()
                try:
                    part(job.stop)
                    failure = None
                except BaseException as exc:  # noqa: BLE001 - handed to the blob's caller
                    failure = exc
                finally:
                    self._cond.acquire()
                job.running -= 1
                self._idle += 1
                if failure is not None:
                    if job.failure is None:
                        job.failure = failure
                    job.stop.set()
                else:
                    job.finished += 1
                if self.budget is not None:
                    self._grow()  # streams another pool gave back since
                self._cond.notify_all()

    def _end_worker(self) -> None:
        """This thread's stream ends (under the lock): it leaves the pool, and gives back what it
        took from the budget."""
        self._workers.remove(threading.current_thread())
        self._idle -= 1
        if self.budget is not None:
            self.budget.give()

    #: How often the control's thread looks at the pool (a window is several of these).
    TICK = 0.1

    def _steer(self) -> None:
        """The control's thread: every TICK, whether a stream is idle for want of a part; at the
        end of each window, the window's bytes, wall and CPU seconds to the control, and the
        count it answers set."""
        control = self.control
        at, cpu, counted = time.monotonic(), time.process_time(), self._bytes
        ticks = idle_ticks = 0
        while not self._quit.wait(self.TICK):
            with self._cond:
                ticks += 1
                if self.budget is not None:
                    self._grow()  # streams the other pools gave back since
                waiting = any(j.waiting for j in self._jobs)
                idle_ticks += self._idle > 0 or (not waiting and len(self._workers) < self.streams)
                now, received = time.monotonic(), self._bytes
            sample = Sample(now - at, received - counted, time.process_time() - cpu, starved=idle_ticks * 4 > ticks)
            if not control.window_done(sample):
                continue
            streams = control.decide(sample)
            with self._cond:
                if streams != self.streams:
                    self.streams = streams
                    self.history.append((round(now - self._started, 2), streams, control.reason))
                    self._grow()
                    self._cond.notify_all()
            at, cpu, counted = time.monotonic(), time.process_time(), self._bytes
            ticks = idle_ticks = 0
