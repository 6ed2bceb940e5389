"""Restore drills: the checks on a restored copy, the walk back, the retries, the flow's report,
artifacts, events and runs under a real Prefect API (with S3 failing through the fault proxy), and
``memrestore drill`` as a subprocess, over a local folder and SeaweedFS."""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from memrestore.backends import LocalBackend, list_snapshots, open_backend, put_manifest
from memrestore.backends.errors import AccessDeniedError, TransientBackendError
from memrestore.backends.manifest import SnapshotManifest
from memrestore.backends.s3 import CLIENT_CONFIG
from memrestore.backends.demo_snapshots import make_sqlite_checkpoint, write_sample_snapshot
from memrestore.tasks.checks import CheckLevel, check_hnsw_files, check_restored, check_sqlite, check_tables, hnsw_sizes
from memrestore.tasks.drill import (
    DRILL_FAILED_EVENT,
    attempt_snapshot,
    check_plain,
    drill_candidates,
    drill_tenant,
    restore_plain,
    snapshot_age_seconds,
    stale_reason,
)
from memrestore.tasks.errors import RestoredCopyCheckError
from memrestore.tasks.retry import RETRIES, RETRY_DELAYS, RETRY_JITTER, retrying
from memrestore.tasks.drill import drill_plain
from tests.conftest import tree
from tests.faultproxy import Fault
from tests.procs import memrestore
from tests.seaweed import point_boto3, s3_environment

REPO = Path(__file__).resolve().parent.parent
HOUR_MICROS = 3600 * 10**6
#: The drill's clock in the plain tests: every age below is exact against it.
NOW = 1_800_000_000.0
NOW_MICROS = int(NOW * 10**6)
#: The longest a CLI subprocess may take: Prefect's import, a few flow runs, on a loaded machine.
CLI_TIMEOUT = 300
#: How long the events and logs written by a run may take to be readable through the API.
EVENTS_WAIT_SECONDS = 60
#: Requests botocore sends for one call before giving up (max_attempts counts the retries).
BOTO_REQUESTS = CLIENT_CONFIG.retries["max_attempts"] + 1


