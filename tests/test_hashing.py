"""Hashing as b3sum does (backends/hashing.py: large reads into one buffer, blake3 on every core): the
digests are blake3's own, whatever the size against the read size (empty, one byte short of a
read, many reads and a tail), for ``verify`` from a local folder, for a staged file hashed back
after the kernel copied it in, and for a resume's re-hash of a staged file."""

from __future__ import annotations

import os

import blake3
import pytest

from memrestore.backends.local import WHOLE_READ, LocalBackend
from memrestore.tasks.plan import ItemKind, PlanItem
from memrestore.tasks.progress import Listener, watching
from memrestore.backends.hashing import HASH_CHUNK, hash_file, new_hasher
from memrestore.tasks.stage import _StagedFile, hash_item

SIZES = [0, 1, WHOLE_READ - 1, WHOLE_READ, 2 * WHOLE_READ + 12345]


def _blob(size: int) -> bytes:
    return os.urandom(min(size, 1 << 20)) * (size // (1 << 20)) + os.urandom(size % (1 << 20))


@pytest.mark.parametrize("size", SIZES)
def test_verify_of_a_local_blob_is_blake3_of_its_bytes(tmp_path, size):
    data = _blob(size)
    store = LocalBackend(tmp_path / "backend")
    store.put_object("s/blob.bin", data)
    digest = blake3.blake3(data).hexdigest()
    item = PlanItem(kind=ItemKind.SQLITE_CHECKPOINT, content_key="s/blob.bin", expected_checksum=digest,
                    destination="tenant_1/data.sqlite")
    counted = []
    with watching(Listener(on_bytes=counted.append)):
        staged = hash_item(item, store)
    assert staged.checksum == digest and staged.verified and staged.bytes == size == sum(counted)


@pytest.mark.parametrize("size", [0, HASH_CHUNK - 1, 2 * HASH_CHUNK + 7])
def test_a_staged_file_is_hashed_back_and_rehashed_exactly(tmp_path, size):
    data = _blob(size)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(data)
    fd = os.open(dst, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        staged = _StagedFile(fd)
        with open(src, "rb") as f:
            offset = 0
            while n := staged.copy_from(f.fileno(), offset, 3 * 1024 * 1024):  # read back from the file
                offset += n
        assert staged.hexdigest() == blake3.blake3(data).hexdigest()
    finally:
        os.close(fd)
    assert hash_file(dst) == (size, blake3.blake3(data).hexdigest())


def test_a_forked_child_hashes_after_its_parent_used_every_core():
    """blake3's threads do not survive a fork: a child forked after its parent hashed on them
    would wait for ever on the first large hash (the crash tests' restores hung so). A forked
    child hashes on one thread instead, and gets the same digest."""
    import time

    data = os.urandom(64 * 1024 * 1024)
    parent = new_hasher()
    parent.update(data)  # the pool of threads is made here
    expected = parent.hexdigest()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        child = new_hasher()
        child.update(data)
        os.write(write_end, child.hexdigest().encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child's hash never returned")
        time.sleep(0.05)
    assert os.read(read_end, 100).decode() == expected
    os.close(read_end)
