"""Where a local-folder restore's time goes (issue 20): the plain functions of a restore
(``tasks.restore.restore`` with its plain steps, no Prefect) of a cached benchmark snapshot, with the time spent in
each step summed over the threads that ran it, beside ``cp`` + ``sync`` and ``b3sum`` of the same
files, and ``verify``'s hashing (``tasks.stage.hash_item``), one after the other per round::

    python -m benchmarks.local_profile [SNAPSHOT_ID [ROUNDS]]      # default: snap-1g 3

The snapshot must be in the benchmark's cache (benchmarks/.data/local: ``python -m benchmarks``
builds it). Each step is timed by wrapping the call that does it: the kernel's copy
(``os.copy_file_range``), the hash of bytes read back from the staged file
(``_StagedFile._hash_back``), every ``os.fsync``, the pre-commit check, the commit. Threads stage
four blobs at once, so the sums can exceed the wall time; what is left of the wall time (the
rest) is the plan, the lock, the marker and the waits between.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict

from benchmarks.bench import DEFAULT_WORKDIR
from benchmarks.data import SERVED_MODEL, content_paths

_spent: dict[str, float] = defaultdict(float)
_lock = threading.Lock()


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with _lock:
                _spent[name] += time.perf_counter() - started

    return wrapper


def _instrument() -> None:
    from memrestore.tasks import checks, commit, restore, stage

    os.copy_file_range = _timed("copy (copy_file_range)", os.copy_file_range)
    os.fsync = _timed("fsync", os.fsync)
    stage._StagedFile._hash_back = _timed("hash read back", stage._StagedFile._hash_back)
    restore.check_staged = _timed("pre-commit check", checks.check_staged)
    restore.commit_staged = _timed("commit", commit.commit_staged)


def _wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    snapshot_id = args[0] if args else "snap-1g"
    rounds = int(args[1]) if len(args) > 1 else 3
    root = DEFAULT_WORKDIR / "local"
    files = content_paths(root, snapshot_id)
    scratch = DEFAULT_WORKDIR / "scratch-local-profile"
    _instrument()
    from memrestore.backends import open_backend
    from memrestore.tasks.checks import CheckLevel
    from memrestore.tasks.choose import fetch_manifest
    from memrestore.tasks.plan import DestinationState, RestoreMode
    from memrestore.tasks.restore import RestoreRequest, restore
    from memrestore.tasks.stage import hash_item
    from memrestore.tasks.validate import validate

    backend = open_backend(str(root))
    plan = validate(fetch_manifest(backend, None, snapshot_id), DestinationState(embedding_model=SERVED_MODEL), backend.url)
    total = sum(f.stat().st_size for f in files)
    for f in files:  # warm, as the benchmark does
        with open(f, "rb", buffering=0) as src:
            while src.read(8 << 20):
                pass
    rows: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        shutil.rmtree(scratch, ignore_errors=True)
        os.sync()
        time.sleep(3)
        out = scratch / "cp"
        out.mkdir(parents=True)
        rows["cp + sync"].append(_wall(["sh", "-c", 'cp "$@" "$0"/ && sync', str(out), *map(str, files)]))
        shutil.rmtree(scratch, ignore_errors=True)
        os.sync()
        time.sleep(3)
        rows["b3sum"].append(_wall(["b3sum", *map(str, files)]))
        time.sleep(1)
        _spent.clear()
        started = time.perf_counter()
        restore(RestoreRequest(backend=backend.url, tenant_id=plan.tenant_id, snapshot=snapshot_id,
                               data_dir=scratch / "data", mode=RestoreMode.NEW_CLUSTER,
                               destination=plan.destination_state, check=CheckLevel.QUICK), backend=backend)
        rows["restore (the composer, plain steps), wall"].append(time.perf_counter() - started)
        for name, seconds in _spent.items():
            rows[f"  {name}, summed over threads"].append(seconds)
        shutil.rmtree(scratch, ignore_errors=True)
        os.sync()
        time.sleep(3)
        started = time.perf_counter()
        for item in plan.items:
            hash_item(item, backend)
        rows["verify (hash_item of each blob), wall"].append(time.perf_counter() - started)
    print(f"{snapshot_id}: {len(files)} files, {total / 2**20:.0f} MiB, {rounds} rounds (median, min-max):")
    for name, values in rows.items():
        print(f"  {name:<48} {statistics.median(values):6.2f} s  ({min(values):.2f}-{max(values):.2f})")
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
