"""Disk full: a restore into a file system that runs out of space fails with a clear message and
leaves the data dir exactly as it was: previous contents intact, no marker, nothing of ours.

The data dir lives on a small tmpfs mounted by the test (a loop-mounted ext4 image if tmpfs
cannot be mounted; skipped, saying why, if neither can). Out of space comes three ways:

- up front: the snapshot is bigger than the free space, and the preflight refuses it
  (InsufficientSpaceError) before writing a byte;
- during the restore: the space check passes, then *another writer* fills the volume while the
  restore runs, as happens on a shared volume. The test must act at a known instant without
  any hook in the restore, so the backend stalls the last blob's download at a given byte
  (``GatedBackend``, tests/restorekit.py), the test fills the volume from outside, then lets
  the download go on. Filled mid-blob, the next write of the staged file gets ENOSPC; filled
  once the blob is received, the commit's marker update gets it. Both are real ENOSPC from the
  kernel, in the restore's own writes;
- out of inodes: a tmpfs with a few free inodes fails a file or directory creation with
  ENOSPC although bytes are plentiful, which no byte count can foresee; the restore is run with
  0, 1, 2, ... free inodes until it succeeds, so every creation it makes fails once.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from memrestore.tasks import units
from memrestore.backends.errors import RestoreError
from memrestore.tasks.errors import DestinationIOError, InsufficientSpaceError
from memrestore.tasks.preflight import SPACE_HEADROOM
from memrestore.tasks.stage import PART_SUFFIX
from tests.restorekit import execute
from tests.conftest import tree
from tests.restorekit import (
    LAYOUTS,
    SNAPSHOT,
    GatedBackend,
    Layout,
    make_snapshot,
    ours,
)

MIB = 1024 * 1024
GATED_KEY = f"{SNAPSHOT}/hnsw-1.bin"
#: One layout per mode, with old data wherever the mode allows it.
MODE_LAYOUTS = [LAYOUTS[1], LAYOUTS[3], LAYOUTS[5], LAYOUTS[7]]
MODE_IDS = [layout.mode.value for layout in MODE_LAYOUTS]


class Volume:
    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind

    @property
    def free(self) -> int:
        return shutil.disk_usage(self.path).free


@pytest.fixture
def volume(tmp_path):
    """``volume(size_mib, inodes=None)``: a fresh small file system, unmounted at teardown."""
    mounted: list[Path] = []

    def make(size_mib: int, inodes: int | None = None) -> Volume:
        path = tmp_path / f"vol{len(mounted)}"
        path.mkdir()
        options = f"size={size_mib}m" + (f",nr_inodes={inodes}" if inodes else "")
        tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                               capture_output=True, text=True)
        if tmpfs.returncode == 0:
            mounted.append(path)
            return Volume(path, "tmpfs")
        if inodes:
            pytest.skip(f"an inode-limited volume needs tmpfs, which cannot be mounted here: {tmpfs.stderr.strip()}")
        image = tmp_path / f"vol{len(mounted)}.ext4"
        with open(image, "wb") as f:
            f.truncate(size_mib * MIB)
        steps = [["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], ["mount", "-o", "loop", str(image), str(path)]]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True)
            except FileNotFoundError as exc:
                done = subprocess.CompletedProcess(step, 127, "", str(exc))
            if done.returncode != 0:
                pytest.skip(f"no small file system to fill: mounting a tmpfs failed ({tmpfs.stderr.strip()}), "
                            f"and so did {' '.join(step[:2])} ({done.stderr.strip()})")
        mounted.append(path)
        return Volume(path, "ext4 image")

    yield make
    for path in reversed(mounted):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> int:
    """Write ``path`` until the volume is full (ENOSPC at every block size); returns its size."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for block in (MIB, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, bytes(block))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
    finally:
        os.close(fd)
    return path.stat().st_size


def assert_untouched(data_dir: Path, layout: Layout) -> None:
    assert tree(data_dir) == layout.old_tree, sorted(tree(data_dir))
    assert ours(data_dir) == [], ours(data_dir)


class RestoreThread(threading.Thread):
    """A restore running in this process while the test plays the other writer."""

    def __init__(self, backend, plan, layout: Layout, data_dir: Path) -> None:
        super().__init__(daemon=True)  # never keeps the session alive if a test fails early
        self.backend, self.plan, self.layout, self.data_dir = backend, plan, layout, data_dir
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            execute(self.backend, self.plan, self.data_dir, self.layout.mode)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc


@pytest.mark.parametrize("layout", MODE_LAYOUTS, ids=MODE_IDS)
def test_the_preflight_refuses_a_snapshot_bigger_than_the_free_space(layout, volume, tmp_path):
    vol = volume(8)
    data_dir = vol.path / "data"
    layout.seed(data_dir)
    snap = make_snapshot(tmp_path / "backend", hnsw_bytes=5 * MIB)  # two 5 MiB blobs: 10 MiB
    total = sum(snap.backend.object_size(item.content_key) for item in snap.plan.items)
    free = vol.free
    assert total > free

    with pytest.raises(InsufficientSpaceError) as info:
        execute(snap.backend, snap.plan, data_dir, layout.mode)
    err = info.value
    assert err.needed == total + SPACE_HEADROOM and err.free <= free
    message = str(err)
    assert str(data_dir) in message, message
    assert f"{units.size(err.free)} free" in message and f"needs {units.size(err.needed)}" in message, message
    assert_untouched(data_dir, layout)


