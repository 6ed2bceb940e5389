"""What a benchmark run builds and measures: the snapshots of each row, the A/B pairs a row, the
far store of rows 7 and 8; the full run's sizes and ``--quick``'s; and how sizes are written."""

from __future__ import annotations

from dataclasses import dataclass

from benchmarks.data import GiB, MiB, SnapshotSpec, even_snapshot
from benchmarks.farstore import FarStore

ALL_ROWS = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12")
#: Rows that read the big snapshot from S3 (SeaweedFS), and those that read it from a far store.
S3_ROWS = {"2", "3", "7", "8", "9", "10", "11", "12"}
FAR_ROWS = {"7", "8"}
#: The link profiles' rows (benchmarks/links.py): loopback, near, far, very far.
LINK_ROWS = {"9", "10", "11", "12"}


@dataclass(frozen=True)
class Sizes:
    """What one run builds and measures."""

    tiny: SnapshotSpec  # row 0
    big: SnapshotSpec  # rows 2, 3, 6, 7, 8
    rss_small: SnapshotSpec  # row 4
    rss_large: SnapshotSpec  # rows 4 and 1 (issue 20: its target holds at 4 GiB and up)
    drill_tenants: int  # row 5
    drill_bytes: int  # row 5, per tenant
    pairs: int
    #: Seconds of quiet before each timed run (benchmarks/measure.py says why).
    settle: float
    #: Rows 7 and 8: how far the far store is, and row 8's cap.
    far: FarStore
    #: Rows 9 to 12: the snapshot every link's row restores.
    links: SnapshotSpec


FULL = Sizes(
    tiny=even_snapshot("tiny-64k", 4, 64 * 1024),
    big=even_snapshot("snap-2g", 1, 2 * GiB),
    rss_small=even_snapshot("snap-256m", 2, 256 * MiB),
    rss_large=even_snapshot("snap-4g", 3, 4 * GiB),
    drill_tenants=200,
    drill_bytes=1 * MiB,
    pairs=3,
    settle=4.0,
    # 6 MB/s a connection: the AWS CLI's 10 connections take ~36 s for 2 GiB, and 32 streams
    # (~190 MB/s) leave this machine's two cores room (BENCHMARKS.md: the proxy's CPU per run).
    far=FarStore(rate=6_000_000, delay=0.02, limit="64M", limit_bytes=64 * MiB),
    # 1 GiB in four blobs of 256 MiB: the AWS CLI's 10 connections at 3 MB/s (the very far link)
    # take ~36 s for it; on loopback, a few seconds, well above a command's fixed cost.
    links=even_snapshot("snap-1g", 4, 1 * GiB),
)
QUICK = Sizes(
    tiny=even_snapshot("tiny-64k", 4, 64 * 1024),
    big=even_snapshot("quick-big", 1, 4 * MiB),
    rss_small=even_snapshot("quick-small", 2, 1 * MiB),
    rss_large=even_snapshot("quick-large", 3, 8 * MiB),
    drill_tenants=2,
    drill_bytes=64 * 1024,
    pairs=1,
    settle=0.0,
    far=FarStore(rate=4_000_000, delay=0.02, limit="2M", limit_bytes=2 * MiB),
    links=even_snapshot("quick-links", 4, 8 * MiB),
)


def size_text(n: int) -> str:
    """``2 GiB``, ``256 MiB``, ``64 KiB``: as the report's rows name sizes."""
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB:
        return f"{n / MiB:.0f} MiB"
    return f"{n // 1024} KiB"


def spec_size(spec: SnapshotSpec) -> str:
    return size_text(spec.total_bytes)
