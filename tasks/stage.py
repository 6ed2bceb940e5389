"""Download-and-verify: stream one blob from the backend into a staged file, hashed with blake3.

Bytes go from the backend into the file in chunks and are hashed as they land (from memory, or
read back from the page cache where the kernel copied them), so memory does not grow with blob
size. The staged tree mirrors the final layout under ``<data_dir>/.restore-staging/``; a file is
written as ``<name>.part``, fsynced, checked, and only then renamed to ``<name>``. So a staged
file without the suffix is always complete and verified (a resumed restore may keep it after
re-hashing), and a blob whose hash differs from the manifest never gets past ``.part``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from pathlib import Path
from typing import Callable

from pydantic import BaseModel

from memrestore.backends import Backend
from memrestore.backends.base import RangedBackend
from memrestore.backends.hashing import hash_file, hash_range, new_hasher
from memrestore.backends.streams import RateLimit
from memrestore.tasks import interrupt, progress
from memrestore.tasks.errors import ChecksumMismatchError, DestinationIOError
from memrestore.tasks.crash_points import crash_point
from memrestore.tasks.marker import fsync_dir, staging_dir
from memrestore.tasks.plan import PlanItem
from memrestore.tasks.transfer import Transfer

PART_SUFFIX = ".part"
#: The buffer a staged file hashes its bytes back through: the spans it reads back are a kernel
#: copy's (1 MiB: ``backends.local.COPY_CHUNK``) or a ranged part's reads, so a larger one would
#: only hold memory (four blobs at once, 8 MiB each, took an S3 restore's peak RSS from 176 to
#: 196 MiB at 48 streams).
HASH_BACK_CHUNK = 1024 * 1024
#: Largest single write to a staged file: a 1 MiB chunk goes in as eight writes. The kernel sizes
#: the page-cache pages it allocates to the write (large folios), and large ones cost many times
#: more to fill here: 2 GiB written by four threads took 2.9-4.7 s of system time in 1 MiB
#: writes, 0.56-0.57 s in 128 KiB writes (measured in BENCHMARKS.md). rclone and cp write in
#: small pieces too.
WRITE_SLICE = 128 * 1024
#: Every write to a staged file is followed by a hint to start writing those bytes to disk,
#: without waiting for it (sync_file_range). Otherwise the kernel holds up to 10% of memory dirty
#: before it writes anything, so a blob of a few GiB is copied into the page cache first and
#: written out only by the final fsync, one after the other; started early, the disk writes while
#: the download goes on and the fsync finds little left to do. Hinting each write's own range
#: (a 1 MiB chunk) measures faster than hinting the whole file every 8 MiB, which is faster than no
#: hint at all (BENCHMARKS.md).
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, no wait


def _writeback_starter():
    """Linux's sync_file_range(2) (not in Python's os module), or None elsewhere."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _writeback_starter()


class StagedItem(BaseModel):
    """A blob that is staged (or, for verify, hashed): its size, its actual digest, and whether
    that digest was checked against the manifest."""

    item: PlanItem
    bytes: int
    checksum: str
    verified: bool
    reused: bool = False


class _HashingWriter:
    """Feeds every chunk, in order, to blake3 (``memrestore verify``: nothing is written)."""

    def __init__(self) -> None:
        self.hasher = new_hasher()

    def write(self, data: bytes) -> int:
        self.hasher.update(data)
        return len(data)


