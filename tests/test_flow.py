"""The restore-snapshot flow end to end under a real Prefect API: states, artifacts, result."""

from __future__ import annotations

import asyncio
import re

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, TaskRunFilter, TaskRunFilterFlowRunId
from prefect.utilities.callables import parameter_schema

from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.flows.restore import restore_snapshot, verify_snapshot
from memrestore.tasks.errors import ChecksumMismatchError, DataDirNotEmptyError
from memrestore.tasks.plan import RestoreMode
from tests.conftest import tree
from tests.layout import assert_restored_layout
from tests.procs import wait_until

pytestmark = pytest.mark.usefixtures("prefect_api")

#: How long a finished run's task runs may take to be readable through the API: the server records
#: them from the events the run sent, after the run has returned.
TASK_RUNS_WAIT_SECONDS = 60


def _artifacts(flow_run_id):
    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    return asyncio.run(read())


def _flow_run(flow_run_id, task_runs: int):
    """The run, its task runs (once all ``task_runs`` of them are recorded, in a final state) and
    its persisted result."""

    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            tasks = await client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
            )
            result = await run.state.result(raise_on_failure=False) if run.state.is_completed() else None
            return run, tasks, result

    def recorded():
        run, tasks, result = asyncio.run(read())
        # A task run can be readable before its first state is (the server records both from events).
        done = len(tasks) >= task_runs and all(t.state is not None and t.state.is_final() for t in tasks)
        return (run, tasks, result) if done else None

    return wait_until(recorded, TASK_RUNS_WAIT_SECONDS, f"the {task_runs} task runs of flow run {flow_run_id}")


def test_flow_restores_and_publishes_table_summary_and_json_result(backend, snapshot, data_dir):
    state = asyncio.run(restore_snapshot(
        backend=backend.url, tenant_id=1, data_dir=str(data_dir), mode=RestoreMode.NEW_CLUSTER,
        destination={"embedding_model": "minilm"}, return_state=True,
    ))
    assert state.is_completed()
    restored = tree(data_dir)
    assert sorted(restored) == ["tenant_1/data.sqlite", "tenant_1/hnsw/e5-base.bin", "tenant_1/hnsw/minilm.bin"]
    assert restored["tenant_1/data.sqlite"] == (backend.root / "snap-1/sqlite.db").read_bytes()
    assert_restored_layout(data_dir, snapshot)

    flow_run_id = state.state_details.flow_run_id
    run, task_runs, persisted = _flow_run(flow_run_id, task_runs=11)
    # The outcome, read back from the API as the persisted JSON result of the run.
    assert persisted["snapshot_id"] == "snap-1" and persisted["mode"] == "new_cluster"
    assert persisted["total_bytes"] == sum(len(v) for v in restored.values())
    assert [(i["kind"], i["verified"]) for i in persisted["items"]] == [
        ("sqlite_checkpoint", True), ("hnsw:minilm", True), ("hnsw:e5-base", True)]
    # One task run per step of the card, one download per item.
    names = sorted(t.name.rsplit("-", 1)[0] for t in task_runs)
    assert names == sorted(["fetch-manifest", "validate", "measure-objects", "preflight",
                            "download-and-verify", "download-and-verify", "download-and-verify",
                            "check-staged-copy", "atomic-writes", "marker-cleanup", "outcome"])

    artifacts = {a.key: a for a in _artifacts(flow_run_id) if a.key}
    table = artifacts["restore-items-tenant-1"]
    assert table.type == "table"
    import json

    rows = json.loads(table.data)
    assert [r["destination"] for r in rows] == [str(data_dir / p) for p in (
        "tenant_1/data.sqlite", "tenant_1/hnsw/minilm.bin", "tenant_1/hnsw/e5-base.bin")]
    assert [r["bytes"] for r in rows] == [i["bytes"] for i in persisted["items"]]
    summary = artifacts["restore-summary-tenant-1"]
    assert summary.type == "markdown" and "snap-1" in summary.data and "verified: 3 of 3" in summary.data


