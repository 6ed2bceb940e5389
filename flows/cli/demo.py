"""The demo: sample snapshots in a local folder backend, one restored through the flow with the
form's defaults, and what to try next."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memrestore.backends import LocalBackend
from memrestore.backends.listing import format_instant
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.flows.restore import restore_snapshot
from memrestore.tasks.plan import RestoreMode

HOUR = 3600 * 10**6


@dataclass
class DemoRun:
    """What the demo did: the restore's outcome and run, and where the next commands point."""

    outcome: dict
    flow_run_id: str | None
    run_url: str | None
    backend_url: str
    #: An empty data dir for the next restore the demo suggests (removed by each demo run).
    next_data_dir: Path
    #: A time between tenant 1's two snapshots: ``--as-of`` it takes the older one.
    between: str


async def run_demo(workdir: Path, log: Callable[[str], None] = print) -> DemoRun:
    """Write two snapshots of tenant 1 and one of tenant 2 (each of two models), then restore
    tenant 1's latest as the UI form's defaults do: no embedding model named."""
    from prefect.utilities.urls import url_for

    backend_dir, data_dir, next_data_dir = workdir / "backend", workdir / "data", workdir / "data-as-of"
    for path in (backend_dir, data_dir, next_data_dir):  # the demo owns these: start clean each run
        shutil.rmtree(path, ignore_errors=True)
    backend = LocalBackend(backend_dir)
    now = int(time.time() * 1e6)
    write_sample_snapshot(backend, tenant_id=1, snapshot_id="t1-older", created_at_unix_micros=now - 2 * HOUR)
    write_sample_snapshot(backend, tenant_id=1, snapshot_id="t1-newer", created_at_unix_micros=now - HOUR,
                          sqlite_rows=500, hnsw_bytes=1024 * 1024)
    write_sample_snapshot(backend, tenant_id=2, snapshot_id="t2-only", created_at_unix_micros=now)
    log(f"sample snapshots written to {backend.url}; restoring tenant 1's latest into {data_dir}")
    state = await restore_snapshot(
        backend=backend.url,
        tenant_id=1,
        data_dir=str(data_dir),
        mode=RestoreMode.NEW_CLUSTER,
        snapshot="latest",
        return_state=True,
    )
    outcome = await state.aresult()  # a failed restore raises here, as a plain call would
    run_id = state.state_details.flow_run_id
    return DemoRun(
        outcome=outcome,
        flow_run_id=str(run_id) if run_id else None,
        run_url=url_for("flow-run", obj_id=run_id) if run_id else None,
        backend_url=backend.url,
        next_data_dir=next_data_dir,
        between=format_instant((now - 2 * HOUR + now - HOUR) // 2 // 10**6 * 10**6),
    )