def _restore_until_the_volume_fills(layout: Layout, volume, tmp_path, when: str):
    """Run a restore; another writer fills the volume when the last blob is half written
    (``when="mid-blob"``) or wholly written (``"blob-received"``). Returns the restore's error,
    the snapshot, the data dir and the volume."""
    vol = volume(48)
    data_dir = vol.path / "data"
    layout.seed(data_dir)
    snap = make_snapshot(tmp_path / "backend", hnsw_bytes=4 * MIB)
    assert snap.plan.items[-1].content_key == GATED_KEY
    size = snap.backend.object_size(GATED_KEY)
    part = data_dir / ".restore-staging" / (snap.plan.items[-1].destination + PART_SUFFIX)
    gated = GatedBackend(snap.backend, GATED_KEY, hold_at=[size // 2 if when == "mid-blob" else size])
    try:
        restore = RestoreThread(gated, snap.plan, layout, data_dir)
        restore.start()
        gated.wait_arrived(restore.is_alive)  # past the preflight's space check, mid-download
        assert part.stat().st_size >= (size // 2 if when == "mid-blob" else size)
        filled = fill(vol.path / "another-writer")  # beside the data dir, on the same volume
        assert filled > 0 and vol.free < MIB
        gated.release()
        restore.join(60)
        assert not restore.is_alive()
    finally:
        gated.close()
    return restore.error, snap, data_dir, vol


@pytest.mark.parametrize("layout", MODE_LAYOUTS, ids=MODE_IDS)
def test_enospc_mid_download_fails_clearly_and_rolls_back(layout, volume, tmp_path):
    error, snap, data_dir, vol = _restore_until_the_volume_fills(layout, volume, tmp_path, "mid-blob")
    assert isinstance(error, DestinationIOError), repr(error)
    assert error.errno == errno.ENOSPC
    part = data_dir / ".restore-staging" / (snap.plan.items[-1].destination + PART_SUFFIX)
    message = str(error)
    assert message.startswith(f"writing {part} failed: No space left on device."), message
    assert "previous contents are intact" in message and "free space" in message, message
    assert_untouched(data_dir, layout)

    # Once space is freed, the same restore runs again and completes.
    os.unlink(vol.path / "another-writer")
    execute(snap.backend, snap.plan, data_dir, layout.mode)
    assert tree(data_dir) == layout.expected(snap.new)


@pytest.mark.parametrize("layout", MODE_LAYOUTS, ids=MODE_IDS)
def test_enospc_at_the_commit_fails_clearly_and_rolls_back(layout, volume, tmp_path):
    """Every blob staged and verified, then the volume fills: the commit's marker update is the
    first write left, and the old contents must stay."""
    error, *_, data_dir, _ = _restore_until_the_volume_fills(layout, volume, tmp_path, "blob-received")
    assert isinstance(error, DestinationIOError), repr(error)
    assert error.errno == errno.ENOSPC
    message = str(error)
    assert message.startswith(f"moving the restored data into {data_dir} failed: No space left on device."), message
    assert_untouched(data_dir, layout)


def test_a_volume_already_full_refuses_cleanly(volume, tmp_path):
    """Nothing left at all: the restore must fail with a clear message and leave nothing behind,
    not even the temp file it writes the marker through."""
    layout = MODE_LAYOUTS[1]
    vol = volume(8)
    data_dir = vol.path / "data"
    layout.seed(data_dir)
    snap = make_snapshot(tmp_path / "backend", hnsw_bytes=64 * 1024)
    fill(vol.path / "another-writer")
    with pytest.raises((InsufficientSpaceError, DestinationIOError)) as info:
        execute(snap.backend, snap.plan, data_dir, layout.mode)
    message = str(info.value)
    assert str(data_dir) in message and ("No space left on device" in message or "MiB free" in message), message
    assert_untouched(data_dir, layout)


@pytest.mark.parametrize("layout", MODE_LAYOUTS, ids=MODE_IDS)
def test_out_of_inodes_at_every_creation(layout, volume, tmp_path):
    """Bytes plenty, inodes short: with k free inodes for k = 0, 1, 2, ... the restore fails at a
    later creation each time (marker, staging dirs and files, the marker update, the aside dir)
    and leaves the data dir as it was, until there are enough and it completes."""
    vol = volume(32, inodes=128)
    snap = make_snapshot(tmp_path / "backend", hnsw_bytes=64 * 1024)
    data_dir = vol.path / "data"
    spare = vol.path / "another-writer"
    failures: Counter[str] = Counter()
    for free_inodes in range(40):
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(spare, ignore_errors=True)
        layout.seed(data_dir)
        spare.mkdir()
        taken = []
        try:
            while True:
                path = spare / str(len(taken))
                path.touch()
                taken.append(path)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        for path in taken[:free_inodes]:
            path.unlink()
        try:
            execute(snap.backend, snap.plan, data_dir, layout.mode)
        except RestoreError as exc:
            message = str(exc)
            assert "No space left on device" in message and str(data_dir) in message, message
            assert "previous contents are intact" in message, message
            assert_untouched(data_dir, layout)
            failures[message.split(f" {data_dir}")[0]] += 1
            continue
        assert tree(data_dir) == layout.expected(snap.new)
        break
    else:
        pytest.fail("the restore never completed, even with 40 free inodes")
    print(f"{layout.mode.value}: with 0..{free_inodes - 1} free inodes the restore failed at {dict(failures)}; "
          f"with {free_inodes} it completed")
    assert len(failures) >= 2 and free_inodes >= 3, failures
