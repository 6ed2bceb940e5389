"""The backup side: the snapshot format and the stores that hold snapshots.

Knows nothing of Prefect, restore modes or destinations.
"""

from backends.base import (
    Backend,
    SnapshotListing,
    list_snapshots,
    put_manifest,
    read_manifest,
)
from backends.local import LocalBackend
from backends.url import open_backend

__all__ = [
    "Backend",
    "LocalBackend",
    "SnapshotListing",
    "list_snapshots",
    "open_backend",
    "put_manifest",
    "read_manifest",
]
