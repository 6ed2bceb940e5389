"""The on-call job "put tenant 1 back to its snapshot" in a data dir that serves many tenants
(issue 23, item 1): ``replace_tenant`` replaces that one tenant and leaves every other entry
byte-identical; the refusals of the service's modes point to it, never to wipe_and_restore; a
wipe_and_restore on a terminal lists what it will delete and asks; every outcome lists what was
deleted. (A kill -9 at every step of a replace, then --resume and abort: tests/test_crash.py.)"""

from __future__ import annotations

import asyncio
import json

import pytest

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.tasks.plan import RestoreMode
from tests.conftest import tree
from tests.layout import assert_restored_layout
from tests.procs import memrestore
from tests.terminal import memrestore_on_terminal

pytestmark = pytest.mark.usefixtures("prefect_api")

TENANT = 1
OLD_TENANT = {"tenant_1/data.sqlite": b"tenant 1 as it is now" * 100, "tenant_1/hnsw/minilm.bin": b"v" * 5000}
OTHERS = {
    "tenant_2/data.sqlite": b"tenant 2's database" * 1000,
    "tenant_2/hnsw/minilm.bin": b"2" * 70000,
    "tenant_30/data.sqlite": b"tenant 30's database",
    "service.conf": b"port = 7000\n",
}


def seed(data_dir, files):
    for rel, data in files.items():
        (data_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / rel).write_bytes(data)


def others(data_dir) -> dict[str, bytes]:
    return {rel: data for rel, data in tree(data_dir).items() if not rel.startswith("tenant_1/")}


@pytest.fixture
def shared(tmp_path):
    """A backend with tenant 1's snapshot, and a data dir shared by tenants 1, 2 and 30."""
    backend = LocalBackend(tmp_path / "backend")
    manifest = write_sample_snapshot(backend, tenant_id=TENANT, snapshot_id="yesterday")
    data_dir = tmp_path / "data"
    seed(data_dir, OLD_TENANT | OTHERS)
    return backend, manifest, data_dir


def restore_args(backend, data_dir, mode: str, *extra):
    return ("restore", "--backend", backend.url, "--tenant", TENANT, "--snapshot", "yesterday",
            "--data-dir", data_dir, "--mode", mode, "--embedding-model", "minilm", *extra)


def test_replace_tenant_replaces_one_tenant_and_leaves_every_other_entry_byte_identical(shared):
    backend, manifest, data_dir = shared
    before = others(data_dir)
    proc = memrestore(*restore_args(backend, data_dir, "replace_tenant", "--json"))
    assert proc.returncode == 0, proc.stderr
    assert others(data_dir) == before == OTHERS
    assert_restored_layout(data_dir, manifest)
    assert json.loads(proc.stdout)["removed"] == [{"name": "tenant_1", "bytes": sum(map(len, OLD_TENANT.values()))}]

    again = memrestore(*restore_args(backend, data_dir, "replace_tenant"))  # the human output says it too
    assert again.returncode == 0, again.stderr
    assert "deleted from the data dir: 1 entry," in again.stdout and "tenant_1 (" in again.stdout
    assert others(data_dir) == OTHERS


def test_the_service_modes_refusals_point_to_replace_tenant_never_to_wipe(shared):
    backend, _, data_dir = shared
    before = tree(data_dir)
    single = memrestore(*restore_args(backend, data_dir, "single_tenant"))
    new = memrestore(*restore_args(backend, data_dir, "new_cluster"))
    for proc in (single, new):
        assert proc.returncode == 1 and proc.stderr.startswith("error: "), proc.stderr
        assert "--mode replace_tenant" in proc.stderr and "wipe" not in proc.stderr, proc.stderr
    assert "tenant 1 already has data" in single.stderr
    assert tree(data_dir) == before

    (data_dir / "tenant_1" / "data.sqlite").unlink()
    (data_dir / "tenant_1" / "hnsw" / "minilm.bin").unlink()
    (data_dir / "tenant_1" / "hnsw").rmdir()
    (data_dir / "tenant_1").rmdir()
    no_tenant = memrestore(*restore_args(backend, data_dir, "new_cluster"))
    assert no_tenant.returncode == 1 and "--mode single_tenant" in no_tenant.stderr, no_tenant.stderr
    assert "wipe" not in no_tenant.stderr


def test_wipe_and_restore_on_a_terminal_lists_what_goes_and_asks(shared):
    backend, manifest, data_dir = shared
    before = tree(data_dir)
    question = r"Delete these 4 entries and restore tenant 1\? \[y/N\]"
    declined = memrestore_on_terminal(*restore_args(backend, data_dir, "wipe_and_restore"), answers=[(question, "n")])
    assert declined.returncode == 1, declined.text
    screen = declined.text
    for entry, tenant in (("tenant_1", "1"), ("tenant_2", "2"), ("tenant_30", "30"), ("service.conf", "-")):
        assert any(line.split()[:2] == [entry, tenant] for line in screen.splitlines()), screen
    assert "86.9 KiB" in screen  # tenant_2: 19,000 + 70,000 bytes, as a person reads it
    assert "--mode replace_tenant" in screen and "not confirmed: nothing in" in screen
    assert tree(data_dir) == before

    accepted = memrestore_on_terminal(*restore_args(backend, data_dir, "wipe_and_restore"), answers=[(question, "y")])
    assert accepted.returncode == 0, accepted.text
    assert "deleted from the data dir: 4 entries" in accepted.text
    assert sorted(p.name for p in data_dir.iterdir()) == ["tenant_1"]
    assert_restored_layout(data_dir, manifest)


def test_yes_skips_the_question_and_a_script_is_not_asked(shared, tmp_path):
    backend, manifest, data_dir = shared
    told = memrestore_on_terminal(*restore_args(backend, data_dir, "wipe_and_restore", "--yes"))
    assert told.returncode == 0 and "[y/N]" not in told.text, told.text
    assert sorted(p.name for p in data_dir.iterdir()) == ["tenant_1"]

    seed(data_dir, OTHERS)  # no terminal (a pipe, as from a script or a flow): choosing the mode is the yes
    piped = memrestore(*restore_args(backend, data_dir, "wipe_and_restore", "--json"))
    assert piped.returncode == 0, piped.stderr
    assert sorted(e["name"] for e in json.loads(piped.stdout)["removed"]) == [
        "service.conf", "tenant_1", "tenant_2", "tenant_30"]


def test_a_dry_run_names_what_a_wipe_would_delete_and_deletes_nothing(shared):
    backend, _, data_dir = shared
    before = tree(data_dir)
    proc = memrestore(*restore_args(backend, data_dir, "wipe_and_restore", "--dry-run"))
    assert proc.returncode == 0, proc.stderr
    assert "would delete from the data dir: 4 entries" in proc.stdout and "tenant_30 (" in proc.stdout
    assert tree(data_dir) == before


def test_the_flows_summary_artifact_lists_what_the_replace_deleted(shared):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from memrestore.flows.restore import restore_snapshot

    backend, manifest, data_dir = shared
    state = asyncio.run(restore_snapshot(
        backend=backend.url, tenant_id=TENANT, data_dir=str(data_dir), mode=RestoreMode.REPLACE_TENANT,
        snapshot="yesterday", destination={"embedding_model": "minilm"}, return_state=True))
    assert state.is_completed(), state.message
    assert others(data_dir) == OTHERS

    async def summaries():
        async with get_client() as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        return [a.data for a in artifacts if a.type == "markdown"]

    (summary,) = asyncio.run(summaries())
    assert "deleted from the data dir: 1 entry," in summary and "`tenant_1`" in summary
