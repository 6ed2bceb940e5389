"""What the downloads of one restore share: its streams (the GETs kept in flight across all of its
blobs, ``backends.streams.StreamPool``: ``--streams`` of them, or by default as many as the closed
loop of ``backends.stream_control`` finds pay, up to ``--max-streams``), its rate limit (``--limit-rate``: a
token bucket over all of those streams, or over every restore of a drill), the count of the
bytes received so far, which the ``restore-snapshot`` flow publishes as a progress artifact, and
the progress listener those bytes are reported to (``tasks.progress``).
"""

from __future__ import annotations

import threading
from typing import Annotated

from pydantic import Field

from memrestore.backends.stream_control import DEFAULT_CEILING
from memrestore.backends.streams import (DEFAULT_STREAMS, MAX_STREAMS, RATE_PATTERN, RateLimit, StreamBudget,
                                         StreamPool, parse_rate)
from memrestore.tasks import progress

#: The flows' parameter types, so that the Prefect UI's form shows (and checks) them.
StreamsParam = Annotated[int, Field(ge=1, le=MAX_STREAMS)]
RateParam = Annotated[str, Field(pattern=RATE_PATTERN)]


class Transfer:
    """One restore's streams, rate limit and byte count; close it (or use ``with``) when done.

    ``streams`` fixes the count; None (the default) lets the pool find it, up to ``max_streams``.

    ``limit`` is a rate limit shared with other transfers (a drill's); ``limit_rate`` (``50M``,
    bytes a second) makes one of this transfer's own. Give at most one of them. ``budget`` bounds
    this transfer's streams together with those of the other transfers given it (a drill's
    restores at once: :class:`~backends.streams.StreamBudget`). Every byte counted
    is told to the listener watching where the transfer is made (:func:`progress.watching`; nobody
    outside such a block).
    """

    def __init__(self, streams: int | None = DEFAULT_STREAMS, limit_rate: str | int | None = None,
                 limit: RateLimit | None = None, max_streams: int = DEFAULT_CEILING,
                 budget: StreamBudget | None = None) -> None:
        if limit_rate is not None and limit is not None:
            raise ValueError("give a rate (limit_rate) or a shared limit, not both")
        if limit is None and limit_rate is not None:
            limit = RateLimit(parse_rate(limit_rate))
        self.listener = progress.current()
        self.pool = StreamPool(streams, limit, ceiling=max_streams, budget=budget)
        self._received = 0
        self._lock = threading.Lock()

    @property
    def limit(self) -> RateLimit | None:
        return self.pool.limit

    @property
    def received(self) -> int:
        """Bytes received so far (less those of a blob that failed and starts over)."""
        return self._received

    def advance(self, nbytes: int) -> None:
        """Count ``nbytes`` more (negative when an item starts over), and tell the listener."""
        with self._lock:
            self._received += nbytes
        self.listener.advance(nbytes)

    def streams_used(self) -> tuple[int, int, list[tuple[float, int, str]]] | None:
        """The most streams that ran at once, those in force at the end, and each change of the
        count (seconds since the first read, the new count, why); None if none ran (a local
        folder reads without them)."""
        return (self.pool.peak, self.pool.final, list(self.pool.history)) if self.pool.peak else None

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> "Transfer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