def test_flow_fails_on_checksum_mismatch_and_keeps_old_data(backend, snapshot, data_dir):
    backend.put_object(snapshot.hnsw_snapshots[1].content_key, b"corrupted after backup")
    (data_dir / "tenant_5").mkdir(parents=True)
    (data_dir / "tenant_5" / "data.sqlite").write_bytes(b"old tenant 5")
    state = asyncio.run(restore_snapshot(
        backend=backend.url, tenant_id=1, data_dir=str(data_dir), mode=RestoreMode.WIPE_AND_RESTORE,
        destination={"embedding_model": "minilm"}, return_state=True,
    ))
    assert state.is_failed()
    with pytest.raises(ChecksumMismatchError, match=snapshot.hnsw_snapshots[1].content_key):
        state.result()
    assert state.message.startswith("checksum mismatch for")
    assert tree(data_dir) == {"tenant_5/data.sqlite": b"old tenant 5"}
    _, task_runs, _ = _flow_run(state.state_details.flow_run_id, task_runs=7)  # up to the downloads
    downloads = [t for t in task_runs if t.name.startswith("download-and-verify")]
    # A checksum mismatch is permanent: the failing download ran once, never retried.
    assert sorted(t.run_count for t in downloads) == [1, 1, 1]
    assert sum(t.state.is_failed() for t in downloads) == 1
    # The failure's summary: what failed, and the data dir as it was (the undo put it back).
    summary = {a.key: a for a in _artifacts(state.state_details.flow_run_id) if a.key}["restore-summary-tenant-1"]
    assert summary.data.startswith("## Failed: the restore of snapshot `snap-1`")
    assert f"{data_dir} is as it was before this restore" in summary.data


def test_dry_run_plans_and_writes_nothing(backend, snapshot, data_dir):
    state = asyncio.run(restore_snapshot(
        backend=backend.url, tenant_id=1, data_dir=str(data_dir), mode=RestoreMode.NEW_CLUSTER,
        destination={"embedding_model": "minilm"}, dry_run=True, return_state=True,
    ))
    result = state.result()
    assert result["status"] == "planned"
    assert [i["bytes"] for i in result["items"]] == [
        backend.object_size(k) for k in [snapshot.sqlite_checkpoint_key] + [e.content_key for e in snapshot.hnsw_snapshots]]
    assert not data_dir.exists()
    # Named and reported as a plan: its own summary, sizes to fetch, no rate for bytes it never read.
    run, _, _ = _flow_run(state.state_details.flow_run_id, task_runs=5)
    assert run.name == "plan-tenant-1-snap-1-new_cluster"
    artifacts = {a.key: a for a in _artifacts(run.id) if a.key}
    assert "restore-summary-tenant-1" not in artifacts
    plan = artifacts["restore-plan-summary-tenant-1"].data
    assert plan.startswith("## Plan (dry run): would restore snapshot `snap-1` of tenant 1 (new_cluster)")
    assert "to fetch" in plan and "nothing was read or written" in plan
    assert not re.search(r"B/s\b", plan)  # no rate for bytes it never read


def test_a_refusal_ends_the_run_failed_with_its_message_in_the_callers_words(backend, snapshot, data_dir):
    """Called in-process (as the command line calls it), a refused restore raises its own error, and
    its run is Failed with that message, flags and all, plus a summary saying nothing changed."""
    data_dir.mkdir()
    (data_dir / "keep").write_bytes(b"keep")
    state = asyncio.run(restore_snapshot(
        backend=backend.url, tenant_id=1, data_dir=str(data_dir), mode=RestoreMode.NEW_CLUSTER,
        destination={"embedding_model": "minilm"}, return_state=True,
    ))
    assert state.is_failed()
    with pytest.raises(DataDirNotEmptyError) as refused:
        state.result()
    assert state.message == str(refused.value) and "--mode single_tenant" in state.message
    run, _, _ = _flow_run(state.state_details.flow_run_id, task_runs=5)
    assert run.state.message == state.message and run.name == "tenant-1-snap-1-new_cluster"
    summary = {a.key: a for a in _artifacts(run.id) if a.key}["restore-summary-tenant-1"].data
    assert summary.startswith("## Refused: the restore of snapshot `snap-1` of tenant 1 (new_cluster)")
    assert f"nothing in {data_dir} was changed" in summary and state.message in summary
    assert tree(data_dir) == {"keep": b"keep"}


