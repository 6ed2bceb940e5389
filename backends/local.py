"""A backend that is a folder on a local (or mounted) file system."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from backends.base import MANIFEST_NAME, ProgressFn, Sink
from backends.errors import (
    AccessDeniedError,
    InvalidKeyError,
    InvalidSnapshotIdError,
    ObjectNotFoundError,
    TransientBackendError,
)
from backends.manifest import check_content_key, check_snapshot_id

#: Read size for streaming: large enough that syscalls and hashing calls are few, small enough
#: that memory stays flat (a download holds one chunk at a time).
READ_CHUNK = 1024 * 1024

# errno values that say the object is not there, or not for us, whatever we retry.
_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR}
_DENIED = {errno.EACCES, errno.EPERM}


class LocalBackend:
    """Snapshots under ``root``: ``root/<snapshot_id>/manifest.json`` and content objects."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        check_content_key(key)
        path = self.root / key
        # A symlink inside the backup folder must not lead reads (or writes) out of it.
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise InvalidKeyError(key, "it resolves outside the backend folder through a symlink")
        return path

    def _fail(self, exc: OSError, key: str) -> Exception:
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
        return TransientBackendError(f"reading {key!r} at {where} failed: {exc}", key=key)

    def read_manifest_bytes(self, snapshot_id: str) -> bytes:
        key = f"{check_snapshot_id(snapshot_id)}/{MANIFEST_NAME}"
        try:
            return self._path(key).read_bytes()
        except OSError as exc:
            raise self._fail(exc, key) from exc

    def list_snapshot_ids(self) -> list[str]:
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except OSError as exc:
            if exc.errno in _NOT_FOUND:
                raise ObjectNotFoundError(
                    f"backend folder {self.root} does not exist; check the --backend path"
                ) from exc
            raise self._fail(exc, ".") from exc
        ids = []
        for entry in entries:
            try:
                check_snapshot_id(entry.name)
            except InvalidSnapshotIdError:
                continue  # not a snapshot folder
            if entry.is_dir() and os.path.isfile(os.path.join(entry.path, MANIFEST_NAME)):
                ids.append(entry.name)
        return ids

    def object_size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except OSError as exc:
            raise self._fail(exc, key) from exc

    def download(self, key: str, sink: Sink, on_bytes: ProgressFn | None = None) -> int:
        path = self._path(key)
        total = 0
        try:
            f = open(path, "rb", buffering=0)
        except OSError as exc:
            raise self._fail(exc, key) from exc
        with f:
            while True:
                try:
                    chunk = f.read(READ_CHUNK)
                except OSError as exc:
                    raise self._fail(exc, key) from exc
                if not chunk:
                    return total
                sink.write(chunk)  # a sink's own OSError (disk full) is not ours to map
                total += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))

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
