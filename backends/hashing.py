"""blake3 of the bytes memrestore checks, as b3sum computes it: large reads into one buffer, each
hashed on every core. Imports nothing but blake3, so the command line (tasks/validation.py,
loaded before Prefect is set up) and the sample writer (backends/demo_snapshots.py) hash the way
a restore does (tasks/stage.py)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import blake3

#: Read size when a whole file is hashed (a resume's re-hash, a validated copy's, a sample
#: snapshot's): read into one buffer per file, never a new one per read, and hashed on every core
#: (:func:`new_hasher`). 1 GiB hashed from the page cache this way took 0.26-0.38 s here, against
#: 0.41-0.58 s in 1 MiB reads each into new bytes hashed on one core, and b3sum's 0.66-0.79 s (it
#: memory-maps: page faults, on this VM), BENCHMARKS.md.
HASH_CHUNK = 8 * 1024 * 1024

#: Whether this process is a fork's child. blake3's threads (a pool made at its first
#: multi-threaded hash) do not survive a fork: a child that hashed on them would wait for ever
#: (measured: a 64 MiB hash in a child forked after one in its parent never returns). A forked
#: child (the crash tests' restores; a preforking server that embeds memrestore) hashes on one.
_forked = False


def _in_forked_child() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_in_forked_child)


def new_hasher() -> blake3.blake3:
    """A blake3 hasher that hashes each large input on every core (its own threads), as b3sum does;
    an input of a few KiB is hashed on one. In a forked child, always on one (:data:`_forked`)."""
    return blake3.blake3() if _forked else blake3.blake3(max_threads=blake3.blake3.AUTO)


def hash_range(fd: int, start: int, end: int, hasher: blake3.blake3, buffer: bytearray) -> None:
    """Add bytes ``[start, end)`` of ``fd`` to ``hasher``, read into ``buffer`` a piece at a time."""
    view = memoryview(buffer)
    while start < end:
        n = os.preadv(fd, [view[:min(len(view), end - start)]], start)
        if not n:
            raise OSError(errno.EIO, f"the file ended at byte {start}, before {end}")
        hasher.update(view[:n])
        start += n


def hash_file(path: Path) -> tuple[int, str]:
    """The file's size and blake3 (hex)."""
    hasher = new_hasher()
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        hash_range(f.fileno(), 0, size, hasher, bytearray(min(HASH_CHUNK, max(1, size))))
    return size, hasher.hexdigest()
