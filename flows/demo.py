"""The demo: sample snapshots in a local folder backend, one restored through the flow."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from memrestore.backends import LocalBackend
from memrestore.backends.sample import write_sample_snapshot
from memrestore.flows.restore import restore_snapshot
from memrestore.tasks.plan import RestoreMode


async def run_demo(workdir: Path, log: Callable[[str], None] = print) -> dict:
    """Write two snapshots of tenant 1 and one of tenant 2, then restore tenant 1's latest."""
    backend_dir, data_dir = workdir / "backend", workdir / "data"
    for path in (backend_dir, data_dir):  # the demo owns these: start clean each run
        shutil.rmtree(path, ignore_errors=True)
    backend = LocalBackend(backend_dir)
    now = int(time.time() * 1e6)
    hour = 3600 * 10**6
    write_sample_snapshot(backend, tenant_id=1, snapshot_id="t1-older", created_at_unix_micros=now - 2 * hour)
    write_sample_snapshot(backend, tenant_id=1, snapshot_id="t1-newer", created_at_unix_micros=now - hour,
                          sqlite_rows=500, hnsw_bytes=1024 * 1024)
    write_sample_snapshot(backend, tenant_id=2, snapshot_id="t2-only", created_at_unix_micros=now)
    log(f"sample snapshots written to {backend.url}; restoring tenant 1's latest into {data_dir}")
    return await restore_snapshot(
        backend=backend.url,
        tenant_id=1,
        data_dir=str(data_dir),
        mode=RestoreMode.NEW_CLUSTER,
        snapshot="latest",
        destination={"embedding_model": "minilm"},
    )
