"""Listing every key under a prefix with several ListObjectsV2 requests in flight at once.

S3's listing is one page of at most 1,000 keys per request, each page asked for after the last
key of the one before: listing 90,000 keys is 90 requests one after another. The key space under
the prefix is cut instead into disjoint ranges, each listed by its own worker from its lower
bound (``StartAfter``) until a key passes its upper bound. The ranges always cover the whole key
space, so every key is listed exactly once, whatever the split points are; where they fall only
decides how much the workers overlap in time.

Split points are not known in advance (snapshot ids are any strings of FORMAT.md's alphabet), so
they are found while listing, by work stealing: a worker with nothing to list halves the range
with the most keys left to list (estimated from the density of keys its owner has seen so far),
takes the upper half, and the owner stops at the new bound. A split point is a string between two
bounds, computed as the midpoint of the two read as numbers in base 65 (the snapshot-id alphabet
and ``/``); a half that turns out empty costs one request and is split again, so the workers home
in on where the keys are in a few requests each.

:func:`list_key_ranges` takes the page request as a function, so that the S3 backend keeps its own
error handling, and this module holds no S3 client.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Callable

#: The characters of snapshot ids (FORMAT.md) and ``/``, in the order S3 sorts keys (by UTF-8 bytes,
#: which is the order of code points): the digits of the numbers split points are computed in.
SYMBOLS = "".join(sorted("-./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"))
BASE = len(SYMBOLS)
#: Digits of a key read as a number, beyond the prefix the two bounds share.
DIGITS = 8
#: Keys a full page holds (S3's maximum), and keys asked for by a range's first request after a
#: split: a split-off range is often empty or small, and a key past its bound is listed for nothing.
PAGE_KEYS = 1000
PROBE_KEYS = 100
#: A range is split only while it has more than this many pages left by its density estimate:
#: each split costs a request that ends past its bound.
MIN_PAGES_TO_SPLIT = 2
#: Pages of keys the owner of the unbounded (topmost) range keeps when a worker splits it.
CHUNK_PAGES = 4

#: ``fetch(start_after, max_keys) -> (objects, truncated)``: one ListObjectsV2 page of the prefix
#: (``start_after`` None: from its first key), objects as S3 returns them (dicts with ``Key``).
Fetch = Callable[[str | None, int], tuple[list[dict], bool]]


@dataclass(eq=False)
class _Range:
    """Keys ``k`` with ``after < k <= upto`` (None: unbounded on that side)."""

    after: str | None
    upto: str | None
    #: The last key this range has listed (its next request starts after it).
    cursor: str | None = None
    #: Keys listed and the numeric span they covered, over this range's full pages.
    keys: int = 0
    span: int = 0
    #: Cut off another range by a split (its first request asks for PROBE_KEYS).
    split_off: bool = False

    def position(self) -> str | None:
        return self.cursor if self.cursor is not None else self.after


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _digit(char: str) -> int:
    """The symbol's index; a character outside the alphabet counts as the greatest symbol below it
    (order is then kept only loosely, which can only make a split point less useful: every split
    point is checked to lie strictly between its bounds)."""
    return max(bisect.bisect_right(SYMBOLS, char) - 1, 0)


def _value(suffix: str | None, start: int, digits: int, *, top: bool) -> int:
    """``suffix[start:start + digits]`` read as a number; None is the bottom (0) or the top (BASE**digits)."""
    if suffix is None:
        return BASE**digits if top else 0
    n = 0
    for i in range(start, start + digits):
        n = n * BASE + (_digit(suffix[i]) if i < len(suffix) else 0)
    return n


def midpoint(low: str | None, high: str | None) -> str | None:
    """A string strictly between ``low`` and ``high`` (None: the bottom and the top of the key
    space), near the middle when the keys between are spread evenly; None when there is none."""
    lo, hi = low or "", high
    shared = _common_prefix(lo, hi) if hi is not None else 0
    x = _value(lo, shared, DIGITS, top=False)
    y = _value(hi, shared, DIGITS, top=True)
    if y - x < 2:
        return None
    m, out = (x + y) // 2, []
    for _ in range(DIGITS):
        m, d = divmod(m, BASE)
        out.append(SYMBOLS[d])
    text = lo[:shared] + "".join(reversed(out))
    for candidate in (text.rstrip(SYMBOLS[0]), text):
        if candidate > lo and (hi is None or candidate < hi):
            return candidate
    return None


def _boundaries(low: str):
    """Strings above ``low`` where a character of it ends, nearest first: ``low[:i]`` followed by
    the symbol after ``low[i]``, for ``i`` from the last character to the first."""
    for i in range(len(low) - 1, -1, -1):
        d = _digit(low[i])
        if d + 1 < BASE and SYMBOLS[d + 1] > low[i]:
            yield low[:i] + SYMBOLS[d + 1]


def _span(a: str, b: str, root: int) -> int:
    """The numeric distance between two keys, at a fixed depth, for density estimates."""
    depth = 3 * DIGITS
    return max(_value(b, root, depth, top=False) - _value(a, root, depth, top=False), 0)


class _Lister:
    def __init__(self, fetch: Fetch, prefix: str, workers: int) -> None:
        self.fetch = fetch
        self.prefix = prefix
        self.workers = workers
        self.cond = threading.Condition()
        self.pending: list[_Range] = [_Range(None, None)]
        self.active: list[_Range] = []
        self.found: list[dict] = []
        self.failures: list[BaseException] = []
        self.requests = 0
        self.splits = 0
        #: Keys listed and the numeric span they covered, over every range's full pages.
        self.keys = 0
        self.span = 0

    # -- choosing work -----------------------------------------------------------------------------

    def _density(self, r: _Range) -> float | None:
        """Keys per unit of key space: the range's own pages', else every range's; None before a
        full page anywhere."""
        keys, span = (r.keys, r.span) if r.keys else (self.keys, self.span)
        return keys / span if keys and span else None

    def _left(self, r: _Range) -> float | None:
        """How many keys ``r`` has left to list (inf when unbounded above); None when unknown."""
        density = self._density(r)
        if density is None:
            return None
        if r.upto is None:
            # Split only once its owner has found keys in it: above the last key of the root, every
            # part cut off would be one more request that lists nothing.
            return float("inf") if r.cursor is not None else None
        return _span(r.position() or self.prefix, r.upto, len(self.prefix)) * density

    def _take(self) -> _Range | None:
        """A range to list: a pending one, else the upper part of the active one with the most keys
        left; None when there is nothing to take now. Called under the lock."""
        if self.pending:
            r = self.pending.pop()
            self.active.append(r)
            return r
        best, best_left = None, MIN_PAGES_TO_SPLIT * PAGE_KEYS
        for r in self.active:
            left = self._left(r)
            if left is not None and left > best_left:
                best, best_left = r, left
        if best is None:
            return None
        # The owner keeps CHUNK_PAGES of an unbounded range (the rest is split again by the next
        # worker to ask), half of a bounded one.
        target = CHUNK_PAGES * PAGE_KEYS if best.upto is None else best_left / 2
        cut = self._cut(best, target)
        if cut is None:
            return None
        upper = _Range(cut, best.upto, split_off=True)
        best.upto = cut
        self.active.append(upper)
        self.splits += 1
        return upper

    def _cut(self, r: _Range, target: float) -> str | None:
        """A key strictly inside ``r``'s part left to list, about ``target`` keys above where it
        stands: the nearest character boundary above its position that is that far by the density
        (ids of decimal numbers are cut at their digits, not at base-65 midpoints), else the middle."""
        root = len(self.prefix)
        low = r.position()
        low_s = "" if low is None else low[root:]
        high_s = None if r.upto is None else r.upto[root:]
        density = self._density(r) or 0.0
        for cut in _boundaries(low_s):
            if high_s is not None and cut >= high_s:
                break
            if _span(low_s, cut, 0) * density >= target:
                return self.prefix + cut
        cut = midpoint(low_s or None, high_s)
        return None if cut is None else self.prefix + cut

    def _request_size(self, r: _Range) -> int:
        """Keys to ask for: a page, or about what the range has left by its density (a key listed
        past its bound is listed for nothing), or a probe's worth for a split-off range not yet
        listed whose density nothing tells."""
        left = self._left(r)
        if left is None:
            return PROBE_KEYS if r.split_off and r.cursor is None else PAGE_KEYS
        return int(min(max(left * 1.25 + 20, PROBE_KEYS), PAGE_KEYS))

    # -- listing -----------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        threads = [threading.Thread(target=self._work, name=f"s3-list-{i}", daemon=True)
                   for i in range(max(1, self.workers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self.failures:
            raise self.failures[0]
        return self.found

    def _work(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self.failures:
                        return
                    r = self._take()
                    if r is not None:
                        break
                    if not self.active:
                        return
                    self.cond.wait()
            try:
                self._list(r)
            except BaseException as exc:  # one failed request fails the listing
                with self.cond:
                    self.failures.append(exc)
                    self.cond.notify_all()
                return

    def _list(self, r: _Range) -> None:
        while True:
            with self.cond:
                if self.failures:
                    return
                start = r.position()
                size = self._request_size(r)
                self.requests += 1
            objects, truncated = self.fetch(start, size)
            with self.cond:
                upto = r.upto  # read now: a split may have lowered it during the request
                mine = [o for o in objects if upto is None or o["Key"] <= upto]
                self.found.extend(mine)
                finished = not truncated or len(mine) < len(objects)
                if not finished and not objects:
                    finished = True
                    self.failures.append(RuntimeError(
                        f"S3 answered a truncated listing page with no keys (after {start!r})"))
                if not finished:
                    last = objects[-1]["Key"]
                    if len(objects) >= PAGE_KEYS // 2:
                        span = _span(objects[0]["Key"], last, len(self.prefix))
                        r.keys, r.span = r.keys + len(objects), r.span + span
                        self.keys, self.span = self.keys + len(objects), self.span + span
                    r.cursor = last
                    if upto is not None and last >= upto:
                        finished = True
                if finished:
                    self.active.remove(r)
                self.cond.notify_all()
            if finished:
                return


def list_key_ranges(fetch: Fetch, prefix: str, workers: int) -> tuple[list[dict], dict[str, int]]:
    """Every object under ``prefix`` (in no particular order), listed by ``workers`` ListObjectsV2
    requests at a time over disjoint key ranges, and counts of what it took (``requests``,
    ``splits``). With one worker it is one sequential pass. A failed request fails the listing
    (the other workers stop at their next request)."""
    lister = _Lister(fetch, prefix, workers)
    found = lister.run()
    return found, {"requests": lister.requests, "splits": lister.splits}
