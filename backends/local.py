"""A backend that is a folder on a local (or mounted) file system."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

from memrestore.backends.base import MANIFEST_NAME, FileSink, ManifestRef, ProgressFn, Sink
from memrestore.backends.errors import (
    AccessDeniedError,
    InvalidKeyError,
    InvalidManifestError,
    InvalidSnapshotIdError,
    ObjectNotFoundError,
    PermanentBackendError,
    TransientBackendError,
)
from memrestore.backends.manifest import MAX_MANIFEST_BYTES, check_content_key, check_snapshot_id
from memrestore.backends.streams import RateLimit, metered

#: Read size for streaming: large enough that syscalls and hashing calls are few, small enough
#: that memory stays flat (a download holds one chunk at a time).
READ_CHUNK = 1024 * 1024
#: Bytes per ``copy_file_range`` call when the sink is a file (:class:`backends.base.FileSink`):
#: progress is reported, and the sink starts writing to disk, between calls. 1, 2, 8 and 32 MiB
#: measured alike; the read size keeps the steps (and the crash tests' chunk counts) the same.
COPY_CHUNK = READ_CHUNK
#: Read size for a sink that only reads the bytes (``verify``'s hashing), with no rate limit: a
#: few large reads into one buffer, each hashed on every core, go at b3sum's pace (BENCHMARKS.md).
WHOLE_READ = 8 * 1024 * 1024

#: A file changed less than this long before a listing gets no version (see ``ManifestRef``):
#: file times tick coarsely (a kernel tick of a few ms; a second on some file systems and NFS
#: servers), so a rewrite within the same tick, of the same size, into a reused inode would
#: carry the very same version. Past this window any later change moves ctime.
RACY_WINDOW_SECONDS = 2.0

# errno values that say the object is not there, or not for us, whatever we retry.
_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR}
_DENIED = {errno.EACCES, errno.EPERM}
# ... and the ones that say the key can never name a readable file here.
_NEVER = {errno.ENAMETOOLONG, errno.EISDIR, errno.ELOOP, errno.EINVAL, errno.ENXIO}
# errno values of a kernel copy that can only be the destination's: passed on as they are. Any
# other failure of a kernel copy (EXDEV across file systems, EIO from either side) sends the rest
# of the object through Python, where a read's failure and a write's are told apart.
_SINK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _wanted(size: int, done: int) -> int:
    """Bytes to reserve from a rate limit for the next read of an object of ``size`` bytes,
    ``done`` of them read: what is left, at most a chunk (none at the end, where the read that
    finds it reads nothing)."""
    return max(0, min(READ_CHUNK, size - done))


class LocalBackend:
    """Snapshots under ``root``: ``root/<snapshot_id>/manifest.json`` and content objects."""

    def __init__(self, root: str | Path, *, racy_window_seconds: float = RACY_WINDOW_SECONDS) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()
        self.identity = self.url
        self.racy_window_ns = int(racy_window_seconds * 1e9)

    def _path(self, key: str) -> Path:
        check_content_key(key)
        path = self.root / key
        # A symlink inside the backup folder must not lead reads (or writes) out of it.
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise InvalidKeyError(key, "it resolves outside the backend folder through a symlink")
        return path

    def _as_backend_error(self, exc: OSError, key: str) -> Exception:
        """The backend error (of the protocol's error contract) that ``exc``, met reading ``key``,
        stands for: returned, for the caller to raise ``from exc``."""
        where = f"{self.root / key}"
        if exc.errno in _NOT_FOUND:
            return ObjectNotFoundError(
                f"object {key!r} not found in backend {self.url} (looked for {where}); the "
                "snapshot is incomplete or the key is wrong: restore another snapshot",
                key=key,
            )
        if exc.errno in _DENIED:
            return AccessDeniedError(
                f"permission denied reading {key!r} at {where}; give this user read access "
                "to the backup folder",
                key=key,
            )
        if exc.errno in _NEVER:
            return PermanentBackendError(
                f"{key!r} cannot be read at {where}: {exc.strerror}; the snapshot is damaged, "
                "restore another one",
                key=key,
            )
        return TransientBackendError(f"reading {key!r} at {where} failed: {exc}", key=key)

    def _open_regular(self, key: str) -> tuple[int, int]:
        """Open ``key`` for reading, refusing anything but a regular file; returns (fd, size).

        O_NONBLOCK, so that a FIFO planted in the backup folder cannot hang the restore.
        """
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise self._as_backend_error(exc, key) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PermanentBackendError(
                    f"{key!r} at {path} is not a regular file; the snapshot is damaged, restore "
                    "another one",
                    key=key,
                )
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_size

    def read_manifest_bytes(self, snapshot_id: str) -> bytes:
        key = f"{check_snapshot_id(snapshot_id)}/{MANIFEST_NAME}"
        fd, size = self._open_regular(key)
        with open(fd, "rb", closefd=True) as f:
            if size > MAX_MANIFEST_BYTES:
                raise InvalidManifestError(
                    f"{self.root / key}", f"it is {size} bytes, above the {MAX_MANIFEST_BYTES} a manifest may have")
            try:
                # Read what fstat gave (and one byte more, to see a file that grew since): a read of
                # the whole bound would allocate 16 MiB for each manifest of a few KiB.
                data = f.read(size + 1)
                if len(data) > size:
                    data += f.read(MAX_MANIFEST_BYTES + 1 - len(data))
                return data
            except OSError as exc:
                raise self._as_backend_error(exc, key) from exc

    def list_snapshot_ids(self) -> list[str]:
        return [ref.snapshot_id for ref in self.list_manifests()]

    def list_manifests(self) -> list[ManifestRef]:
        # The clock is read before any file is: a file changed after it is racy, whatever happens.
        settled_before = time.time_ns() - self.racy_window_ns
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            if exc.errno in _NOT_FOUND:
                raise ObjectNotFoundError(
                    f"backend folder {self.root} does not exist; check the --backend path"
                ) from exc
            raise self._as_backend_error(exc, ".") from exc
        refs = []
        for entry in entries:
            try:
                check_snapshot_id(entry.name)
            except InvalidSnapshotIdError:
                continue  # not a snapshot folder
            if not entry.is_dir():
                continue
            try:
                st = os.stat(f"{entry.path}/{MANIFEST_NAME}")  # follows links, as reads do
            except OSError:
                continue  # no manifest: an unfinished snapshot
            if not stat.S_ISREG(st.st_mode):
                continue
            changed = max(st.st_mtime_ns, st.st_ctime_ns)
            version = (
                f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
                if changed < settled_before else None
            )
            refs.append(ManifestRef(entry.name, version))
        return refs

    def object_size(self, key: str) -> int:
        fd, size = self._open_regular(key)
        os.close(fd)
        return size

    def download(self, key: str, sink: Sink, on_bytes: ProgressFn | None = None,
                 limit: RateLimit | None = None) -> int:
        """The object's bytes to ``sink``, each chunk first reserved from ``limit`` if one is given
        (as many bytes as are left of the object's size, at most a chunk: a small object or a
        last short chunk reserves what it reads, not a whole chunk it would wait for). The chunks
        are views of one buffer, read into again for the next: ``sink.write`` uses (writes,
        hashes) its chunk before it returns, and keeps no reference to it."""
        fd, size = self._open_regular(key)
        total = 0
        with open(fd, "rb", buffering=0, closefd=True) as f:
            if isinstance(sink, FileSink) and hasattr(os, "copy_file_range"):
                total, done = self._copy_in_kernel(fd, sink, on_bytes, limit, size)
                if done:
                    return total
                f.seek(total)
            buffer = memoryview(bytearray(WHOLE_READ if limit is None and not isinstance(sink, FileSink) else READ_CHUNK))
            while True:
                try:
                    n = metered(limit, _wanted(size, total), lambda: f.readinto(buffer), int)
                except OSError as exc:
                    raise self._as_backend_error(exc, key) from exc
                if not n:
                    return total
                sink.write(buffer[:n])  # a sink's own OSError (disk full) is not ours to map
                total += n
                if on_bytes is not None:
                    on_bytes(n)

    @staticmethod
    def _copy_in_kernel(fd: int, sink: FileSink, on_bytes: ProgressFn | None,
                        limit: RateLimit | None = None, size: int | None = None) -> tuple[int, bool]:
        """Have the kernel copy the object into a file sink: the bytes go from page cache to page
        cache, never through Python (half the time of reading and writing them here, measured in
        BENCHMARKS.md). Returns (bytes copied, whether that was all of it)."""
        total = 0
        while True:
            try:
                want = COPY_CHUNK if size is None else _wanted(size, total)
                n = metered(limit, want, lambda: sink.copy_from(fd, total, COPY_CHUNK), int)
            except OSError as exc:
                if exc.errno in _SINK_FULL:
                    raise
                return total, False  # the rest goes the plain way: see _SINK_FULL
            if n == 0:
                return total, True
            total += n
            if on_bytes is not None:
                on_bytes(n)

    def put_object(self, key: str, source: bytes | Path) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as out:
                if isinstance(source, bytes):
                    out.write(source)
                else:
                    with open(source, "rb") as src:
                        while chunk := src.read(READ_CHUNK):
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
