"""Listing at scale: manifest versions, the manifest cache, and that the cache never changes what
a listing finds. Every test runs on a local folder and on a real SeaweedFS S3 server."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from backends import LocalBackend, ManifestCache, list_snapshots, open_backend, put_manifest
from backends.errors import TransientBackendError
from backends.manifest import SnapshotManifest
from backends.manifest_cache import CACHE_FILE, default_cache_dir
from backends.s3 import S3Backend
from tasks.fetch import fetch_manifest

REPO = Path(__file__).resolve().parent.parent
#: Files changed less than this before a listing get no version; the tests wait it out.
TEST_RACY_WINDOW = 0.05


@pytest.fixture
def s3_env(seaweedfs, monkeypatch):
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    return seaweedfs


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    """A fresh, empty backend of each kind (a local folder with a short racy window)."""
    if request.param == "local":
        return LocalBackend(tmp_path / "backend", racy_window_seconds=TEST_RACY_WINDOW)
    seaweed = request.getfixturevalue("s3_env")
    bucket = seaweed.create_bucket(f"listing-{uuid.uuid4().hex[:12]}")
    return open_backend(f"s3://{bucket}/fleet")


@pytest.fixture
def cache(tmp_path):
    return ManifestCache(tmp_path / "cache" / CACHE_FILE)


class Counting:
    """A real backend that counts the manifests read through it."""

    def __init__(self, inner):
        self.inner = inner
        self.url, self.identity = inner.url, inner.identity
        self.reads: list[str] = []

    def read_manifest_bytes(self, snapshot_id):
        self.reads.append(snapshot_id)
        return self.inner.read_manifest_bytes(snapshot_id)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def take(self) -> list[str]:
        reads, self.reads = sorted(self.reads), []
        return reads


def manifest(sid: str, tenant: int, created: int, label: str | None = None) -> SnapshotManifest:
    return SnapshotManifest.model_validate({
        "manifest_version": 1, "tenant_id": tenant, "snapshot_id": sid, "created_at_unix_micros": created,
        "wire_version": {"major": 1, "minor": 0}, "table_schema_versions": {"memory_commit_log": 1},
        "oplog_watermark": 100, "oplog_floor": 1, "forget_floor": None,
        "sqlite_checkpoint_key": f"{sid}/sqlite.db", "sqlite_checkpoint_checksum": None,
        "hnsw_snapshots": [], "encryption": None, "label": label,
    })


def settle(store) -> None:
    """Wait until every file written so far is older than the local racy window."""
    if isinstance(store, LocalBackend):
        time.sleep(TEST_RACY_WINDOW * 2)


def delete_manifest(store, sid: str) -> None:
    if isinstance(store, LocalBackend):
        os.unlink(store.root / sid / "manifest.json")
    else:
        prefix = f"{store.prefix}/" if store.prefix else ""
        store.client.delete_object(Bucket=store.bucket, Key=f"{prefix}{sid}/manifest.json")


def fleet(store) -> None:
    """Three tenants, with a tie, a manifest in the wrong folder, a broken one, an unfinished one."""
    for tenant in (1, 2, 3):
        for n in range(4):
            put_manifest(store, manifest(f"t{tenant}-s{n}", tenant, 1_000 * (n + 1) + tenant))
    put_manifest(store, manifest("t3-tie", 3, 4_003))  # the same microsecond as t3-s3: the greater id wins
    store.put_object("misplaced/manifest.json", manifest("t1-s0", 1, 9_999).to_json())
    store.put_object("broken/manifest.json", b"{ not json")
    store.put_object("unfinished/sqlite.db", b"no manifest yet")
    settle(store)


def summary(listing) -> dict:
    """Everything a listing says, manifests included."""
    return {
        "entries": [(e.snapshot_id, e.tenant_id, e.created_at_unix_micros) for e in listing.entries],
        "unreadable": sorted(listing.unreadable),
        "latest": {t: m.snapshot_id for t, m in listing.latest_by_tenant().items()},
        "snapshots": [m.model_dump() for m in listing.snapshots],
    }


# -- the backends' listing ---------------------------------------------------------------------


def test_list_manifests_names_finished_snapshots_with_a_version_that_moves_on_rewrite(store):
    fleet(store)
    refs = store.list_manifests()
    assert [r.snapshot_id for r in refs] == store.list_snapshot_ids()
    assert {r.snapshot_id for r in refs} >= {"t1-s0", "misplaced", "broken"} and "unfinished" not in {
        r.snapshot_id for r in refs}
    assert all(r.version for r in refs)
    before = {r.snapshot_id: r.version for r in refs}
    # Rewritten in place with the same size: only the bytes differ.
    put_manifest(store, manifest("t1-s0", 1, 1_001, label="aaaa"))
    settle(store)
    put_manifest(store, manifest("t1-s0", 1, 1_001, label="bbbb"))
    settle(store)
    after = {r.snapshot_id: r.version for r in store.list_manifests()}
    assert after["t1-s0"] != before["t1-s0"]
    assert {k: v for k, v in after.items() if k != "t1-s0"} == {k: v for k, v in before.items() if k != "t1-s0"}


def test_a_local_manifest_changed_just_now_has_no_version_and_is_never_cached(tmp_path, cache):
    backend = Counting(LocalBackend(tmp_path / "backend"))  # the real 2 s window
    put_manifest(backend, manifest("fresh", 1, 1))
    assert [(r.snapshot_id, r.version) for r in backend.list_manifests()] == [("fresh", None)]
    list_snapshots(backend, cache=cache)
    list_snapshots(backend, cache=cache)
    assert backend.take() == ["fresh", "fresh"]
    assert cache.summaries(backend.identity) == {}


# -- the cache -----------------------------------------------------------------------------------


def test_a_warm_listing_reads_no_manifest_and_finds_the_same(store, cache):
    fleet(store)
    backend = Counting(store)
    uncached = summary(list_snapshots(backend, cache=False))
    assert len(backend.take()) == 15
    first = summary(list_snapshots(backend, cache=cache))
    assert len(backend.take()) == 15
    warm = list_snapshots(backend, cache=cache)
    assert backend.take() == ["broken", "misplaced"]  # unreadable ones are never cached
    assert warm.tenant_ids() == [1, 2, 3]
    assert [e.snapshot_id for e in warm.entries_for(3)] == ["t3-s0", "t3-s1", "t3-s2", "t3-s3", "t3-tie"]
    assert warm.latest_entry(3).snapshot_id == "t3-tie" and backend.take() == []
    assert summary(warm) == first == uncached
    assert uncached["latest"] == {1: "t1-s3", 2: "t2-s3", 3: "t3-tie"}
    assert uncached["unreadable"] == ["broken", "misplaced"]
    assert backend.take() == []  # producing every manifest of a warm listing read none either


def test_one_tenant_listed_through_the_cache_is_the_same(store, cache):
    fleet(store)
    list_snapshots(store, cache=cache)
    for tenant in (1, 2, 3, 4):
        cached, uncached = list_snapshots(store, tenant, cache=cache), list_snapshots(store, tenant, cache=False)
        assert summary(cached) == summary(uncached)
        assert [m.snapshot_id for m in cached.for_tenant(tenant)] == [m.snapshot_id for m in uncached.snapshots]


def test_a_manifest_rewritten_in_place_is_read_again(store, cache):
    fleet(store)
    backend = Counting(store)
    list_snapshots(backend, cache=cache)
    backend.take()
    # t1-s0, the oldest of tenant 1, is rewritten as its newest.
    put_manifest(store, manifest("t1-s0", 1, 50_000))
    settle(store)
    listing = list_snapshots(backend, cache=cache)
    assert backend.take() == ["broken", "misplaced", "t1-s0"]
    assert listing.latest(1).snapshot_id == "t1-s0"
    assert summary(listing) == summary(list_snapshots(store, cache=False))
    list_snapshots(backend, cache=cache)
    assert backend.take() == ["broken", "misplaced"]


def test_a_deleted_snapshot_disappears_from_listing_and_cache(store, cache):
    fleet(store)
    list_snapshots(store, cache=cache)
    delete_manifest(store, "t2-s3")
    listing = list_snapshots(store, cache=cache)
    assert "t2-s3" not in [e.snapshot_id for e in listing.entries]
    assert listing.latest(2).snapshot_id == "t2-s2"
    assert "t2-s3" not in cache.summaries(store.identity)
    assert summary(listing) == summary(list_snapshots(store, cache=False))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zero bytes"])
def test_a_damaged_cache_file_is_rebuilt_never_trusted(tmp_path, damage):
    backend = Counting(LocalBackend(tmp_path / "backend", racy_window_seconds=TEST_RACY_WINDOW))
    fleet(backend.inner)
    path = tmp_path / "cache" / CACHE_FILE
    expected = summary(list_snapshots(backend, cache=ManifestCache(path)))
    if damage == "garbage":
        path.write_bytes(os.urandom(64 * 1024))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"")
    backend.take()
    cache = ManifestCache(path)  # a new process, as it were
    assert summary(list_snapshots(backend, cache=cache)) == expected
    assert len(backend.take()) == 15
    assert summary(list_snapshots(backend, cache=cache)) == expected
    assert backend.take() == ["broken", "misplaced"]


@pytest.mark.parametrize("change", [
    "PRAGMA user_version = 99",
    "PRAGMA application_id = 1",
    "UPDATE meta SET value = 'another parser' WHERE key = 'parser'",
])
def test_a_cache_of_another_version_is_rebuilt(tmp_path, change):
    backend = Counting(LocalBackend(tmp_path / "backend", racy_window_seconds=TEST_RACY_WINDOW))
    fleet(backend.inner)
    path = tmp_path / "cache" / CACHE_FILE
    expected = summary(list_snapshots(backend, cache=ManifestCache(path)))
    with sqlite3.connect(path) as db:
        db.execute(change)
    db.close()
    backend.take()
    assert summary(list_snapshots(backend, cache=ManifestCache(path))) == expected
    assert len(backend.take()) == 15
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    db.close()


def test_damaged_rows_are_read_again_not_believed(tmp_path):
    backend = Counting(LocalBackend(tmp_path / "backend", racy_window_seconds=TEST_RACY_WINDOW))
    fleet(backend.inner)
    path = tmp_path / "cache" / CACHE_FILE
    expected = summary(list_snapshots(backend, cache=ManifestCache(path)))
    with sqlite3.connect(path) as db:
        # t1-s0 moved to tenant 2 as its newest, without its checksum: a flipped bit, as it were.
        db.execute("UPDATE summaries SET tenant_id = '2', created_at_unix_micros = '99999' WHERE snapshot_id = 't1-s0'")
        # t1-s3's bytes replaced by another manifest's, with a checksum that fits them.
        other = manifest("t1-s3", 1, 77_777).to_json()
        import zlib

        db.execute("UPDATE bodies SET raw = ?, raw_check = ? WHERE snapshot_id = 't1-s3'", (other, zlib.crc32(other)))
    db.close()
    backend.take()
    listing = list_snapshots(backend, cache=ManifestCache(path))
    assert backend.take() == ["broken", "misplaced", "t1-s0"]
    assert listing.latest(1).created_at_unix_micros == 4_001  # its bytes disagree with its row: read again
    assert backend.take() == ["t1-s3"]
    assert summary(listing) == expected


def test_cache_rows_gone_after_listing_are_read_from_the_backend(store, cache):
    fleet(store)
    list_snapshots(store, cache=cache)
    listing = list_snapshots(store, cache=cache)
    cache.close()
    Path(cache.path).unlink()  # another process dropped the file between listing and use
    assert listing.latest(1).snapshot_id == "t1-s3"
    # ... and a manifest changed meanwhile is not handed out as the one listed.
    put_manifest(store, manifest("t2-s3", 2, 1))
    with pytest.raises(TransientBackendError, match="changed while it was being listed"):
        listing.latest(2)


def test_an_unusable_cache_never_fails_a_listing(tmp_path, caplog):
    backend = LocalBackend(tmp_path / "backend", racy_window_seconds=TEST_RACY_WINDOW)
    fleet(backend)
    (tmp_path / "not-a-dir").write_text("a file where the cache dir should be")
    cache = ManifestCache(tmp_path / "not-a-dir" / CACHE_FILE)
    assert summary(list_snapshots(backend, cache=cache)) == summary(list_snapshots(backend, cache=False))
    assert "without the manifest cache" in caplog.text


def test_a_listing_pickles_with_its_manifests(store, cache):
    fleet(store)
    list_snapshots(store, cache=cache)
    listing = pickle.loads(pickle.dumps(list_snapshots(store, cache=cache)))
    assert summary(listing) == summary(list_snapshots(store, cache=False))


# -- where the cache lives, and who uses it ----------------------------------------------------


def test_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("MEMRESTORE_CACHE_DIR", raising=False)
    monkeypatch.delenv("MEMRESTORE_NO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "memrestore"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "memrestore"
    monkeypatch.setenv("MEMRESTORE_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.setenv("MEMRESTORE_NO_CACHE", "1")
    assert default_cache_dir() is None


def test_fetch_latest_goes_through_the_default_cache(store, monkeypatch, tmp_path):
    monkeypatch.setenv("MEMRESTORE_CACHE_DIR", str(tmp_path / "default-cache"))
    fleet(store)
    backend = Counting(store)
    assert fetch_manifest(backend, 2, "latest").snapshot_id == "t2-s3"
    assert len(backend.take()) == 15
    assert fetch_manifest(backend, 3, "latest").snapshot_id == "t3-tie"
    assert backend.take() == ["broken", "misplaced"]
    assert (tmp_path / "default-cache" / CACHE_FILE).is_file()
    monkeypatch.setenv("MEMRESTORE_NO_CACHE", "1")
    assert fetch_manifest(backend, 3, "latest").snapshot_id == "t3-tie"
    assert len(backend.take()) == 15


def test_the_snapshots_command_fills_and_uses_the_cache(tmp_path):
    backend = LocalBackend(tmp_path / "backend", racy_window_seconds=0)
    fleet(backend)
    time.sleep(2.1)  # the CLI opens the folder with the real racy window
    env = {**os.environ, "MEMRESTORE_CACHE_DIR": str(tmp_path / "cli-cache")}
    command = [str(Path(sys.executable).parent / "memrestore"), "snapshots", "--backend", backend.url, "--json"]
    runs = [subprocess.run(command, env=env, capture_output=True, text=True, timeout=120) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    rows = json.loads(runs[0].stdout)["snapshots"]
    assert [r["snapshot_id"] for r in rows if r["tenant_id"] == 3] == ["t3-s0", "t3-s1", "t3-s2", "t3-s3", "t3-tie"]
    cached = ManifestCache(tmp_path / "cli-cache" / CACHE_FILE).summaries(backend.identity)
    assert len(cached) == 13


def test_s3_versions_name_the_endpoint_too(s3_env):
    bucket = s3_env.create_bucket(f"identity-{uuid.uuid4().hex[:8]}")
    backend = open_backend(f"s3://{bucket}/p")
    assert isinstance(backend, S3Backend)
    assert backend.identity == f"s3://{bucket}/p at {s3_env.endpoint_url}"


# -- the benchmark still runs ------------------------------------------------------------------------


def test_listing_benchmark_smoke(s3_env, tmp_path):
    """``python -m benchmarks.listing`` on tiny backends: every mode runs, picks the generator's
    latest for every tenant, and the report replaces only its own section of BENCHMARKS.md."""
    from benchmarks.listing import END, START, main
    from benchmarks.report import NOTES_MARKER

    output = tmp_path / "BENCHMARKS.md"
    others = f"# Benchmarks: issue 5\n\n| their table |\n\n{NOTES_MARKER}\nTheir notes.\n"
    output.write_text(others)
    args = ["--workdir", str(tmp_path / "work"), "--output", str(output), "--tenants", "4", "--snapshots", "2",
            "--s3-tenants", "2", "--rounds", "1", "--sweep", "none", "--s3-endpoint-url", s3_env.endpoint_url]
    assert main(args) == 0
    # Writing the section again replaces it, and nothing else.
    assert main(["--rerender", str(tmp_path / "work" / "results.json"), "--output", str(output)]) == 0
    text = output.read_text()
    assert text.startswith(others) and text.count(START) == text.count(END) == 1
    section = text.split(START)[1]
    assert "local folder, 4 tenants x 2 = 8 snapshots" in section and "SeaweedFS (S3), 2 tenants x 2" in section
    assert "| warm run: cache hit |" in section and "| 0 |" in section  # a warm run reads no manifest
