"""What the operator's validation costs a restore beyond the validator's own work (issue 21): the
copy made read-only, the validator's process started and waited for, every file hashed again
afterwards (tasks/validation.py). A local restore (tasks/restore.py with its plain steps, from a folder on the
same disk: the case where the re-hash weighs most, since nothing else is slow) of one snapshot,
without a validation and with ``--validate-command true`` (a validator that does nothing), A B A
B, and a re-hash alone of the same bytes::

    python -m benchmarks.validation_cost [MIB [ROUNDS]]      # default: 1024 MiB, 3 rounds

Prints each run and the medians; the ratio with/without is the cost. Writes its data under a
temp dir of its own, removed at the end.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.tasks.modes import CheckLevel
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.restore import RestoreRequest, restore
from memrestore.tasks.validate import validate
from memrestore.backends.hashing import hash_file
from memrestore.tasks.validation import Validation


def main(argv: list[str]) -> int:
    mib = int(argv[0]) if argv else 1024
    rounds = int(argv[1]) if len(argv) > 1 else 3
    work = Path(tempfile.mkdtemp(prefix="memrestore-validation-cost-"))
    try:
        backend = LocalBackend(work / "backend")
        manifest = write_sample_snapshot(backend, tenant_id=1, snapshot_id="big", models=(("minilm", 384),),
                                         hnsw_bytes=mib * 2**20)
        plan = validate(manifest, DestinationState(), backend.url)
        kinds = {"without": None, "with `true`": Validation(command="true")}
        seconds: dict[str, list[float]] = {k: [] for k in kinds}
        rehash: list[float] = []
        for r in range(rounds):
            for kind, validation in kinds.items():
                data = work / "data"
                started = time.monotonic()
                restore(RestoreRequest(backend=backend.url, tenant_id=1, snapshot="big", data_dir=data,
                                       mode=RestoreMode.NEW_CLUSTER, check=CheckLevel.NONE, validation=validation),
                        backend=backend, manifest=manifest)
                seconds[kind].append(time.monotonic() - started)
                print(f"round {r + 1}: restore {kind} validation: {seconds[kind][-1]:.3f} s", flush=True)
                if validation is None:
                    started = time.monotonic()
                    for item in plan.items:
                        hash_file(data / item.destination)
                    rehash.append(time.monotonic() - started)
                shutil.rmtree(data)
        base, validated = (statistics.median(v) for v in seconds.values())
        print(f"{mib} MiB, {rounds} rounds, medians: without {base:.3f} s, with `true` {validated:.3f} s "
              f"({validated / base:.2f}x); a re-hash of the restored files alone {statistics.median(rehash):.3f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
