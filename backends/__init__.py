"""The backup side: the snapshot format and the stores that hold snapshots.

Knows nothing of Prefect, restore modes or destinations.
"""

from backends.base import (
    Backend,
    ManifestRef,
    put_manifest,
    read_manifest,
)
from backends.listing import SnapshotEntry, SnapshotListing, list_snapshots
from backends.local import LocalBackend
from backends.manifest_cache import ManifestCache
from backends.url import open_backend

__all__ = [
    "Backend",
    "LocalBackend",
    "ManifestCache",
    "ManifestRef",
    "SnapshotEntry",
    "SnapshotListing",
    "list_snapshots",
    "open_backend",
    "put_manifest",
    "read_manifest",
]
