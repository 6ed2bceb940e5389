"""The backup side: the snapshot format and the stores that hold snapshots.

Knows nothing of Prefect, restore modes or destinations.
"""

from memrestore.backends.base import (
    Backend,
    ManifestRef,
    put_manifest,
    read_manifest,
)
from memrestore.backends.listing import SnapshotEntry, SnapshotListing, list_snapshots
from memrestore.backends.local import LocalBackend
from memrestore.backends.manifest_cache import ManifestCache
from memrestore.backends.url import open_backend

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
