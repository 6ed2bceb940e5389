"""A local folder backend's blobs are copied into their staged files by the kernel
(``copy_file_range``) and hashed back from the file: exact bytes, the manifest's hash checked,
and a plain read-and-write for whatever the kernel will not copy (another file system, a failing
copy), with a full disk still reported as the destination's.

``os.copy_file_range`` is wrapped here only to count calls or to act at a known call: every copy
is the kernel's own, and so are EXDEV and ENOSPC.
"""

from __future__ import annotations

import errno
import os
import threading

import pytest

from memrestore.backends import local as local_module
from memrestore.tasks.errors import ChecksumMismatchError, DestinationIOError
from tests.restorekit import execute
from tests.conftest import tree
from tests.restorekit import LAYOUTS, make_snapshot, ours
from tests.test_disk_full import assert_untouched, fill, volume  # noqa: F401  (a small tmpfs)

MiB = 1024 * 1024
LAYOUT = LAYOUTS[3]  # single_tenant over other tenants' data and an older copy of this one

_real_copy = os.copy_file_range


class CopyLog:
    """Wraps ``os.copy_file_range``: records each call's result (bytes, or the errno raised).
    ``mid_blob()``, if given, runs once, before the first call that copies a blob's second chunk:
    a blob that certainly has bytes left to copy (items are staged by several threads at once,
    so a count of calls would not say which blob, or whether it is at its end)."""

    def __init__(self, monkeypatch, mid_blob=None) -> None:
        self.results: list[int | str] = []
        self.mid_blob = mid_blob
        self._lock = threading.Lock()
        monkeypatch.setattr(os, "copy_file_range", self)

    def __call__(self, src, dst, count, offset_src=None, offset_dst=None):
        with self._lock:
            act, self.mid_blob = (self.mid_blob, None) if offset_src == count else (None, self.mid_blob)
        try:
            if act is not None:
                act()
            n = _real_copy(src, dst, count, offset_src, offset_dst)
        except OSError as exc:
            self.results.append(errno.errorcode[exc.errno])
            raise
        self.results.append(n)
        return n

    @property
    def copied(self) -> int:
        return sum(r for r in self.results if isinstance(r, int))


@pytest.fixture
def small_copies(monkeypatch):
    """Kernel copies of 256 KiB, so that a few MiB take many calls."""
    monkeypatch.setattr(local_module, "COPY_CHUNK", 256 * 1024)


def test_a_local_restore_is_copied_by_the_kernel_and_checked(monkeypatch, small_copies, tmp_path):
    snap = make_snapshot(tmp_path / "backend", hnsw_bytes=3 * MiB + 5)
    data_dir = tmp_path / "data"
    LAYOUT.seed(data_dir)
    log = CopyLog(monkeypatch)

    outcome = execute(snap.backend, snap.plan, data_dir, LAYOUT.mode)

    assert tree(data_dir) == LAYOUT.expected(snap.new)
    assert log.copied == sum(len(b) for b in snap.new.values()) == outcome.total_bytes
    assert all(isinstance(r, int) for r in log.results), log.results
    assert all(item.verified for item in outcome.items)


def test_a_blob_that_changed_in_the_backend_is_refused_after_a_kernel_copy(monkeypatch, tmp_path):
    snap = make_snapshot(tmp_path / "backend", hnsw_bytes=1 * MiB)
    data_dir = tmp_path / "data"
    LAYOUT.seed(data_dir)
    key = snap.plan.items[-1].content_key
    blob = bytearray((snap.backend.root / key).read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # the same size, one bit different
    (snap.backend.root / key).write_bytes(bytes(blob))
    log = CopyLog(monkeypatch)

    with pytest.raises(ChecksumMismatchError):
        execute(snap.backend, snap.plan, data_dir, LAYOUT.mode)
    assert log.copied > 0
    assert_untouched(data_dir, LAYOUT)


def test_across_file_systems_the_blob_is_read_and_written_instead(monkeypatch, volume, tmp_path):
    """The backend on a tmpfs, the data dir elsewhere: the kernel refuses (EXDEV) and the bytes
    go through memrestore, still exact and checked."""
    vol = volume(16)
    snap = make_snapshot(vol.path / "backend", hnsw_bytes=2 * MiB)
    data_dir = tmp_path / "data"
    LAYOUT.seed(data_dir)
    log = CopyLog(monkeypatch)

    execute(snap.backend, snap.plan, data_dir, LAYOUT.mode)

    assert tree(data_dir) == LAYOUT.expected(snap.new)
    assert log.results and set(log.results) == {"EXDEV"}, log.results


def test_a_kernel_copy_that_fails_midway_is_finished_by_reading(monkeypatch, small_copies, tmp_path):
    """EIO could be the backend's read or the staged file's write: the kernel does not say. The
    rest of the blob is read and written the plain way, where the two are told apart; here it
    goes through, and the file is whole."""
    snap = make_snapshot(tmp_path / "backend", hnsw_bytes=3 * MiB)
    data_dir = tmp_path / "data"
    LAYOUT.seed(data_dir)

    def fail() -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    log = CopyLog(monkeypatch, mid_blob=fail)
    execute(snap.backend, snap.plan, data_dir, LAYOUT.mode)

    assert tree(data_dir) == LAYOUT.expected(snap.new)
    assert "EIO" in log.results and 0 < log.copied < sum(len(b) for b in snap.new.values()), log.results


def test_a_disk_that_fills_during_a_kernel_copy_fails_clearly_and_rolls_back(monkeypatch, small_copies, volume):
    """Backend and data dir on one small tmpfs, so the kernel copies; another writer fills the
    volume in the middle of a blob, and its next copy gets a real ENOSPC from the kernel. That can
    only be the destination's: it is reported as such, not retried as the backend's, and the
    data dir is left as it was."""
    vol = volume(48)
    snap = make_snapshot(vol.path / "backend", hnsw_bytes=4 * MiB)
    data_dir = vol.path / "data"
    LAYOUT.seed(data_dir)
    filled: list[int] = []

    log = CopyLog(monkeypatch, mid_blob=lambda: filled.append(fill(vol.path / "another-writer")))
    with pytest.raises(DestinationIOError) as info:
        execute(snap.backend, snap.plan, data_dir, LAYOUT.mode)

    assert info.value.errno == errno.ENOSPC and filled and "ENOSPC" in log.results, log.results
    message = str(info.value)
    assert message.startswith("writing ") and "No space left on device" in message, message
    assert "previous contents are intact" in message, message
    assert_untouched(data_dir, LAYOUT)
    assert ours(data_dir) == []
