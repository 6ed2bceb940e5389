"""The `memrestore` command line, run as an operator runs it: a subprocess, real backends."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from memrestore.backends import open_backend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.tasks.marker import MARKER_NAME
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
    # No --streams: the pool found its count; --json says what it used, within the default ceiling.
    assert 1 <= out["streams_final"] <= out["streams_peak"] <= 48 and out["mb_per_second"] > 0
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


# --- issue 23: where operators are ------------------------------------------------------------

HOUR = 3600 * 10**6


def usage_error(proc: subprocess.CompletedProcess) -> str:
    """A usage error's message (exit 2) as one line, out of the box the terminal UI draws round it."""
    assert proc.returncode == 2, proc.stderr
    return " ".join(proc.stderr.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def on_disk_size(backend, manifest) -> int:
    keys = [manifest.sqlite_checkpoint_key, *(e.content_key for e in manifest.hnsw_snapshots)]
    return sum((backend.root / key).stat().st_size for key in keys)


def test_a_snapshot_of_several_models_restores_every_index_with_no_model_named(backend, snapshot, data_dir):
    assert snapshot.embedding_models == ["minilm", "e5-base"]
    proc = memrestore("restore", "--backend", backend.url, "--tenant", 1, "--snapshot", "latest",
                      "--data-dir", data_dir, "--mode", "new_cluster", "--json")
    assert proc.returncode == 0, proc.stderr
    restored = {Path(i["destination"]).relative_to(data_dir).as_posix(): i for i in json.loads(proc.stdout)["items"]}
    assert sorted(restored) == ["tenant_1/data.sqlite", "tenant_1/hnsw/e5-base.bin", "tenant_1/hnsw/minilm.bin"]
    for item in restored.values():
        assert (data_dir / item["destination"]).read_bytes() == (backend.root / item["content_key"]).read_bytes()
    # A model that IS named must be there.
    other = data_dir.parent / "other"
    assert_one_clean_error(
        memrestore("restore", "--backend", backend.url, "--tenant", 1, "--snapshot", "latest", "--data-dir", other,
                   "--mode", "new_cluster", "--embedding-model", "bert"),
        "no HNSW index for embedding model 'bert'", "'minilm', 'e5-base'")
    assert not other.exists()


def test_verify_latest_takes_a_tenant_as_its_hint_says(backend, snapshot):
    write_sample_snapshot(backend, tenant_id=2, snapshot_id="two-a", created_at_unix_micros=1_800_000_000_000_000)
    proc = memrestore("verify", "--backend", backend.url, "--snapshot", "latest", "--tenant", 2, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["status"], out["snapshot_id"], out["tenant_id"]) == ("verified", "two-a", 2)
    assert all(i["verified"] for i in out["items"])
    assert "'latest' is a tenant's newest snapshot: pass --tenant N too" in usage_error(
        memrestore("verify", "--backend", backend.url, "--snapshot", "latest"))
    assert_one_clean_error(memrestore("verify", "--backend", backend.url, "--snapshot", "snap-1", "--tenant", 2),
                           "belongs to tenant 1, not tenant 2", f"--backend {backend.url} --tenant 2")
    assert_one_clean_error(memrestore("verify", "--backend", backend.url, "--snapshot", "latest", "--tenant", 5),
                           "no finished snapshot of tenant 5", "tenants 1, 2")


def test_refusals_name_what_there_is_and_the_backend_given(backend, snapshot, data_dir):
    write_sample_snapshot(backend, tenant_id=2, snapshot_id="snap-2", created_at_unix_micros=1_800_000_000_000_000)
    common = ["restore", "--backend", str(backend.root), "--data-dir", data_dir, "--mode", "new_cluster"]
    typo = memrestore(*common, "--tenant", 1, "--snapshot", "snap-l")
    assert_one_clean_error(typo, "snapshot 'snap-l' not found", "Did you mean 'snap-1'?",
                           f"`memrestore snapshots --backend {backend.url} --tenant 1`")
    assert "snap-2" not in typo.stderr  # tenant 2's: not a candidate for tenant 1
    assert "--backend URL" not in typo.stderr
    unknown = memrestore(*common, "--tenant", 9, "--snapshot", "latest")
    assert_one_clean_error(unknown, f"backend {backend.url} holds no finished snapshot of tenant 9",
                           "it holds snapshots of tenants 1, 2", f"`memrestore snapshots --backend {backend.url}`")
    assert not data_dir.exists()


def test_snapshots_show_size_age_and_each_tenants_latest(backend):
    now = int(__import__("time").time() * 1e6)
    older = write_sample_snapshot(backend, tenant_id=1, snapshot_id="one-older", created_at_unix_micros=now - 3 * HOUR)
    newer = write_sample_snapshot(backend, tenant_id=1, snapshot_id="one-newer", created_at_unix_micros=now - 2 * HOUR,
                                  hnsw_bytes=1024 * 1024)
    for sid in ("two-tie-a", "two-tie-b"):  # the same microsecond: the greater id is the latest
        write_sample_snapshot(backend, tenant_id=2, snapshot_id=sid, created_at_unix_micros=now - HOUR)
    broken = write_sample_snapshot(backend, tenant_id=2, snapshot_id="two-broken", created_at_unix_micros=now - 5 * HOUR)
    (backend.root / broken.hnsw_snapshots[1].content_key).unlink()

    proc = memrestore("snapshots", "--backend", backend.url, "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    rows = {r["snapshot_id"]: r for r in listed["snapshots"]}
    assert listed["tenant_ids"] == [1, 2] and listed["as_of"] is None
    assert {sid for sid, r in rows.items() if r["latest"]} == {"one-newer", "two-tie-b"}
    assert rows["one-older"]["size_bytes"] == on_disk_size(backend, older)
    assert rows["one-newer"]["size_bytes"] == on_disk_size(backend, newer) > 2 * 1024 * 1024
    assert rows["two-broken"]["size_bytes"] is None
    # Ages from created_at_unix_micros (a loaded machine may take minutes to get here).
    assert 3 * 3600 <= rows["one-older"]["age_seconds"] < 3 * 3600 + 600
    assert 2 * 3600 <= rows["one-newer"]["age_seconds"] < 2 * 3600 + 600

    human = memrestore("snapshots", "--backend", backend.url)
    assert human.returncode == 0, human.stderr
    header, *lines = human.stdout.splitlines()
    assert header.split()[:5] == ["tenant", "snapshot", "created", "(UTC)", "age"]
    line = {ln.split()[1]: ln for ln in lines}
    assert "<- latest" in line["one-newer"] and "<- latest" in line["two-tie-b"]
    assert "<- latest" not in line["one-older"] + line["two-tie-a"] + line["two-broken"]
    assert "2.0 h" in line["one-newer"] and "MiB" in line["one-newer"] and "KiB" in line["one-older"]
    assert "MISSING" in line["two-broken"] and "MISSING" in human.stderr


def test_snapshots_of_a_whole_fleet_are_listed_without_sizes(backend):
    from memrestore.backends import put_manifest
    from memrestore.flows.cli.restore import SIZE_LOOKUP_LIMIT
    from tests.manifests import manifest_object

    for n in range(SIZE_LOOKUP_LIMIT + 1):  # manifests alone: a size lookup would find no object
        sid = f"s{n:04d}"
        put_manifest(backend, manifest_object(tenant_id=n % 2, snapshot_id=sid, created_at_unix_micros=n + 1,
                                              sqlite_checkpoint_key=f"{sid}/sqlite.db", hnsw_snapshots=[]))
    every = memrestore("snapshots", "--backend", backend.url)
    assert every.returncode == 0, every.stderr
    assert f"sizes not looked up for {SIZE_LOOKUP_LIMIT + 1:,} snapshots" in every.stderr and "--tenant N" in every.stderr
    assert "MISSING" not in every.stdout + every.stderr and len(every.stdout.splitlines()) == SIZE_LOOKUP_LIMIT + 2
    one = memrestore("snapshots", "--backend", backend.url, "--tenant", 1, "--json")
    assert one.returncode == 0 and "not looked up" not in one.stderr
    rows = json.loads(one.stdout)["snapshots"]
    assert len(rows) == (SIZE_LOOKUP_LIMIT + 1) // 2 and all(r["size_bytes"] is None for r in rows)


def test_restore_and_list_as_of_a_time(backend, tmp_path):
    def at(hhmm: str) -> int:
        import datetime

        return int(datetime.datetime.fromisoformat(f"2026-12-07T{hhmm}+00:00").timestamp() * 10**6)

    for sid, when in (("morning", "09:00"), ("noon", "12:00"), ("evening", "18:00")):
        write_sample_snapshot(backend, tenant_id=1, snapshot_id=sid, created_at_unix_micros=at(when))
    write_sample_snapshot(backend, tenant_id=2, snapshot_id="other", created_at_unix_micros=at("13:00"))

    def restore(*args, into: str = "d"):
        return memrestore("restore", "--backend", backend.url, "--tenant", 1, "--data-dir", tmp_path / into,
                          "--mode", "new_cluster", "--json", *args)

    zoneless = restore("--as-of", "2026-12-07T14:00")
    assert zoneless.returncode == 0, zoneless.stderr
    assert json.loads(zoneless.stdout)["snapshot_id"] == "noon"
    assert ("as of 2026-12-07T14:00:00Z ('2026-12-07T14:00' read as UTC): snapshot noon was tenant 1's newest "
            "created at or before it") in zoneless.stderr
    # 14:00 at +05:00 is 09:00 UTC: the snapshot created at that very instant is taken.
    offset = restore("--snapshot", "latest", "--as-of", "2026-12-07T14:00+05:00", into="e")
    assert offset.returncode == 0, offset.stderr
    assert json.loads(offset.stdout)["snapshot_id"] == "morning"
    assert "as of 2026-12-07T09:00:00Z" in offset.stderr

    before_all = restore("--as-of", "2026-12-07T08:00Z", into="f")
    assert_one_clean_error(before_all, "tenant 1 has no finished snapshot created at or before 2026-12-07T08:00:00Z",
                           "its oldest are morning, created 2026-12-07T09:00:00Z (1.0 h after it); noon",
                           f"--backend {backend.url} --tenant 1")
    assert "both a snapshot id ('noon') and --as-of (2026-12-07T14:00Z) were given" in usage_error(
        restore("--snapshot", "noon", "--as-of", "2026-12-07T14:00Z", into="g"))
    assert "'teatime' is not an ISO 8601 time; write e.g. 2026-12-07T14:00:00Z" in usage_error(
        restore("--as-of", "teatime", into="g"))
    assert "pass --snapshot ID (or latest), or --as-of TIME" in usage_error(restore(into="g"))
    assert not any((tmp_path / d).exists() for d in "fg")

    listed = memrestore("snapshots", "--backend", backend.url, "--as-of", "2026-12-07T12:30Z", "--json")
    assert listed.returncode == 0, listed.stderr
    out = json.loads(listed.stdout)
    assert out["as_of"] == "2026-12-07T12:30:00Z"
    assert [(r["snapshot_id"], r["latest"]) for r in out["snapshots"]] == [("morning", False), ("noon", True)]
    human = memrestore("snapshots", "--backend", backend.url, "--tenant", 1, "--as-of", "2026-12-07T08:00Z")
    assert human.returncode == 0 and human.stdout == ""
    assert "its oldest are morning" in human.stderr


def test_demo_restores_with_the_forms_defaults_and_its_next_steps_work(tmp_path, prefect_api):
    import re
    import shlex
    from uuid import UUID

    from prefect.client.orchestration import get_client

    proc = memrestore("demo", "--workdir", tmp_path / "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "tenant 1, snapshot t1-newer (new_cluster): restored" in proc.stdout
    assert "hnsw:minilm" in proc.stdout and "hnsw:e5-base" in proc.stdout  # no model named: every index
    ui = prefect_api.removesuffix("/api")
    link = re.search(rf"this restore in the Prefect UI: {re.escape(ui)}/runs/flow-run/([0-9a-f-]{{36}})\n", proc.stdout)
    assert link, proc.stdout
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(link.group(1)))
    assert run.name == "tenant-1-t1-newer-new_cluster" and run.state.is_completed()  # renamed once resolved

    steps = proc.stdout.split("try next:\n", 1)[1].replace("\\\n", " ")
    commands = [shlex.split(line) for line in steps.splitlines() if line.strip().startswith("memrestore ")]
    assert [c[1] for c in commands] == ["snapshots", "restore", "verify", "server"]
    for command in commands[:3]:
        done = memrestore(*command[1:], cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        if command[1] == "restore":
            assert "tenant 1, snapshot t1-older (new_cluster): restored" in done.stdout  # as it was, between the two
        if command[1] == "snapshots":
            assert "<- latest" in done.stdout and "t2-only" in done.stdout