def _flip_byte(path: Path, offset: int = 100) -> None:
    """Corrupt a stored object in place, keeping its size (bit rot, not truncation)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _with_ghost_table(backend: LocalBackend, manifest: SnapshotManifest) -> SnapshotManifest:
    """Rewrite the manifest so that it names a table the checkpoint does not have."""
    changed = manifest.model_copy(
        update={"table_schema_versions": {**manifest.table_schema_versions, "ghost_table": 1}})
    put_manifest(backend, changed)
    return changed


def write_fleet(backend: LocalBackend, now_micros: int) -> dict[str, SnapshotManifest]:
    """Tenants that each show one outcome of a drill:

    1  healthy: its latest restores and checks clean
    2  latest corrupted after the backup (a flipped byte): the older t2-good is the last good
    3  stale: restores clean, but is 30 h old
    4  latest names a table its checkpoint lacks, and there is nothing older
    5  latest checkpoint truncated when the backup was taken (its checksum is of the cut bytes,
       so it restores, and fails SQLite's integrity_check); the older t5-good is 36 h old
    """
    small = (("minilm", 8),)
    made = {
        "t1-old": write_sample_snapshot(backend, tenant_id=1, snapshot_id="t1-old",
                                        created_at_unix_micros=now_micros - 3 * HOUR_MICROS),
        "t1-new": write_sample_snapshot(backend, tenant_id=1, snapshot_id="t1-new",
                                        created_at_unix_micros=now_micros - HOUR_MICROS),
        "t2-good": write_sample_snapshot(backend, tenant_id=2, snapshot_id="t2-good", models=small,
                                         created_at_unix_micros=now_micros - 5 * HOUR_MICROS),
        "t2-bad": write_sample_snapshot(backend, tenant_id=2, snapshot_id="t2-bad", models=small,
                                        created_at_unix_micros=now_micros - 2 * HOUR_MICROS),
        "t3-stale": write_sample_snapshot(backend, tenant_id=3, snapshot_id="t3-stale", models=small,
                                          created_at_unix_micros=now_micros - 30 * HOUR_MICROS),
    }
    _flip_byte(backend.root / made["t2-bad"].hnsw_snapshots[0].content_key)
    ghost = write_sample_snapshot(backend, tenant_id=4, snapshot_id="t4-ghost", models=small,
                                  created_at_unix_micros=now_micros - HOUR_MICROS)
    made["t4-ghost"] = _with_ghost_table(backend, ghost)
    made["t5-good"] = write_sample_snapshot(backend, tenant_id=5, snapshot_id="t5-good", models=small,
                                            created_at_unix_micros=now_micros - 36 * HOUR_MICROS)
    made["t5-trunc"] = _with_truncated_checkpoint(
        backend, write_sample_snapshot(backend, tenant_id=5, snapshot_id="t5-trunc", models=small, sqlite_rows=400,
                                       created_at_unix_micros=now_micros - HOUR_MICROS))
    return made


def _with_truncated_checkpoint(backend: LocalBackend, manifest: SnapshotManifest) -> SnapshotManifest:
    """Cut the stored checkpoint in half and record the cut bytes' checksum in the manifest, as a
    backup that copied a checkpoint still being written would."""
    from blake3 import blake3

    path = backend.root / manifest.sqlite_checkpoint_key
    cut = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(cut)
    changed = manifest.model_copy(update={"sqlite_checkpoint_checksum": blake3(cut).hexdigest()})
    put_manifest(backend, changed)
    return changed


def _by_tenant(report: dict) -> dict[int, dict]:
    return {t["tenant_id"]: t for t in report["tenants"]}


# -- the checks, on real files ------------------------------------------------------------------


def test_integrity_check_passes_a_sound_checkpoint_and_fails_a_damaged_one(tmp_path):
    db = tmp_path / "data.sqlite"
    make_sqlite_checkpoint(db, rows=50, target_bytes=512 * 1024)
    check_sqlite(db, CheckLevel.FULL)

    truncated = tmp_path / "truncated.sqlite"
    truncated.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with pytest.raises(RestoredCopyCheckError, match="integrity_check of the restored checkpoint .*malformed"):
        check_sqlite(truncated, CheckLevel.FULL)

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database " * 1000)
    with pytest.raises(RestoredCopyCheckError, match="file is not a database"):
        check_sqlite(garbage, CheckLevel.FULL)

    with pytest.raises(RestoredCopyCheckError, match="missing"):
        check_sqlite(tmp_path / "absent.sqlite", CheckLevel.FULL)
    # Read-only: the check changed nothing.
    assert truncated.stat().st_size == db.stat().st_size // 2


def test_every_table_the_manifest_names_must_exist(tmp_path):
    db = tmp_path / "data.sqlite"
    make_sqlite_checkpoint(db)
    check_tables(db, ["memory_commit_log", "memories"])
    with pytest.raises(RestoredCopyCheckError, match=r"lacks table\(s\) 'ghost_table'.*it has: memories, memory_commit_log"):
        check_tables(db, ["memory_commit_log", "ghost_table"])


def test_hnsw_files_must_have_the_size_the_backend_reports(backend, snapshot, data_dir):
    restore_plain(backend)(snapshot, data_dir)
    sizes = hnsw_sizes(backend, snapshot)
    check_restored(data_dir, snapshot, sizes)

    minilm = data_dir / "tenant_1" / "hnsw" / "minilm.bin"
    with open(minilm, "ab") as f:
        f.write(b"x")
    expected = sizes[snapshot.hnsw_snapshots[0].content_key]
    with pytest.raises(RestoredCopyCheckError, match=f"is {expected + 1} bytes, but the backend reports {expected} bytes"):
        check_hnsw_files(data_dir, snapshot, sizes)
    minilm.unlink()
    with pytest.raises(RestoredCopyCheckError, match="model 'minilm' is missing"):
        check_hnsw_files(data_dir, snapshot, sizes)


def test_candidates_are_newest_first_and_the_age_rule(backend):
    made = write_fleet(backend, NOW_MICROS)
    listing = list_snapshots(backend)
    assert [m.snapshot_id for m in drill_candidates(listing, 1)] == ["t1-new", "t1-old"]
    assert drill_candidates(listing, 1)[0] == listing.latest(1)
    assert drill_candidates(listing, 9) == []

    assert snapshot_age_seconds(made["t3-stale"], NOW) == 30 * 3600
    assert stale_reason(3, 30 * 3600, None) is None
    assert stale_reason(3, 24 * 3600, 24) is None
    assert stale_reason(3, 30 * 3600, 24) == (
        "latest snapshot is 30.0 h old, above --max-age-hours 24: check that backups of tenant 3 are "
        "still being taken.")


# -- the walk back, with no Prefect ----------------------------------------------------------------


def test_plain_drill_reports_each_tenant_worst_first_and_leaves_scratch_empty(backend, tmp_path):
    write_fleet(backend, NOW_MICROS)
    scratch = tmp_path / "scratch"
    report = drill_plain(backend, [1, 2, 3, 4, 5, 9], max_age_hours=24, scratch_dir=scratch, now=NOW)
    assert (report.ok, report.failed) == (1, 5)
    # Worst first: no snapshot restores (4, 9), then the oldest effective RPO (5: 36 h, 3: 30 h,
    # 2: 5 h), then the tenants that passed.
    assert [r.tenant_id for r in report.tenants] == [4, 9, 5, 3, 2, 1]
    t = {r.tenant_id: r for r in report.tenants}

    assert t[1].status == "ok" and t[1].reason is None
    assert (t[1].snapshot_id, t[1].last_good_snapshot_id) == ("t1-new", "t1-new")
    assert t[1].snapshot_age_seconds == t[1].last_good_age_seconds == 3600
    assert t[1].bytes == sum(f.stat().st_size for f in (backend.root / "t1-new").iterdir() if f.name != "manifest.json")
    assert t[1].restore_seconds is not None and not t[1].rpo_over_max_age

    assert t[2].status == "failed" and t[2].snapshot_id == "t2-bad"
    assert t[2].reason.startswith("checksum mismatch for 't2-bad/hnsw-0.bin'")
    assert (t[2].last_good_snapshot_id, t[2].last_good_age_seconds) == ("t2-good", 5 * 3600)
    assert t[2].snapshot_age_seconds == 2 * 3600 and t[2].bytes is None and not t[2].rpo_over_max_age

    assert t[3].status == "failed" and t[3].reason.startswith("latest snapshot is 30.0 h old, above --max-age-hours 24")
    assert (t[3].last_good_snapshot_id, t[3].last_good_age_seconds) == ("t3-stale", 30 * 3600)
    assert t[3].rpo_over_max_age

    assert t[4].status == "failed" and "lacks table(s) 'ghost_table'" in t[4].reason
    assert t[4].reason.endswith("no snapshot of tenant 4 restores cleanly (1 tried).")
    assert t[4].last_good_snapshot_id is None and t[4].last_good_age_seconds is None

    # The truncated checkpoint restores (its checksum is of the cut bytes) and fails the check; the
    # reason says which file, and that its copy is gone, not a path that no longer exists. The
    # latest is fresh, but the snapshot the walk back found is over the limit: so is the RPO.
    assert t[5].status == "failed" and t[5].bytes and t[5].last_good_snapshot_id == "t5-good"
    assert t[5].reason.startswith(
        "SQLite integrity_check of the restored checkpoint tenant_5/data.sqlite (in a scratch copy since deleted; "
        "--keep-failed keeps failed copies) failed: ")
    assert t[5].reason.endswith("The newest snapshot that restores, t5-good, is 36.0 h old, above --max-age-hours "
                                "24: a restore today loses more than the limit allows.")
    assert t[5].rpo_over_max_age and t[5].last_good_age_seconds == 36 * 3600

    assert t[9].status == "failed" and t[9].snapshot_id is None
    assert "holds no finished snapshot of tenant 9" in t[9].reason

    assert list(scratch.iterdir()) == []
    assert all(r.kept_copies == [] and str(scratch) not in (r.reason or "") for r in report.tenants)


def test_the_report_in_units_for_people_worst_first_with_whole_reasons(backend, tmp_path):
    """The table (the artifact's, the CLI's) and the summary: tasks/units.py's sizes, rates,
    durations and ages, the RPO flagged over the limit, every failed tenant's reason whole."""
    from memrestore.tasks import units
    from memrestore.tasks.drill_report import summary_markdown, table_rows

    write_fleet(backend, NOW_MICROS)
    report = drill_plain(backend, [1, 2, 3, 5], max_age_hours=24, scratch_dir=tmp_path / "scratch", now=NOW)
    rows = table_rows(report, 24)
    assert [(r["tenant"], r["status"]) for r in rows] == [(5, "failed"), (3, "failed"), (2, "failed"), (1, "ok")]
    assert list(rows[0]) == ["tenant", "status", "snapshot", "age", "RTO", "size", "rate", "last good", "RPO", "reason"]
    healthy = report.tenants[-1]
    assert rows[3]["size"] == units.size(healthy.bytes) and rows[3]["size"].endswith(" KiB")
    assert rows[3]["rate"] == units.rate(healthy.bytes / healthy.restore_seconds)
    assert rows[3]["RTO"] == units.duration(healthy.restore_seconds) and rows[3]["age"] == "1.0 h"
    assert [r["RPO"] for r in rows] == ["36.0 h, over the 24 h limit", "30.0 h, over the 24 h limit", "5.0 h", "1.0 h"]
    assert (rows[2]["size"], rows[2]["rate"], rows[2]["RTO"], rows[2]["last good"]) == ("-", "-", "-", "t2-good")
    assert [r["reason"] for r in rows] == [t.reason or "" for t in report.tenants]

    summary = summary_markdown(report, backend.url, NOW, 24)
    for r in report.failures:
        assert f"- **tenant {r.tenant_id} failed** (" in summary and r.reason in summary
    assert summary.index("tenant 5 failed") < summary.index("tenant 3 failed") < summary.index("tenant 2 failed")
    assert "(last good snapshot `t5-good`, RPO 36.0 h, over the 24 h limit)" in summary
    assert "1 tenant(s) passed; oldest RPO 1.0 h, longest RTO " in summary


def test_one_artifact_key_and_a_run_name_per_backend():
    from memrestore.tasks.drill_report import artifact_key, backend_key, run_name

    at = 1_796_612_400.0  # 2026-12-07 03:00 UTC
    assert run_name("s3://backups/memory", at) == "drill-s3-backups-memory-2026-12-07T03:00Z"
    assert run_name("s3://backups/", at) == "drill-s3-backups-2026-12-07T03:00Z"
    assert run_name("/srv/nightly/Memory Store", at + 59) == "drill-file-nightly-memory-store-2026-12-07T03:00Z"
    key = artifact_key("report", "s3://backups/memory")
    assert re.fullmatch(r"drill-report-s3-backups-memory-[0-9a-f]{8}", key)
    # Stable: the same backend however it is spelled; another backend, another history.
    assert backend_key("s3://backups/memory/") == backend_key("s3://backups/memory")
    assert backend_key("/srv/nightly/memory") == backend_key("file:///srv/nightly/memory")
    assert backend_key("/a/nightly/memory") != backend_key("/b/nightly/memory")
    assert backend_key("s3://backups/memory") != backend_key("s3://backups/memory-eu")
    for url in ("s3://B_ucket/Pre.fix", "file:///", "", "weird://x", "/" + "x" * 300):
        for kind in ("report", "summary", "progress"):
            assert re.fullmatch(r"[a-z0-9-]*", artifact_key(kind, url)), url
        assert len(run_name(url, at)) < 80


def test_plain_drill_keeps_only_failed_copies_when_asked(backend, tmp_path):
    write_fleet(backend, NOW_MICROS)
    scratch = tmp_path / "scratch"
    report = drill_plain(backend, [1, 3, 4, 5], max_age_hours=24, scratch_dir=scratch, keep_failed=True, now=NOW)
    t = {r.tenant_id: r for r in report.tenants}
    assert t[1].kept_copies == []
    kept = sorted(p.name.rsplit("-", 1)[0] for p in scratch.iterdir())
    assert kept == ["tenant-3-t3-stale", "tenant-4-t4-ghost", "tenant-5-t5-trunc"]
    # The kept copy is the restored data dir, ready to inspect.
    ghost_copy = Path(t[4].kept_copies[0])
    assert sorted(tree(ghost_copy)) == ["tenant_4/data.sqlite", "tenant_4/hnsw/minilm.bin"]
    # A reason names a kept copy's file as it is, there to be opened.
    [truncated] = t[5].kept_copies
    assert f"checkpoint {truncated}/tenant_5/data.sqlite failed: " in t[5].reason and "since deleted" not in t[5].reason
    assert Path(truncated, "tenant_5/data.sqlite").is_file()


def test_walk_back_stops_after_its_limit_and_says_so(backend, tmp_path):
    for age in range(1, 5):
        made = write_sample_snapshot(backend, tenant_id=5, snapshot_id=f"t5-{age}", models=(("m", 8),),
                                     created_at_unix_micros=NOW_MICROS - age * HOUR_MICROS)
        _flip_byte(backend.root / made.sqlite_checkpoint_key)
    tried: list[str] = []
    restore, check = restore_plain(backend), check_plain(backend)

    def attempt(manifest):
        tried.append(manifest.snapshot_id)
        return attempt_snapshot(manifest, tmp_path, restore, check)

    result = drill_tenant(5, drill_candidates(list_snapshots(backend), 5), attempt,
                          backend_url=backend.url, now=NOW, walk_back=2)
    assert tried == ["t5-1", "t5-2", "t5-3"]
    assert result.status == "failed" and result.last_good_snapshot_id is None
    assert result.reason.endswith(
        "none of the 3 newest snapshots of tenant 5 restores cleanly (1 older ones were not tried).")
    assert list(tmp_path.iterdir()) == [backend.root]


def test_a_drill_given_snapshot_ids_reads_only_the_manifests_it_tries(backend, tmp_path):
    """A fleet drill's child gets its tenant's snapshot ids, newest first, and reads a manifest
    only when the walk back reaches it."""
    from memrestore.backends import read_manifest
    from memrestore.tasks.drill import ManifestsById

    write_fleet(backend, NOW_MICROS)
    for age in (10, 20):
        write_sample_snapshot(backend, tenant_id=1, snapshot_id=f"t1-older-{age}", models=(("m", 8),),
                              created_at_unix_micros=NOW_MICROS - age * HOUR_MICROS)
    restore, check = restore_plain(backend), check_plain(backend)
    listing = list_snapshots(backend)

    def drill(tenant_id: int) -> tuple[object, list[str]]:
        read: list[str] = []

        def read_one(snapshot_id: str) -> SnapshotManifest:
            read.append(snapshot_id)
            return read_manifest(backend, snapshot_id)

        ids = [m.snapshot_id for m in drill_candidates(listing, tenant_id)]
        result = drill_tenant(tenant_id, ManifestsById(ids, read_one),
                              lambda m: attempt_snapshot(m, tmp_path, restore, check),
                              backend_url=backend.url, now=NOW)
        return result, read

    healthy, read = drill(1)
    assert healthy.status == "ok" and healthy.snapshot_id == "t1-new" and read == ["t1-new"]
    walked, read = drill(2)
    assert walked.last_good_snapshot_id == "t2-good" and read == ["t2-bad", "t2-good"]
    assert walked.model_dump() == drill_tenant(
        2, drill_candidates(listing, 2), lambda m: attempt_snapshot(m, tmp_path, restore, check),
        backend_url=backend.url, now=NOW).model_dump()


def test_retrying_retries_transient_errors_only_with_the_tasks_backoff():
    calls: list[int] = []
    waits: list[float] = []
    told: list[tuple[str, int, float]] = []

    def flaky(failures: int):
        def fn(x: int) -> int:
            calls.append(x)
            if len(calls) <= failures:
                raise TransientBackendError(f"blip {len(calls)}", key="k")
            return 2 * x

        return fn

    def on_retry(exc: Exception, failed: int, wait: float) -> None:
        told.append((str(exc), failed, wait))

    assert retrying(flaky(2), on_retry=on_retry, sleep=waits.append)(21) == 42
    assert calls == [21, 21, 21]
    assert [(why, failed) for why, failed, _ in told] == [("blip 1", 1), ("blip 2", 2)]
    assert waits == [wait for *_, wait in told]
    # Prefect's own jitter around the tasks' delays (1, 2, ... s), never above delay x (1 + jitter).
    assert all(0 <= wait <= delay * (1 + RETRY_JITTER) for wait, delay in zip(waits, RETRY_DELAYS))

    # Out of tries: the last transient error, after RETRIES waits.
    calls.clear()
    waits.clear()
    with pytest.raises(TransientBackendError, match=f"^blip {RETRIES + 1}$"):
        retrying(flaky(RETRIES + 1), sleep=waits.append)(1)
    assert len(calls) == RETRIES + 1 and len(waits) == RETRIES

    # Anything else: raised at once, never waited for.
    calls.clear()
    waits.clear()

    def denied() -> None:
        calls.append(0)
        raise AccessDeniedError("access denied to k", key="k")

    with pytest.raises(AccessDeniedError):
        retrying(denied, sleep=waits.append)()
    assert calls == [0] and waits == []


# -- the flow, under a real Prefect API --------------------------------------------------------------


def _read_back(flow_run_id):
    """The run, its persisted result, its subflow runs, its task runs, its artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            result = await run.state.result(raise_on_failure=False)
            subflows = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
            task_runs = await client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])))
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            return run, result, subflows, task_runs, artifacts

    return asyncio.run(read())


def _run_logs(flow_run_id, until: str) -> list:
    """The log lines of the run and its task runs, once one of them contains ``until`` (or the
    wait is over): runs send their logs to the API in batches."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read():
        async with get_client() as client:
            deadline = time.monotonic() + EVENTS_WAIT_SECONDS
            while True:
                logs = await client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
                if any(until in log.message for log in logs) or time.monotonic() > deadline:
                    return logs
                await asyncio.sleep(0.5)

    return asyncio.run(read())


def run_events(flow_run_id, name: str, expected: int, wait: float = EVENTS_WAIT_SECONDS) -> list:
    """The events named ``name`` the run emitted, once ``expected`` of them are readable (or
    ``wait`` seconds have passed)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter

    event_filter = EventFilter(
        event=EventNameFilter(name=[name]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )

    async def read():
        async with get_client() as client:
            deadline = time.monotonic() + wait
            while True:
                # The server refuses a page above 50 (the client's default of 100 gets a 422).
                events = (await client.read_events(filter=event_filter, limit=50)).events
                if len(events) >= expected or time.monotonic() > deadline:
                    return events
                await asyncio.sleep(0.5)

    return asyncio.run(read())


@pytest.mark.usefixtures("prefect_api")
def test_drill_flow_ends_failed_with_report_artifacts_events_and_a_task_run_per_tenant(backend, tmp_path):
    from memrestore.flows.drill import drill_report, restore_drill
    from memrestore.tasks.drill_report import artifact_key

    write_fleet(backend, int(time.time() * 10**6))
    scratch = tmp_path / "scratch"
    state = restore_drill(backend=backend.url, tenants=[1, 2, 3, 5, 9], max_age_hours=24,
                          scratch_dir=str(scratch), return_state=True)
    assert state.is_failed()
    report_key, summary_key = artifact_key("report", backend.url), artifact_key("summary", backend.url)
    assert state.message == (f"4 of 5 tenants failed the restore drill (tenants 9, 5, 3, 2); see the {summary_key} "
                             f"and {report_key} artifacts")
    report = drill_report(state)
    assert (report.ok, report.failed) == (1, 4)
    assert [r.tenant_id for r in report.tenants] == [9, 5, 3, 2, 1]  # worst first
    t = {r.tenant_id: r for r in report.tenants}
    assert [t[i].status for i in (1, 2, 3, 5, 9)] == ["ok", "failed", "failed", "failed", "failed"]
    assert t[2].reason.startswith("checksum mismatch for 't2-bad/hnsw-0.bin'")
    assert t[2].last_good_snapshot_id == "t2-good"
    assert 5 * 3600 <= t[2].last_good_age_seconds < 6 * 3600
    assert "30.0 h old, above --max-age-hours 24" in t[3].reason and t[3].rpo_over_max_age
    assert "tenant_5/data.sqlite (in a scratch copy since deleted" in t[5].reason and t[5].rpo_over_max_age
    assert list(scratch.iterdir()) == []

    drill_run = state.state_details.flow_run_id
    run, persisted, subflows, task_runs, artifacts = _read_back(drill_run)
    # The report is the run's persisted JSON result, Failed or not.
    assert run.state.is_failed() and persisted == report.model_dump(mode="json")
    # Named for its backend and the minute it was made for, never a random pair of words.
    when = run.expected_start_time.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
    assert run.name == f"drill-file-{tmp_path.name.replace('_', '-')}-backend-{when}"

    # Each tenant is one drill-tenant task run that restores in itself: no restore-snapshot run,
    # no task per step. A failed tenant's run is Failed, its reason the state's message, and ran
    # once: Prefect does not retry a tenant that failed its checks.
    assert subflows == []
    tenant_runs = {r.name: r for r in task_runs if r.name.startswith("drill-tenant-")}
    assert sorted(tenant_runs) == ["drill-tenant-1", "drill-tenant-2", "drill-tenant-3", "drill-tenant-5",
                                   "drill-tenant-9"]
    assert tenant_runs["drill-tenant-1"].state.is_completed()
    assert tenant_runs["drill-tenant-1"].state.message == "tenant 1 passed"
    for i in (2, 3, 5, 9):
        tenant_run = tenant_runs[f"drill-tenant-{i}"]
        assert tenant_run.state.is_failed() and tenant_run.state.message == t[i].reason, tenant_run.state
        assert tenant_run.run_count == 1
    others = [r for r in task_runs if r.name not in tenant_runs]  # named <task>-<3 hex digits>
    assert sorted(r.name.rsplit("-", 1)[0] for r in others) == ["drill-report", "drill-trend", "list-snapshots"]
    assert all(r.state.is_completed() for r in others)
    # Each failed attempt is a warning of its tenant's run (the walk back: t2-bad, then t2-good),
    # in units, naming no file of a copy that is deleted.
    _run_logs(drill_run, until="tenant 2, snapshot t2-bad: the restore failed")
    logs = _run_logs(drill_run, until="tenant 5, snapshot t5-trunc: restored")
    tenant_2, tenant_5 = tenant_runs["drill-tenant-2"].id, tenant_runs["drill-tenant-5"].id
    assert any(log.task_run_id == tenant_2 and log.message.startswith(
        "tenant 2, snapshot t2-bad: the restore failed: checksum mismatch for 't2-bad/hnsw-0.bin'") for log in logs)
    assert any(log.task_run_id == tenant_5 and log.message.startswith(
        "tenant 5, snapshot t5-trunc: restored 96.0 KiB in ") and " s, but the check failed: SQLite integrity_check "
        "of the restored checkpoint tenant_5/data.sqlite (in a scratch copy since deleted;" in log.message
        for log in logs), [log.message for log in logs if log.task_run_id == tenant_5]
    assert not any(str(scratch) in log.message for log in logs)

    # The artifacts' keys are the backend's: one history per backend, whatever ran the drill.
    progress_key = artifact_key("progress", backend.url)
    by_run_and_key = {(a.flow_run_id, a.key): a for a in artifacts if a.key}
    assert {key for _, key in by_run_and_key} == {report_key, summary_key, progress_key,
                                                  artifact_key("trend", backend.url), artifact_key("metrics", backend.url)}
    rows = json.loads(by_run_and_key[(drill_run, report_key)].data)
    assert [(r["tenant"], r["status"], r["snapshot"]) for r in rows] == [
        (9, "failed", "-"), (5, "failed", "t5-trunc"), (3, "failed", "t3-stale"), (2, "failed", "t2-bad"),
        (1, "ok", "t1-new")]
    assert [r["RPO"] for r in rows] == ["none restores", "36.0 h, over the 24 h limit", "30.0 h, over the 24 h limit",
                                        "5.0 h", "1.0 h"]
    assert rows[4]["size"] == "152.0 KiB" and rows[4]["rate"].endswith("/s") and rows[4]["age"] == "1.0 h"
    assert set(rows[0]) == {"tenant", "status", "snapshot", "age", "RTO", "size", "rate", "last good", "RPO", "reason"}
    summary = by_run_and_key[(drill_run, summary_key)]
    assert "4 of 5 tenants failed" in summary.data and "**tenant 2 failed**" in summary.data
    assert all(r.reason in summary.data for r in report.failures)
    progress = by_run_and_key[(drill_run, progress_key)]
    assert progress.type == "progress" and float(progress.data) == 100.0

    events = run_events(drill_run, DRILL_FAILED_EVENT, expected=4)
    assert sorted(e.resource.id for e in events) == [
        "memrestore.tenant.2", "memrestore.tenant.3", "memrestore.tenant.5", "memrestore.tenant.9"]
    tenant_2 = next(e for e in events if e.resource.id == "memrestore.tenant.2")
    assert tenant_2.payload["last_good_snapshot_id"] == "t2-good"
    assert tenant_2.payload["reason"] == t[2].reason


def test_drill_parameters_are_typed_for_the_ui_form():
    from prefect.utilities.callables import parameter_schema

    from memrestore.flows.drill import restore_drill

    schema = parameter_schema(restore_drill).model_dump()
    props = schema["properties"]
    assert list(props) == ["backend", "tenants", "max_age_hours", "scratch_dir", "keep_failed", "concurrency",
                           "via_deployment", "child_timeout_seconds", "streams", "limit_rate", "validation",
                           "pick", "window_days", "seed", "sample", "max_streams"]
    assert schema["required"] == ["backend"]
    pick = schema["definitions"][props["pick"]["$ref"].rsplit("/", 1)[1]]
    assert pick["enum"] == ["latest", "random-within-window"] and props["pick"]["default"] == "latest"
    assert props["window_days"]["default"] == 30 and props["window_days"]["maximum"] == 365
    assert props["concurrency"]["minimum"] == 1 and props["concurrency"]["default"] == 4
    assert all(props[p].get("description") for p in props)


@pytest.fixture
def drill_through_proxy(seaweedfs, faultproxy, monkeypatch) -> tuple[str, SnapshotManifest]:
    """A bucket with tenant 1's one snapshot (written directly), and boto3's chain pointed at the
    fault proxy: the backend URL and the manifest."""
    bucket = seaweedfs.create_bucket(f"drill-faults-{uuid.uuid4().hex[:10]}")
    point_boto3(monkeypatch, seaweedfs.env())
    manifest = write_sample_snapshot(open_backend(f"s3://{bucket}"), tenant_id=1, snapshot_id="only",
                                     models=(("minilm", 8),), created_at_unix_micros=int(time.time() * 10**6))
    point_boto3(monkeypatch, faultproxy.env(seaweedfs))
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)  # the project's own retry config applies
    return f"s3://{bucket}", manifest


@pytest.mark.usefixtures("prefect_api")
def test_a_transient_error_in_a_drills_restore_is_retried_and_the_tenant_passes(faultproxy, drill_through_proxy,
                                                                                tmp_path):
    from memrestore.flows.drill import drill_report, restore_drill

    url, manifest = drill_through_proxy
    key = manifest.hnsw_snapshots[0].content_key
    # Every request botocore makes for the blob in the first restore fails, and one more: so the
    # first restore fails after boto3's own retries (and is rolled back), and the second restores.
    faultproxy.fail_next(BOTO_REQUESTS + 1, Fault.INTERNAL, match=key, methods=("GET",))
    scratch = tmp_path / "scratch"
    state = restore_drill(backend=url, tenants=[1], scratch_dir=str(scratch), return_state=True)
    assert state.is_completed(), state.message
    [t] = drill_report(state).tenants
    assert (t.status, t.snapshot_id, t.last_good_snapshot_id, t.reason) == ("ok", "only", "only", None)
    assert faultproxy.count("GET", match=key) == BOTO_REQUESTS + 2
    assert list(scratch.iterdir()) == []

    drill_run = state.state_details.flow_run_id
    _, _, subflows, task_runs, _ = _read_back(drill_run)
    assert subflows == [] and [t.name for t in task_runs if t.name.startswith("drill-tenant")] == ["drill-tenant-1"]
    logs = _run_logs(drill_run, until="trying again")
    retried = [log.message for log in logs if "trying again" in log.message]
    assert len(retried) == 1 and retried[0].startswith(
        f"tenant 1, snapshot only: the restore failed (try 1 of {RETRIES + 1}), trying again in ")
    assert key in retried[0]


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("fault,says", [(Fault.FORBIDDEN, "access denied to"), (Fault.NOT_FOUND, "object not found:")])
def test_a_permanent_error_in_a_drills_restore_fails_the_tenant_on_the_first_try(faultproxy, drill_through_proxy,
                                                                                 tmp_path, fault, says):
    from memrestore.flows.drill import drill_report, restore_drill

    url, manifest = drill_through_proxy
    key = manifest.hnsw_snapshots[0].content_key
    faultproxy.always(fault, match=key, methods=("GET",))  # its size (a HEAD) is found
    scratch = tmp_path / "scratch"
    state = restore_drill(backend=url, tenants=[1], scratch_dir=str(scratch), return_state=True)
    assert state.is_failed()
    [t] = drill_report(state).tenants
    assert t.status == "failed" and t.reason.startswith(says) and key in t.reason
    assert t.reason.endswith("no snapshot of tenant 1 restores cleanly (1 tried).")
    assert faultproxy.count("GET", match=key) == 1  # neither botocore nor the drill tried again
    assert list(scratch.iterdir()) == []  # the failed copy is deleted, as ever without --keep-failed

    logs = _run_logs(state.state_details.flow_run_id, until="the restore failed:")
    assert any(log.message.startswith(f"tenant 1, snapshot only: the restore failed: {says}") for log in logs)
    assert not any("trying again" in log.message for log in logs)


# -- the command line, as a subprocess --------------------------------------------------------------


def _cli(*args: str, s3: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``memrestore drill *args``; with ``s3`` (a server's env()), pointed at that S3 server."""
    return memrestore("drill", *args, base=s3_environment(s3) if s3 else None, cwd=REPO, timeout=CLI_TIMEOUT)


@pytest.mark.usefixtures("prefect_api")
def test_cli_drill_json_exit_status_and_kept_copies(backend, tmp_path):
    write_fleet(backend, int(time.time() * 10**6))
    scratch = tmp_path / "scratch"
    done = _cli("--backend", backend.url, "--tenant", "1", "--tenant", "2", "--tenant", "4", "--tenant", "9",
                "--scratch-dir", str(scratch), "--keep-failed", "--json")
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], report["failed"]) == (1, 3)
    t = _by_tenant(report)
    assert set(t[1]) == {"tenant_id", "snapshot_id", "status", "reason", "restore_seconds", "snapshot_age_seconds",
                         "bytes", "last_good_snapshot_id", "last_good_age_seconds", "kept_copies", "lost_runs",
                         "rpo_over_max_age", "validation", "picked_by", "newest_age_seconds", "streams_peak",
                         "streams_final"}
    assert t[1]["validation"] is None  # no --validate-...: tests/test_validation_hooks.py
    assert t[1]["streams_peak"] is None  # a local folder reads without streams (S3: test_adaptive_streams)
    assert t[1]["picked_by"] == "latest" and report["seed"] is None and report["sample"] is None
    assert [r["tenant_id"] for r in report["tenants"]] == [4, 9, 2, 1]  # worst first
    assert [t[i]["status"] for i in (1, 2, 4, 9)] == ["ok", "failed", "failed", "failed"]
    assert t[2]["reason"].startswith("checksum mismatch") and t[2]["last_good_snapshot_id"] == "t2-good"
    assert "ghost_table" in t[4]["reason"] and t[4]["last_good_snapshot_id"] is None
    assert t[9]["snapshot_id"] is None and "no finished snapshot of tenant 9" in t[9]["reason"]
    # Only failed copies are kept: t2-bad's (empty: nothing passed its checksum) and t4-ghost's.
    kept = sorted(p.name.rsplit("-", 1)[0] for p in scratch.iterdir())
    assert kept == ["tenant-2-t2-bad", "tenant-4-t4-ghost"]
    assert tree(Path(t[4]["kept_copies"][0]))["tenant_4/data.sqlite"] == (backend.root / "t4-ghost/sqlite.db").read_bytes()


