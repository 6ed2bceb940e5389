"""The `memrestore` command line, run as an operator runs it: a subprocess, real backends."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from memrestore.backends import open_backend
from memrestore.backends.sample import write_sample_snapshot
from memrestore.tasks.layout import MARKER_NAME
from tests.conftest import tree
from tests.layout import assert_restored_layout
from tests.procs import memrestore

pytestmark = pytest.mark.usefixtures("prefect_api")


def assert_one_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert proc.stderr.startswith("error: ")
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_restore_json_from_a_local_folder(backend, snapshot, data_dir):
    proc = memrestore("restore", "--backend", backend.url, "--tenant", 1, "--snapshot", "latest",
                      "--data-dir", data_dir, "--mode", "new_cluster", "--embedding-model", "minilm", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["tenant_id"], out["snapshot_id"], out["mode"]) == (1, "snap-1", "new_cluster")
    assert out["total_bytes"] == sum(i["bytes"] for i in out["items"]) and out["seconds"] > 0
    for item in out["items"]:
        assert set(item) == {"kind", "content_key", "bytes", "destination", "checksum", "verified"}
        assert item["verified"] is True
        assert Path(item["destination"]).read_bytes() == (backend.root / item["content_key"]).read_bytes()
    assert not (data_dir / MARKER_NAME).exists()
    assert_restored_layout(data_dir, snapshot)


def test_restore_from_seaweedfs_through_the_cli(s3_env, tmp_path):
    seaweedfs = s3_env  # here and in the CLI it runs
    bucket = seaweedfs.create_bucket(f"cli-{uuid.uuid4().hex[:10]}")
    store = open_backend(f"s3://{bucket}/prod")
    write_sample_snapshot(store, tenant_id=4, snapshot_id="s3-old", created_at_unix_micros=1, hnsw_bytes=4 * 2**20)
    write_sample_snapshot(store, tenant_id=4, snapshot_id="s3-new", created_at_unix_micros=2, hnsw_bytes=20 * 2**20)
    env = seaweedfs.env()
    data_dir = tmp_path / "data"
    proc = memrestore("restore", "--backend", f"s3://{bucket}/prod", "--tenant", 4, "--snapshot", "latest",
                      "--data-dir", data_dir, "--mode", "new_cluster", "--embedding-model", "e5-base", "--json",
                      env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["snapshot_id"] == "s3-new" and all(i["verified"] for i in out["items"])
    client = seaweedfs.client()
    for item in out["items"]:
        body = client.get_object(Bucket=bucket, Key=f"prod/{item['content_key']}")["Body"].read()
        assert Path(item["destination"]).read_bytes() == body

    listed = memrestore("snapshots", "--backend", f"s3://{bucket}/prod", "--json", env=env)
    assert [s["snapshot_id"] for s in json.loads(listed.stdout)["snapshots"]] == ["s3-old", "s3-new"]
    verified = memrestore("verify", "--backend", f"s3://{bucket}/prod", "--snapshot", "s3-new", "--json", env=env)
    assert verified.returncode == 0 and json.loads(verified.stdout)["status"] == "verified"


def test_human_output_and_snapshots_listing(backend, data_dir):
    write_sample_snapshot(backend, tenant_id=2, snapshot_id="two-a", created_at_unix_micros=1_600_000_000_000_000)
    write_sample_snapshot(backend, tenant_id=3, snapshot_id="three-a", created_at_unix_micros=1_600_000_000_000_000)
    proc = memrestore("snapshots", "--backend", str(backend.root), "--tenant", 2)
    assert proc.returncode == 0
    assert "two-a" in proc.stdout and "three-a" not in proc.stdout and "2020-09-13T12:26:40" in proc.stdout
    proc = memrestore("restore", "--backend", backend.url, "--tenant", 2, "--snapshot", "two-a",
                      "--data-dir", data_dir, "--mode", "single_tenant", "--embedding-model", "minilm")
    assert proc.returncode == 0, proc.stderr
    assert "tenant 2, snapshot two-a (single_tenant): restored" in proc.stdout
    assert "hnsw:minilm" in proc.stdout and "verified" in proc.stdout


def test_refusals_are_one_clear_message_and_exit_1(backend, snapshot, data_dir):
    data_dir.mkdir()
    (data_dir / "tenant_7").mkdir()
    (data_dir / "tenant_7" / "data.sqlite").write_bytes(b"other tenant")
    before = tree(data_dir)
    common = ["--backend", backend.url, "--tenant", 1, "--data-dir", data_dir, "--embedding-model", "minilm"]
    assert_one_clean_error(memrestore("restore", *common, "--snapshot", "snap-1", "--mode", "new_cluster"),
                           "is not empty", "tenant_7", "--mode single_tenant")
    assert_one_clean_error(memrestore("restore", *common, "--snapshot", "nope", "--mode", "single_tenant"),
                           "snapshot 'nope' not found")
    assert_one_clean_error(memrestore("restore", *common, "--snapshot", "snap-1", "--mode", "single_tenant",
                                      "--tombstone-floor", 60), "forget_floor 50", "forgotten")
    assert_one_clean_error(memrestore("restore", *common, "--snapshot", "snap-1", "--mode", "single_tenant",
                                      "--wire-version", "2.0"), "wire version 1.0")
    (data_dir / MARKER_NAME).write_text("snap-0")
    assert_one_clean_error(memrestore("restore", *common, "--snapshot", "snap-1", "--mode", "wipe_and_restore"),
                           "restore is in progress", MARKER_NAME, "--resume", "abort")
    (data_dir / MARKER_NAME).unlink()
    assert tree(data_dir) == before


def test_checksum_failure_names_key_and_digests(backend, snapshot, data_dir):
    key = snapshot.sqlite_checkpoint_key
    backend.put_object(key, b"tampered")
    proc = memrestore("restore", "--backend", backend.url, "--tenant", 1, "--snapshot", "snap-1",
                      "--data-dir", data_dir, "--mode", "new_cluster", "--embedding-model", "minilm")
    assert_one_clean_error(proc, "checksum mismatch", key, snapshot.sqlite_checkpoint_checksum)
    assert tree(data_dir) == {}
    proc = memrestore("verify", "--backend", backend.url, "--snapshot", "snap-1")
    assert_one_clean_error(proc, "checksum mismatch", key)


def test_unverified_items_warn_and_require_checksums_refuses(backend, data_dir):
    write_sample_snapshot(backend, tenant_id=1, snapshot_id="nosum", checksums=False, models=(("m", 4),))
    args = ["restore", "--backend", backend.url, "--tenant", 1, "--snapshot", "nosum", "--data-dir", data_dir,
            "--mode", "new_cluster"]
    assert_one_clean_error(memrestore(*args, "--require-checksums"), "--require-checksums", "sqlite_checkpoint")
    proc = memrestore(*args, "--json")
    assert proc.returncode == 0
    assert "warning:" in proc.stderr and "unverified" in proc.stderr
    assert [i["verified"] for i in json.loads(proc.stdout)["items"]] == [False, False]


def test_dry_run_prints_the_plan_and_writes_nothing(backend, snapshot, data_dir):
    proc = memrestore("restore", "--backend", backend.url, "--tenant", 1, "--snapshot", "latest",
                      "--data-dir", data_dir, "--mode", "new_cluster", "--embedding-model", "minilm", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would restore" in proc.stdout and snapshot.sqlite_checkpoint_key in proc.stdout
    assert str(data_dir / "tenant_1" / "hnsw" / "minilm.bin") in proc.stdout
    assert "KiB" in proc.stdout
    assert not data_dir.exists()


@pytest.mark.parametrize("args", [
    ["restore", "--backend", "x", "--tenant", "1", "--snapshot", "latest", "--data-dir", "d", "--mode", "bogus"],
    ["restore", "--backend", "x", "--tenant", "-1", "--snapshot", "latest", "--data-dir", "d", "--mode", "new_cluster"],
    ["restore", "--backend", "x", "--tenant", "1", "--snapshot", "latest", "--data-dir", "d", "--mode", "new_cluster",
     "--wire-version", "one"],
    ["restore", "--tenant", "1"],
    ["no-such-command"],
])
def test_usage_errors_exit_2(args):
    proc = memrestore(*args)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
