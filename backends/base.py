"""The backend protocol: what memrestore needs from a place that holds snapshots.

A backend is a root (a folder, or an S3 bucket and prefix). A snapshot is the folder
``<snapshot_id>/`` of that root; its ``manifest.json`` is written last, so a folder without one is
an unfinished snapshot and is not listed.

Error contract, for every method: a missing object raises :class:`ObjectNotFoundError`, a refused
one :class:`AccessDeniedError`, a failure that may pass :class:`TransientBackendError`, a bad key
:class:`InvalidKeyError` (before any I/O). Errors of the *sink* a download writes into (a full
disk, say) are not backend errors: they propagate as they are, usually ``OSError``.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from backends.errors import BackendError, BadInputError, InvalidManifestError, ObjectNotFoundError
from backends.manifest import SnapshotManifest, check_snapshot_id, parse_manifest

MANIFEST_NAME = "manifest.json"

#: How many manifests are read at once when listing: manifests are small, so the time goes in
#: round trips, and 16 keeps a remote store busy without opening more connections than boto3's pool.
LIST_CONCURRENCY = 16


class Sink(Protocol):
    """Where a download's bytes go, in order: a file, a hasher, or both."""

    def write(self, data: bytes, /) -> int | None: ...


ProgressFn = Callable[[int], None]


@runtime_checkable
class Backend(Protocol):
    """A store of snapshots. Implementations: :class:`LocalBackend`, :class:`S3Backend`."""

    url: str

    def read_manifest_bytes(self, snapshot_id: str) -> bytes:
        """The raw bytes of ``<snapshot_id>/manifest.json``."""
        ...

    def list_snapshot_ids(self) -> list[str]:
        """Ids of the root's folders that hold a manifest (finished snapshots), sorted."""
        ...

    def object_size(self, key: str) -> int:
        """Size in bytes of the object at ``key``."""
        ...

    def download(self, key: str, sink: Sink, on_bytes: ProgressFn | None = None) -> int:
        """Stream the object at ``key`` into ``sink`` in order; return the byte count.

        ``on_bytes`` is called with the size of each piece as it arrives.
        """
        ...

    def put_object(self, key: str, source: bytes | Path) -> None:
        """Store ``source`` (bytes, or a file's contents) at ``key``. Used to write snapshots."""
        ...


def manifest_key(snapshot_id: str) -> str:
    return f"{check_snapshot_id(snapshot_id)}/{MANIFEST_NAME}"


def read_manifest(backend: Backend, snapshot_id: str) -> SnapshotManifest:
    """Fetch and parse a snapshot's manifest, checking it describes the folder it came from."""
    where = f"{backend.url.rstrip('/')}/{manifest_key(snapshot_id)}"
    manifest = parse_manifest(backend.read_manifest_bytes(snapshot_id), where)
    if manifest.snapshot_id != snapshot_id:
        raise InvalidManifestError(
            where,
            f"it names snapshot {manifest.snapshot_id!r} but sits in folder {snapshot_id!r}",
        )
    return manifest


def put_manifest(backend: Backend, manifest: SnapshotManifest) -> None:
    """Write a manifest where FORMAT.md puts it. Write it after the content objects."""
    backend.put_object(manifest_key(manifest.snapshot_id), manifest.to_json())


@dataclass
class SnapshotListing:
    """Every finished snapshot found, and the ones whose manifest could not be read (with why)."""

    snapshots: list[SnapshotManifest] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)

    def for_tenant(self, tenant_id: int) -> list[SnapshotManifest]:
        return [m for m in self.snapshots if m.tenant_id == tenant_id]

    def latest(self, tenant_id: int) -> SnapshotManifest | None:
        """The tenant's newest snapshot by ``created_at_unix_micros`` (never by object mtime).

        Ties (two snapshots in the same microsecond) go to the greater snapshot id, so the
        choice is the same on every run and every backend.
        """
        mine = self.for_tenant(tenant_id)
        return max(mine, key=lambda m: (m.created_at_unix_micros, m.snapshot_id), default=None)


def list_snapshots(backend: Backend, tenant_id: int | None = None) -> SnapshotListing:
    """Read every finished snapshot's manifest (concurrently), optionally for one tenant only.

    A manifest that cannot be read or parsed does not stop the listing: it is reported in
    ``unreadable`` with the reason, so that one bad snapshot never hides the good ones. A backend
    failure that is not about one manifest (the root is unreachable) still raises.
    """
    listing = SnapshotListing()
    ids = backend.list_snapshot_ids()
    with concurrent.futures.ThreadPoolExecutor(LIST_CONCURRENCY) as pool:
        futures = {pool.submit(read_manifest, backend, sid): sid for sid in ids}
        for future in concurrent.futures.as_completed(futures):
            sid = futures[future]
            try:
                manifest = future.result()
            except (BadInputError, ObjectNotFoundError) as exc:
                listing.unreadable[sid] = str(exc)
                continue
            except BackendError:
                raise
            if tenant_id is None or manifest.tenant_id == tenant_id:
                listing.snapshots.append(manifest)
    listing.snapshots.sort(key=lambda m: (m.tenant_id, m.created_at_unix_micros, m.snapshot_id))
    return listing
