"""A sampled verify's share, spelled ``5%`` (of the stored bytes) or ``10G`` (bytes): parsed with no
Prefect import, so that the command line refuses a bad one at once (tasks/sample_verify.py reads
with it)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from memrestore.backends.errors import RestoreError
from memrestore.backends.streams import parse_rate
from memrestore.tasks import units
from memrestore.tasks.errors import ShareSpellingError

#: How a share is spelled: a percent of the stored bytes (``5%``), or bytes (``10G``, ``500M``,
#: powers of 1024 as ``--limit-rate`` reads them). The flows' parameters are checked against it.
SHARE_PATTERN = r"^\s*(\d+(?:\.\d+)?\s*%|\d+(?:\.\d+)?\s*[kKmMgGtT]?(?:i?[bB])?)\s*$"
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class Share:
    """A share of the stored bytes: a percent of them, or a byte count."""

    percent: float | None = None
    bytes: int | None = None

    def budget(self, total: int) -> int:
        """Bytes to read of ``total``."""
        if self.percent is not None:
            return int(total * self.percent / 100)
        return min(total, self.bytes or 0)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else units.size(self.bytes)


def parse_share(text: str) -> Share:
    """``5%`` (of the stored bytes; more than 0, at most 100) or ``10G`` (bytes, powers of 1024)."""
    match = _PERCENT.match(text)
    if match:
        percent = float(match.group(1))
        if not 0 < percent <= 100:
            raise ShareSpellingError(f"{text!r}: a share is more than 0% and at most 100%")
        return Share(percent=percent)
    not_a_share = ShareSpellingError(
        f"{text!r} is not a share: give a percent of the stored bytes (5%) or a byte count with an "
        "optional unit, k, M, G or T (powers of 1024), e.g. 10G or 500M")
    if re.match(SHARE_PATTERN, text) is None:
        raise not_a_share
    try:
        return Share(bytes=parse_rate(text))
    except RestoreError:
        raise not_a_share from None