class _StagedFile:
    """A ``.part`` file being filled, by one stream in order (:meth:`write`), by the kernel from a
    local backend's file (:meth:`copy_from`), or by several ranged GETs at their offsets
    (:meth:`write_at`), and hashed in order as it fills.

    The hash must see the bytes in file order, but ranged parts arrive out of order, and holding
    them in memory until their turn would make memory grow with the blob. So every chunk goes to
    the file at once; a chunk that lands exactly where the hash has got to is hashed straight from
    memory, and the ones written ahead are read back from the file (from the page cache, where
    they were just written) when the hash reaches them. Whichever writer finds the hash lock free
    moves the hash on; :meth:`hexdigest` finishes it. So the hash is of the file's own bytes, memory
    is one chunk per stream, and hashing never holds up a download for more than its own chunk.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0  # bytes written, all streams together
        self._end = 0  # where the next in-order write goes
        self._hasher = new_hasher()
        self._buffer: bytearray | None = None  # for bytes hashed back from the file, made on first use
        self._hashed = 0  # the hash covers the file's bytes [0, _hashed)
        self._spans: dict[int, int] = {}  # written, not yet hashed: start -> end
        self._lock = threading.Lock()  # guards size, _spans and the writeback count
        self._hash_lock = threading.Lock()  # one thread moves the hash on at a time

    def write(self, data: bytes) -> int:
        self.write_at(self._end, data)
        self._end += len(data)
        return len(data)

    def write_at(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        at = offset
        while view:
            written = os.pwrite(self.fd, view[:WRITE_SLICE], at)
            view, at = view[written:], at + written
        self._written(offset, len(data))
        self._advance(offset, data, block=False)
        crash_point("stage-chunk")

    def copy_from(self, src_fd: int, offset: int, count: int) -> int:
        """The local backend's way in (this file is a :class:`backends.base.FileSink`): the
        kernel copies the next bytes from the backend's file into this one; they are hashed back
        from the page cache, where they were just written."""
        n = os.copy_file_range(src_fd, self.fd, count, offset, offset)
        if n:
            self._end = offset + n
            self._written(offset, n)
            self._advance(offset, None, block=False)
            crash_point("stage-chunk")
        return n

    def _written(self, offset: int, n: int) -> None:
        """Count ``n`` bytes now in the file at ``offset`` for the hash, and have the disk start
        on them; stop here if the process was asked to stop (Ctrl-C, SIGTERM)."""
        interrupt.check()
        with self._lock:
            self._spans[offset] = offset + n
            self.size += n
        self._start_writeback(offset, n)

    def _advance(self, offset: int, data: bytes | None, block: bool) -> None:
        """Hash every written span that continues the hash, in order."""
        if not self._hash_lock.acquire(blocking=block):
            return  # another writer is at it; what this one wrote is hashed by it or the next
        try:
            while True:
                with self._lock:
                    start = self._hashed
                    end = self._spans.pop(start, None)
                if end is None:
                    return
                if data is not None and offset == start and len(data) == end - start:
                    self._hasher.update(data)  # this writer's own chunk: straight from memory
                else:
                    self._hash_back(start, end)
                self._hashed = end
        finally:
            self._hash_lock.release()

    def _hash_back(self, start: int, end: int) -> None:
        if self._buffer is None:
            self._buffer = bytearray(HASH_BACK_CHUNK)
        hash_range(self.fd, start, end, self._hasher, self._buffer)

    def hexdigest(self) -> str:
        """The digest of the whole file, once every write has returned."""
        self._advance(-1, None, block=True)
        if self._spans or self._hashed != self.size:
            raise OSError(errno.EIO, f"the staged file has gaps: {self.size} bytes written, "
                                     f"{self._hashed} of them contiguous from the start")
        return self._hasher.hexdigest()

    def _start_writeback(self, offset: int, n: int) -> None:
        """Ask the kernel to start writing the bytes just written, without waiting. Only a hint:
        the fsync before the rename is what makes the file durable, so a failure is ignored."""
        if _sync_file_range is not None:
            _sync_file_range(self.fd, offset, n, _SYNC_FILE_RANGE_WRITE)


def _verify_against_manifest(item: PlanItem, actual: str) -> bool:
    """Compare the digest ``actual`` with the manifest's for ``item``: True when they match, False
    when the manifest gives none (nothing to compare); raises ChecksumMismatchError when they
    differ."""
    if item.expected_checksum is None:
        return False
    if actual != item.expected_checksum:
        raise ChecksumMismatchError(item.content_key, item.expected_checksum, actual)
    return True


def hash_item(item: PlanItem, backend: Backend, limit: RateLimit | None = None) -> StagedItem:
    """Download ``item`` and hash it, writing nothing (``memrestore verify``, the sampled verify);
    its bytes are reported to the listener watching (:func:`progress.watching`), each read first
    reserved from ``limit`` when one is given."""
    writer = _HashingWriter()
    size = backend.download(item.content_key, writer, progress.current().advance, limit=limit)
    actual = writer.hasher.hexdigest()
    verified = _verify_against_manifest(item, actual)
    return StagedItem(item=item, bytes=size, checksum=actual, verified=verified)


def staged_path(data_dir: Path, item: PlanItem) -> Path:
    return staging_dir(data_dir) / item.destination


def reuse_staged(data_dir: Path, item: PlanItem, advance: Callable[[int], None]) -> StagedItem | None:
    """A staged file from an interrupted restore, if it is complete and still hashes right; its
    bytes are counted as received (``advance``, a transfer's)."""
    final = staged_path(data_dir, item)
    if item.expected_checksum is None or not final.is_file() or final.is_symlink():
        return None
    size, actual = hash_file(final)
    if actual != item.expected_checksum:
        final.unlink()
        return None
    advance(size)
    return StagedItem(item=item, bytes=size, checksum=actual, verified=True, reused=True)


def recheck_item(item: PlanItem, data_dir: Path) -> StagedItem:
    """Hash an item already staged or already moved into place by an interrupted commit."""
    staged = staged_path(Path(data_dir), item)
    path = staged if staged.exists() else Path(data_dir) / item.destination
    size, actual = hash_file(path)
    verified = _verify_against_manifest(item, actual)
    return StagedItem(item=item, bytes=size, checksum=actual, verified=verified, reused=True)


def stage_item(item: PlanItem, backend: Backend, data_dir: Path, resume: bool, transfer: Transfer) -> StagedItem:
    """Stream ``item`` into its staged file, verify it, and make it durable under its final name.
    A backend that can read parts of an object at once (S3) runs them on the ``transfer``'s
    streams, shared with the restore's other blobs; every backend reads under its rate limit, and
    the bytes are counted in it (``resume``: a complete staged file of an interrupted restore is
    kept if it still hashes right).

    Raises ChecksumMismatchError (the ``.part`` file is removed), a BackendError, or
    DestinationIOError (disk full, permissions). Nothing outside the staging tree is touched.
    """
    data_dir = Path(data_dir)
    advance = transfer.advance
    if resume and (kept := reuse_staged(data_dir, item, advance)) is not None:
        return kept
    final = staged_path(data_dir, item)
    part = final.with_name(final.name + PART_SUFFIX)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        # Read and write: parts written ahead of the hash are read back to be hashed.
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise DestinationIOError("creating", part, exc) from exc
    received = 0
    counting = threading.Lock()  # ranged parts report their bytes from several threads

    def on_bytes(n: int) -> None:
        nonlocal received
        with counting:
            received += n
        advance(n)

    try:
        try:
            staged = _StagedFile(fd)
            if isinstance(backend, RangedBackend):  # parts at once (S3)
                size = backend.download_at(item.content_key, staged, on_bytes, transfer.pool,
                                           content_checked=item.expected_checksum is not None)
            else:
                size = backend.download(item.content_key, staged, on_bytes, limit=transfer.limit)
            actual = staged.hexdigest()
            os.fsync(fd)
        finally:
            os.close(fd)
        verified = _verify_against_manifest(item, actual)
        os.rename(part, final)
        fsync_dir(final.parent)
        crash_point("item-staged")
    except OSError as exc:
        part.unlink(missing_ok=True)
        advance(-received)
        raise DestinationIOError("writing", part, exc) from exc
    except BaseException:
        part.unlink(missing_ok=True)
        advance(-received)
        raise
    return StagedItem(item=item, bytes=size, checksum=actual, verified=verified)

