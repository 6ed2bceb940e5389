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

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from memrestore.backends.errors import InvalidManifestError
from memrestore.backends.manifest import SnapshotManifest, check_snapshot_id, parse_manifest
from memrestore.backends.streams import RateLimit, StreamPool

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True, slots=True)
class ManifestRef:
    """A finished snapshot as a listing of the backend sees it, before its manifest is read."""

    snapshot_id: str
    #: An opaque tag that changes whenever the manifest object is rewritten (S3: ETag, size and
    #: last-modified; a folder: inode, size, mtime and ctime), so a manifest read at one version
    #: can be reused while the version holds. None when the backend cannot vouch for it right now
    #: (a file changed too recently for its timestamps to tell a rewrite apart): read it, keep nothing.
    version: str | None


class Sink(Protocol):
    """Where a download's bytes go, in order: a file, a hasher, or both. ``data`` may be a view of
    a buffer the backend fills again after the call returns: use it, do not keep it."""

    def write(self, data: bytes, /) -> int | None: ...


class PositionalSink(Protocol):
    """Where a download's bytes go when its parts arrive out of order: each part's bytes in order,
    at their offset in the object. Called from several threads at once; ``data`` is only valid
    during the call, as for :class:`Sink`."""

    def write_at(self, offset: int, data: bytes, /) -> None: ...


@runtime_checkable
class FileSink(Protocol):
    """An optional ability of a :class:`Sink`: it is a file, which a backend holding the object as
    a local file may have the kernel fill (``copy_file_range``), the bytes never passing through
    Python. :class:`LocalBackend` looks for it with ``isinstance(sink, FileSink)``; the staged
    file of ``tasks/stage.py`` has it."""

    def copy_from(self, src_fd: int, offset: int, count: int, /) -> int:
        """Copy up to ``count`` bytes of ``src_fd`` from ``offset`` to the same offset of the sink
        (the next byte it expects); return how many, 0 at the end of the source. An OSError may
        be the source's or the sink's: the kernel does not say which."""
        ...


ProgressFn = Callable[[int], None]


@runtime_checkable
class Backend(Protocol):
    """A store of snapshots. Implementations: :class:`LocalBackend`, :class:`S3Backend`."""

    url: str
    #: Names the store itself for caches kept on this machine: the URL, and for S3 the endpoint
    #: too (``s3://backups`` on AWS and on a local MinIO are two different stores).
    identity: str

    def read_manifest_bytes(self, snapshot_id: str) -> bytes:
        """The raw bytes of ``<snapshot_id>/manifest.json``."""
        ...

    def list_snapshot_ids(self) -> list[str]:
        """Ids of the root's folders that hold a manifest (finished snapshots), sorted."""
        ...

    def list_manifests(self) -> list[ManifestRef]:
        """The finished snapshots as :meth:`list_snapshot_ids` finds them, sorted by id, each with
        its manifest's version: what the listing already returns for free (no manifest is read)."""
        ...

    def object_size(self, key: str) -> int:
        """Size in bytes of the object at ``key``."""
        ...

    def download(self, key: str, sink: Sink, on_bytes: ProgressFn | None = None,
                 limit: RateLimit | None = None) -> int:
        """Stream the object at ``key`` into ``sink`` in order; return the byte count.

        ``on_bytes`` is called with the size of each piece as it arrives; every read is first
        reserved from ``limit`` (a rate limit shared with other downloads), when one is given.
        A backend that can fetch parts of one object at once is also a :class:`RangedBackend`
        (S3); the staging step uses that when it is there.
        """
        ...

    def put_object(self, key: str, source: bytes | Path) -> None:
        """Store ``source`` (bytes, or a file's contents) at ``key``. Used to write snapshots."""
        ...


@runtime_checkable
class RangedBackend(Protocol):
    """An optional ability of a :class:`Backend`: fetching parts of one object at once (S3). The
    staging step looks for it with ``isinstance(backend, RangedBackend)`` and then downloads with
    :meth:`download_at` instead of :meth:`Backend.download`.

    A wrapper that forwards to such a backend through ``__getattr__`` has the ability only if it
    defines ``download_at`` itself: from Python 3.12 on, ``isinstance`` looks the method up
    without calling ``__getattr__``."""

    def download_at(self, key: str, sink: PositionalSink, on_bytes: ProgressFn | None = None,
                    pool: StreamPool | None = None, *, content_checked: bool = False) -> int:
        """Fetch the object at ``key`` as parts, each a ranged read run on ``pool``'s streams
        under its rate limit (without a pool, on streams of its own), each part's bytes written
        in order at their offset with ``sink.write_at``; return the object's size. ``on_bytes``
        as for :meth:`Backend.download`.

        ``content_checked`` says the caller checks the bytes against a digest of its own (the
        manifest's blake3): the backend may then skip a transport checksum of its own and the
        copies that computing it costs."""
        ...


def manifest_key(snapshot_id: str) -> str:
    return f"{check_snapshot_id(snapshot_id)}/{MANIFEST_NAME}"


def read_manifest(backend: Backend, snapshot_id: str) -> SnapshotManifest:
    """Fetch and parse a snapshot's manifest, checking it describes the folder it came from."""
    return parse_manifest_of(backend, snapshot_id, backend.read_manifest_bytes(snapshot_id))


def parse_manifest_of(backend: Backend, snapshot_id: str, raw: bytes) -> SnapshotManifest:
    """Parse the bytes of ``<snapshot_id>/manifest.json`` as :func:`read_manifest` does, wherever
    they were read from (the backend, or a cache of it)."""
    where = f"{backend.url.rstrip('/')}/{manifest_key(snapshot_id)}"
    manifest = parse_manifest(raw, where)
    if manifest.snapshot_id != snapshot_id:
        raise InvalidManifestError(
            where,
            f"it names snapshot {manifest.snapshot_id!r} but sits in folder {snapshot_id!r}",
        )
    return manifest


def put_manifest(backend: Backend, manifest: SnapshotManifest) -> None:
    """Write a manifest where FORMAT.md puts it. Write it after the content objects."""
    backend.put_object(manifest_key(manifest.snapshot_id), manifest.to_json())