@pytest.mark.usefixtures("prefect_api")
def test_cli_drill_healthy_tenant_prints_a_table_and_exits_0(backend, tmp_path):
    write_fleet(backend, int(time.time() * 10**6))
    scratch = tmp_path / "scratch"
    done = _cli("--backend", backend.url, "--tenant", "1", "--max-age-hours", "24", "--scratch-dir", str(scratch))
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[:2]
    assert header.split() == ["tenant", "status", "snapshot", "age", "RTO", "size", "rate", "last", "good", "RPO"]
    assert row.split()[:5] == ["1", "ok", "t1-new", "1.0", "h"]
    assert done.stdout.rstrip().endswith("1 ok, 0 failed")
    assert list(scratch.iterdir()) == []


@pytest.mark.usefixtures("prefect_api")
def test_cli_drill_table_is_worst_first_in_units_with_whole_reasons(backend, tmp_path):
    """What an operator reads at the terminal after a failed drill: failed tenants first (no
    restorable snapshot, then the oldest RPO), sizes, rates, durations and ages in units, the RPO
    over the limit flagged, each reason whole, and no path of a copy that was deleted."""
    write_fleet(backend, int(time.time() * 10**6))
    scratch = tmp_path / "scratch"
    done = _cli("--backend", backend.url, *(a for i in (1, 2, 3, 5, 9) for a in ("--tenant", str(i))),
                "--max-age-hours", "24", "--scratch-dir", str(scratch))
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["tenant", "status", "snapshot", "age", "RTO", "size", "rate", "last", "good", "RPO"]
    rows = [line.split() for line in lines[1:6]]
    assert [r[0] for r in rows] == ["9", "5", "3", "2", "1"]
    assert [r[1] for r in rows] == ["FAILED", "FAILED", "FAILED", "FAILED", "ok"]
    table = "\n".join(lines[:6])
    assert re.search(r"^\s*5\s+FAILED\s+t5-trunc\s+1\.0 h\s+[\d.]+ s\s+96\.0 KiB\s+[\d.]+ [KM]iB/s\s+t5-good\s+"
                     r"36\.0 h, over the 24 h limit\s*$", table, re.M), table
    assert re.search(r"^\s*1\s+ok\s+t1-new\s+1\.0 h\s+[\d.]+ s\s+152\.0 KiB\s+[\d.]+ [KM]iB/s\s+t1-new\s+1\.0 h\s*$",
                     table, re.M), table
    assert re.search(r"^\s*9\s+FAILED\s+-\s+-\s+-\s+-\s+-\s+none\s+none restores\s*$", table, re.M), table
    assert not re.search(r"\d{5,}", table)  # no raw byte counts
    # Each failed tenant's reason whole, worst first, below the table.
    reasons = [line for line in lines[6:] if re.match(r"tenant \d+: ", line)]
    assert [r.split(":")[0] for r in reasons] == ["tenant 9", "tenant 5", "tenant 3", "tenant 2"]
    assert reasons[1].startswith("tenant 5: SQLite integrity_check of the restored checkpoint tenant_5/data.sqlite "
                                 "(in a scratch copy since deleted; --keep-failed keeps failed copies) failed: ")
    assert reasons[1].endswith("t5-good, is 36.0 h old, above --max-age-hours 24: a restore today loses more than "
                               "the limit allows.")
    assert str(scratch) not in done.stdout and list(scratch.iterdir()) == []
    assert lines[-1] == "1 ok, 4 failed"