def test_verify_flow_hashes_every_blob(backend, snapshot):
    result = asyncio.run(verify_snapshot(backend=backend.url, snapshot="snap-1"))
    assert result["status"] == "verified" and all(i["verified"] for i in result["items"])
    backend.put_object(snapshot.sqlite_checkpoint_key, b"bit rot")
    with pytest.raises(ChecksumMismatchError, match=snapshot.sqlite_checkpoint_key):
        asyncio.run(verify_snapshot(backend=backend.url, snapshot="snap-1"))


def test_latest_and_mode_through_the_flow(backend, data_dir):
    write_sample_snapshot(backend, tenant_id=3, snapshot_id="new", created_at_unix_micros=2, models=(("m", 8),))
    write_sample_snapshot(backend, tenant_id=3, snapshot_id="old", created_at_unix_micros=1, models=(("m", 8),))
    (data_dir / "tenant_9").mkdir(parents=True)
    (data_dir / "tenant_9" / "keep").write_bytes(b"keep")
    result = asyncio.run(restore_snapshot(
        backend=backend.url, tenant_id=3, data_dir=str(data_dir), mode=RestoreMode.SINGLE_TENANT))
    assert result["snapshot_id"] == "new"
    assert tree(data_dir)["tenant_9/keep"] == b"keep"
    assert (data_dir / "tenant_3" / "hnsw" / "m.bin").read_bytes() == (backend.root / "new/hnsw-0.bin").read_bytes()


def test_parameters_are_typed_for_the_ui_form():
    schema = parameter_schema(restore_snapshot).model_dump()
    props = schema["properties"]
    assert set(props) >= {"backend", "tenant_id", "data_dir", "mode", "snapshot", "destination", "dry_run"}
    mode_ref = props["mode"]["allOf"][0]["$ref"].rsplit("/", 1)[1] if "allOf" in props["mode"] else props["mode"]["$ref"].rsplit("/", 1)[1]
    assert schema["definitions"][mode_ref]["enum"] == ["new_cluster", "single_tenant", "replace_tenant", "wipe_and_restore"]
    dest_ref = (props["destination"].get("$ref") or props["destination"]["allOf"][0]["$ref"]).rsplit("/", 1)[1]
    assert set(schema["definitions"][dest_ref]["properties"]) == {"wire_version", "tombstone_floor", "embedding_model"}
    # Each nested field described for the form, and typed without a null branch (no type switch).
    for name, field in schema["definitions"][dest_ref]["properties"].items():
        assert field.get("description") and field["title"] == name, field
        assert "anyOf" not in field and field.get("default", "unset") is not None, field
    assert "description" in props["mode"] or "description" in schema["definitions"][mode_ref]
    assert schema["required"] == ["backend", "tenant_id", "data_dir", "mode"]


def test_an_interrupted_restore_says_what_its_data_dir_holds(backend, snapshot, tmp_path, prefect_api):
    """Ctrl-C in the command line mid-staging: the run's summary says the restore was interrupted
    and what the data dir holds (its marker, the phase, the way out), as the command itself does."""
    import signal

    from memrestore.tasks.marker import read_marker
    from tests.test_process_hygiene import _env, paused_restore

    data_dir = tmp_path / "data"
    args = ["restore", "--backend", backend.url, "--tenant", "1", "--snapshot", "snap-1",
            "--data-dir", str(data_dir), "--mode", "new_cluster", "--embedding-model", "minilm"]
    proc = paused_restore(args, {**_env(tmp_path / "home"), "PREFECT_API_URL": prefect_api}, tmp_path, "stage-chunk:1")
    marker = read_marker(data_dir)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 128 + signal.SIGINT
    summary = {a.key: a for a in _artifacts(marker.flow_run_id) if a.key}["restore-summary-tenant-1"].data
    assert summary.startswith("## Interrupted: the restore of snapshot `snap-1` of tenant 1 (new_cluster)")
    assert "keeps its marker .restore-in-progress" in summary and "phase staging" in summary
    assert f"`memrestore abort --data-dir {data_dir}`" in summary
