"""S3 failing the way S3 fails, through a fault-injecting proxy in front of SeaweedFS:
transient faults are retried until the restore succeeds; permanent ones fail at once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

from memrestore.backends import open_backend
from memrestore.backends.errors import AccessDeniedError, ObjectNotFoundError
from memrestore.backends.s3 import CLIENT_CONFIG
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.flows.restore import restore_snapshot
from memrestore.tasks.choose import fetch_manifest
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.validate import validate
from tests.restorekit import execute
from tests.conftest import tree
from tests.faultproxy import Fault
from tests.procs import wait_until
from tests.seaweed import point_boto3

MiB = 2**20
#: Requests botocore sends for one call before giving up (max_attempts counts the retries).
BOTO_REQUESTS = CLIENT_CONFIG.retries["max_attempts"] + 1


@pytest.fixture
def through_proxy(seaweedfs, faultproxy, monkeypatch):
    """A bucket with two snapshots of tenant 1, and boto3's chain pointed at the proxy."""
    bucket = seaweedfs.create_bucket(f"faults-{uuid.uuid4().hex[:10]}")
    point_boto3(monkeypatch, seaweedfs.env())
    direct = open_backend(f"s3://{bucket}")
    small = write_sample_snapshot(direct, tenant_id=1, snapshot_id="small", created_at_unix_micros=1,
                                  hnsw_bytes=256 * 1024)
    large = write_sample_snapshot(direct, tenant_id=1, snapshot_id="large", created_at_unix_micros=2,
                                  hnsw_bytes=24 * MiB)  # ranged, parallel GETs
    point_boto3(monkeypatch, faultproxy.env(seaweedfs))
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)  # the project's own retry config applies
    return bucket, small, large


def _expected(seaweedfs, bucket, manifest) -> dict[str, bytes]:
    client = seaweedfs.client()
    keys = {"tenant_1/data.sqlite": manifest.sqlite_checkpoint_key}
    for entry in manifest.hnsw_snapshots:
        keys[f"tenant_1/hnsw/{entry.embedding_model}.bin"] = entry.content_key
    return {dest: client.get_object(Bucket=bucket, Key=key)["Body"].read() for dest, key in keys.items()}


def _plan(backend, snapshot_id):
    manifest = fetch_manifest(backend, 1, snapshot_id)
    return validate(manifest, DestinationState(embedding_model="minilm"), backend.url)


def test_restores_succeed_with_a_fifth_of_requests_failing(seaweedfs, faultproxy, through_proxy, tmp_path):
    bucket, small, large = through_proxy
    faultproxy.set_faults(rate=0.2, kinds=[Fault.SLOW_DOWN, Fault.INTERNAL, Fault.RESET, Fault.TRUNCATE],
                          seed=20261128)
    for manifest in (small, large, small, large):
        backend = open_backend(f"s3://{bucket}")  # a fresh client: botocore's retry budget is per client
        data_dir = tmp_path / f"data-{uuid.uuid4().hex[:6]}"
        execute(backend, _plan(backend, manifest.snapshot_id), data_dir, RestoreMode.NEW_CLUSTER)
        assert tree(data_dir) == _expected(seaweedfs, bucket, manifest)
    assert faultproxy.faults_injected() >= 5, faultproxy.requests


def test_flow_retries_a_transient_failure_and_counts_attempts(seaweedfs, faultproxy, through_proxy,
                                                              tmp_path, prefect_api):
    bucket, small, _ = through_proxy
    key = small.hnsw_snapshots[0].content_key
    # Every request botocore makes in the first task attempt fails, and one more: so the first
    # attempt fails after its own retries, and the task's second attempt succeeds.
    faultproxy.fail_next(BOTO_REQUESTS + 1, Fault.INTERNAL, match=key, methods=("GET",))
    data_dir = tmp_path / "data"
    state = asyncio.run(restore_snapshot(
        backend=f"s3://{bucket}", tenant_id=1, snapshot="small", data_dir=str(data_dir),
        mode=RestoreMode.NEW_CLUSTER, destination={"embedding_model": "minilm"}, return_state=True))
    assert state.is_completed(), state.message
    assert tree(data_dir) == _expected(seaweedfs, bucket, small)
    assert faultproxy.count("GET", match=key) == BOTO_REQUESTS + 2
    runs = _task_runs(state.state_details.flow_run_id, 10)
    downloads = [t.run_count for t in runs if t.name.startswith("download-and-verify")]
    assert sorted(downloads) == [1, 1, 2]


@pytest.mark.parametrize("fault,error", [(Fault.FORBIDDEN, AccessDeniedError), (Fault.NOT_FOUND, ObjectNotFoundError)])
def test_permanent_errors_fail_on_the_first_attempt_naming_the_key(seaweedfs, faultproxy, through_proxy,
                                                                   tmp_path, prefect_api, fault, error):
    bucket, small, _ = through_proxy
    key = small.hnsw_snapshots[1].content_key
    faultproxy.always(fault, match=key, methods=("GET",))  # the size lookup (HEAD) passes
    data_dir = tmp_path / "data"
    (data_dir / "tenant_2").mkdir(parents=True)
    (data_dir / "tenant_2" / "data.sqlite").write_bytes(b"keep me")
    state = asyncio.run(restore_snapshot(
        backend=f"s3://{bucket}", tenant_id=1, snapshot="small", data_dir=str(data_dir),
        mode=RestoreMode.WIPE_AND_RESTORE, destination={"embedding_model": "minilm"}, return_state=True))
    assert state.is_failed()
    with pytest.raises(error, match=key):
        state.result()
    assert faultproxy.count("GET", match=key) == 1  # neither botocore nor the task retried
    runs = _task_runs(state.state_details.flow_run_id, 7)  # up to the downloads
    failed = [t for t in runs if t.state.is_failed()]
    assert [(t.name.rsplit("-", 1)[0], t.run_count) for t in failed] == [("download-and-verify", 1)]
    assert tree(data_dir) == {"tenant_2/data.sqlite": b"keep me"}


def test_a_missing_object_fails_before_anything_is_written(seaweedfs, faultproxy, through_proxy, tmp_path):
    bucket, small, _ = through_proxy
    key = small.sqlite_checkpoint_key
    faultproxy.always(Fault.NOT_FOUND, match=key)
    backend = open_backend(f"s3://{bucket}")
    with pytest.raises(ObjectNotFoundError, match=key):
        execute(backend, _plan(backend, "small"), tmp_path / "data", RestoreMode.NEW_CLUSTER)
    assert faultproxy.count(match=key) == 1  # the size lookup, before the data dir is touched
    assert not (tmp_path / "data").exists()


def _task_runs(flow_run_id, count: int):
    """The run's task runs, once all ``count`` of them are readable in a final state: the server
    records them from the events the run sent, after the run has returned."""

    async def read():
        async with get_client() as client:
            return await client.read_task_runs(
                task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])))

    def recorded():
        runs = asyncio.run(read())
        # A task run can be readable before its first state is (the server records both from events).
        return runs if len(runs) >= count and all(t.state is not None and t.state.is_final() for t in runs) else None

    return wait_until(recorded, 60, f"the {count} task runs of flow run {flow_run_id}")