@pytest.mark.usefixtures("prefect_api")
def test_cli_drill_refuses_a_missing_backend_with_one_message(tmp_path):
    done = _cli("--backend", str(tmp_path / "nowhere"))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: backend folder {tmp_path / 'nowhere'} does not exist; check the --backend path"]


@pytest.mark.usefixtures("prefect_api")
def test_cli_drill_over_seaweedfs(seaweedfs, tmp_path):
    from memrestore.backends.s3 import S3Backend

    bucket = seaweedfs.create_bucket()
    s3 = S3Backend(bucket, "nightly", client=seaweedfs.client())
    now = int(time.time() * 10**6)
    write_sample_snapshot(s3, tenant_id=1, snapshot_id="s3-t1-old", created_at_unix_micros=now - 2 * HOUR_MICROS)
    write_sample_snapshot(s3, tenant_id=1, snapshot_id="s3-t1-new", created_at_unix_micros=now - HOUR_MICROS)
    good = write_sample_snapshot(s3, tenant_id=2, snapshot_id="s3-t2-good", created_at_unix_micros=now - 3 * HOUR_MICROS)
    bad = write_sample_snapshot(s3, tenant_id=2, snapshot_id="s3-t2-bad", created_at_unix_micros=now - HOUR_MICROS)
    key = bad.hnsw_snapshots[0].content_key
    body = bytearray(seaweedfs.client().get_object(Bucket=bucket, Key=f"nightly/{key}")["Body"].read())
    body[100] ^= 0xFF
    s3.put_object(key, bytes(body))

    scratch = tmp_path / "scratch"
    done = _cli("--backend", f"s3://{bucket}/nightly", "--scratch-dir", str(scratch), "--json", s3=seaweedfs.env())
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    t = _by_tenant(report)
    assert t[1]["status"] == "ok" and t[1]["snapshot_id"] == "s3-t1-new"
    assert t[1]["bytes"] == sum(s3.object_size(k) for k in ["s3-t1-new/sqlite.db", "s3-t1-new/hnsw-0.bin", "s3-t1-new/hnsw-1.bin"])
    assert t[2]["status"] == "failed" and t[2]["reason"].startswith(f"checksum mismatch for '{key}'")
    assert t[2]["last_good_snapshot_id"] == good.snapshot_id
    assert list(scratch.iterdir()) == []
