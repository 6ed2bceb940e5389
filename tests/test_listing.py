"""Listing at scale: manifest versions, the manifest cache, and that the cache never changes what
a listing finds. Every test runs on a local folder and on a real SeaweedFS S3 server."""

from __future__ import annotations

import bisect
import concurrent.futures
import json
import os
import random
import threading
import pickle
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from memrestore.backends import LocalBackend, ManifestCache, key_ranges, list_snapshots, open_backend, put_manifest
from memrestore.backends.errors import TransientBackendError
from memrestore.backends.manifest import SnapshotManifest
from memrestore.backends.manifest_cache import CACHE_FILE, default_cache_dir
from memrestore.backends.s3 import S3Backend
from memrestore.backends.errors import InstantSpellingError
from memrestore.backends.listing import format_instant, parse_instant
from memrestore.tasks.errors import SnapshotChoiceError, SnapshotNotFoundError
from memrestore.tasks.choose import fetch_manifest
from tests.manifests import manifest_object

REPO = Path(__file__).resolve().parent.parent
#: Files changed less than this before a listing get no version; the tests wait it out.
TEST_RACY_WINDOW = 0.05


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
    return manifest_object(tenant_id=tenant, snapshot_id=sid, created_at_unix_micros=created, forget_floor=None,
                           sqlite_checkpoint_key=f"{sid}/sqlite.db", sqlite_checkpoint_checksum=None,
                           hnsw_snapshots=[], encryption=None, label=label)


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
    assert [e.snapshot_id for e in warm.entries if e.tenant_id == 3] == ["t3-s0", "t3-s1", "t3-s2", "t3-s3", "t3-tie"]
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
    first, second = (json.loads(r.stdout) for r in runs)
    for row in first["snapshots"] + second["snapshots"]:
        assert row.pop("age_seconds") > 0  # the one field that moves between two runs
    assert first == second
    rows = first["snapshots"]
    assert [r["snapshot_id"] for r in rows if r["tenant_id"] == 3] == ["t3-s0", "t3-s1", "t3-s2", "t3-s3", "t3-tie"]
    cached = ManifestCache(tmp_path / "cli-cache" / CACHE_FILE).summaries(backend.identity)
    assert len(cached) == 13


def test_latest_as_of_is_the_newest_created_at_or_before_the_time(tmp_path):
    """Ties and order as for latest: created_at_unix_micros, the greater id on a tie; an instant
    equal to a snapshot's creation takes it; object mtimes play no part."""
    store = LocalBackend(tmp_path / "backend", racy_window_seconds=TEST_RACY_WINDOW)
    fleet(store)
    # The oldest manifest of tenant 3 touched last: a listing by mtime would call it the newest.
    os.utime(store.root / "t3-s0" / "manifest.json", (time.time() + 3600, time.time() + 3600))
    settle(store)
    listing = list_snapshots(store, cache=False)
    picks = {as_of: getattr(listing.latest(3, as_of), "snapshot_id", None)
             for as_of in (None, 10**9, 4_003, 4_002, 3_003, 3_002, 1_003, 1_002)}
    assert picks == {None: "t3-tie", 10**9: "t3-tie", 4_003: "t3-tie", 4_002: "t3-s2", 3_003: "t3-s2",
                     3_002: "t3-s1", 1_003: "t3-s0", 1_002: None}
    assert fetch_manifest(store, 3, "latest", 3_500).snapshot_id == "t3-s2"

    with pytest.raises(SnapshotNotFoundError) as info:
        fetch_manifest(store, 3, "latest", 1_002)
    # The nearest ones are named, oldest first, with the instant asked in UTC.
    message = str(info.value)
    assert "no finished snapshot created at or before 1970-01-01T00:00:00.001002Z" in message
    assert message.index("t3-s0") < message.index("t3-s1") < message.index("t3-s2")
    assert "t3-s3" not in message and store.url in message and "--tenant 3" in message
    with pytest.raises(SnapshotChoiceError, match="both a snapshot id"):
        fetch_manifest(store, 3, "t3-s1", 3_500)


@pytest.mark.parametrize("text,instant", [
    ("2026-12-07T14:00:00Z", "2026-12-07T14:00:00Z"),
    ("2026-12-07T15:00+01:00", "2026-12-07T14:00:00Z"),
    ("2026-12-07 14:00", "2026-12-07T14:00:00Z"),  # no zone: UTC
    ("2026-12-07", "2026-12-07T00:00:00Z"),
    ("20261207T140000.5Z", "2026-12-07T14:00:00.500000Z"),
    (" 2026-12-07T09:00-05:00 ", "2026-12-07T14:00:00Z"),
])
def test_as_of_times_are_iso_8601_and_zoneless_is_utc(text, instant):
    assert format_instant(parse_instant(text)) == instant
    assert parse_instant(instant) == parse_instant(text)


@pytest.mark.parametrize("text", ["yesterday", "14:00", "2026-13-01", "", "1700000000"])
def test_a_time_that_is_not_iso_8601_is_refused_saying_how_to_write_one(text):
    with pytest.raises(InstantSpellingError, match="not an ISO 8601 time; write e.g. 2026-12-07T14:00:00Z"):
        parse_instant(text)


def test_s3_versions_name_the_endpoint_too(s3_env):
    bucket = s3_env.create_bucket(f"identity-{uuid.uuid4().hex[:8]}")
    backend = open_backend(f"s3://{bucket}/p")
    assert isinstance(backend, S3Backend)
    assert backend.identity == f"s3://{bucket}/p at {s3_env.endpoint_url}"


# -- the concurrent listing on S3 -------------------------------------------------------------------


def _sorted_keys(keys):
    keys = sorted(keys)

    def fetch(start_after, max_keys):
        i = 0 if start_after is None else bisect.bisect_right(keys, start_after)
        return [{"Key": k} for k in keys[i:i + max_keys]], i + max_keys < len(keys)

    return keys, fetch


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_key_ranges_list_every_key_once_whatever_the_layout(workers, monkeypatch):
    """The range splitting against an in-memory sorted key list (a narrow unit test: S3's own
    behaviour is tested against SeaweedFS below): every key once, on layouts meant to put split
    points next to keys (ids that are prefixes of others, ``-`` and ``.`` sorting before ``/``,
    characters outside the id alphabet, long shared prefixes, decimal counters)."""
    monkeypatch.setattr(key_ranges, "PAGE_KEYS", 40)
    monkeypatch.setattr(key_ranges, "PROBE_KEYS", 7)
    rng = random.Random(workers)
    alphabet = "-./09AZ_az~ \x7fé"
    layouts = [
        [f"p/tenant{t:05d}-snap{n:02d}/{f}" for t in range(70) for n in range(7) for f in ("a", "manifest.json")],
        [f"p/{'a' * n}{sep}{i}" for n in range(1, 30) for sep in ("", "-", ".", "/") for i in range(12)],
        ["p/" + "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))) for _ in range(3000)],
        [f"p/{'z' * 40}{i:06d}" for i in range(900)] + [f"p/{'-' * 20}{i}" for i in range(500)],
        [],
        ["p/only"],
    ]
    for layout in layouts:
        keys, fetch = _sorted_keys(set(layout))
        found, stats = key_ranges.list_key_ranges(fetch, "p/", workers)
        listed = [o["Key"] for o in found]
        assert sorted(listed) == keys and len(set(listed)) == len(listed)
        if workers == 1:
            assert stats["splits"] == 0
    assert stats["requests"] >= 1


def test_midpoints_lie_strictly_between_their_bounds():
    rng = random.Random(7)
    chars = key_ranges.SYMBOLS + "~ é"
    for _ in range(3000):
        a, b = sorted("".join(rng.choice(chars) for _ in range(rng.randint(0, 12))) for _ in range(2))
        for low, high in ((a or None, b), (a or None, None)):
            cut = key_ranges.midpoint(low, high)
            if cut is not None:
                assert cut > (low or "") and (high is None or cut < high)


def _tricky_fleet(store) -> set[str]:
    """Many tenants, ids that sort around one another's keys (``a`` < ``a-b`` < ``a.b`` by folder,
    but ``a-b/...`` < ``a/...`` by key), unfinished snapshots, an unparsable manifest, keys that are
    no snapshot's; written 32 at a time. Returns the ids that should be listed as finished."""
    jobs, finished = [], set()
    for tenant in range(60):
        for n in range(6):
            sid = f"t{tenant:03d}-s{n}"
            jobs.append((f"{sid}/sqlite.db", b""))
            if n == 5 and tenant % 7 == 0:
                continue  # unfinished: content, no manifest yet
            jobs.append((f"{sid}/manifest.json", manifest(sid, tenant, 1_000 * n + tenant).to_json()))
            finished.add(sid)
    for i, sid in enumerate(["a", "a-b", "a.b", "a0", "a-", "a--", "a.", "_", "-", "Z", "z" * 128, "a" * 127 + "-"]):
        jobs.append((f"{sid}/manifest.json", manifest(sid, 900 + i, 5).to_json()))
        jobs.append((f"{sid}/z", b""))
        finished.add(sid)
    jobs += [
        ("broken/manifest.json", b"{ not json"),  # listed, unreadable
        ("t010-s9/manifest.json.tmp", b"half"),  # not a manifest
        ("t011-s9/part/manifest.json", b"{}"),  # not at a snapshot's top
        ("unfinished-only/hnsw.bin", b""),
        ("manifest.json", b"{}"),
    ]
    finished.add("broken")
    client = store.client
    root = f"{store.prefix}/" if store.prefix else ""
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda job: client.put_object(Bucket=store.bucket, Key=root + job[0], Body=job[1]), jobs))
    # Keys outside the prefix, on both sides of it, which no listing of it may see.
    for key in ("fleeta/x/manifest.json", "flee/x/manifest.json", f"{root[:-1]}~/manifest.json"):
        client.put_object(Bucket=store.bucket, Key=key, Body=manifest("x", 1, 1).to_json())
    return finished


@pytest.fixture
def tricky(s3_env, monkeypatch):
    """A SeaweedFS bucket holding :func:`_tricky_fleet` under ``fleet/``, listed in pages of 40 keys
    so that a listing of its ~800 keys splits its key ranges many times."""
    monkeypatch.setattr(key_ranges, "PAGE_KEYS", 40)
    monkeypatch.setattr(key_ranges, "PROBE_KEYS", 5)
    bucket = s3_env.create_bucket(f"ranges-{uuid.uuid4().hex[:12]}")
    store = S3Backend(bucket, "fleet", client=s3_env.client())
    return store, _tricky_fleet(store)


def _paginated(store) -> list[str]:
    """The ids of ``<id>/manifest.json`` keys, by boto3's own paginator: the oracle."""
    ids = []
    for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix="fleet/"):
        for obj in page.get("Contents", []):
            sid, _, rest = obj["Key"][len("fleet/"):].partition("/")
            if rest == "manifest.json" and sid:
                ids.append(sid)
    return sorted(ids)


def test_concurrent_s3_listing_equals_the_sequential_pass(tricky):
    store, finished = tricky
    store.list_ranges = 1
    sequential = store.list_manifests()
    assert store.last_listing["splits"] == 0
    assert [r.snapshot_id for r in sequential] == _paginated(store) == sorted(finished)
    for ranges in (2, 8, 32):
        store.list_ranges = ranges
        assert store.list_manifests() == sequential  # ids, versions and order
        assert store.last_listing["splits"] > 0
    assert store.last_listing["requests"] > len(finished) * 2 // 40


@pytest.mark.parametrize("with_cache", [True, False])
def test_concurrent_listing_finds_what_the_sequential_one_does_across_rewrites(tricky, tmp_path, monkeypatch,
                                                                              with_cache):
    store, _ = tricky
    if with_cache:
        monkeypatch.setenv("MEMRESTORE_CACHE_DIR", str(tmp_path / "cache"))
    else:
        monkeypatch.setenv("MEMRESTORE_NO_CACHE", "1")
        assert default_cache_dir() is None

    def both() -> tuple[dict, dict]:
        store.list_ranges = 1
        one = summary(list_snapshots(store))
        store.list_ranges = 8
        many = summary(list_snapshots(store))
        return one, many

    one, many = both()
    assert one == many and "broken" in one["unreadable"] and len(one["entries"]) > 300
    # Rewritten between listings: a newer snapshot for tenant 3, a tenant moved, one made unreadable,
    # one made readable, one deleted, one finished.
    put_manifest(store, manifest("t003-s0", 3, 999_999))
    put_manifest(store, manifest("a-b", 4, 7))
    store.put_object("t020-s1/manifest.json", b"[]")
    put_manifest(store, manifest("broken", 5, 3))
    delete_manifest(store, "t030-s2")
    put_manifest(store, manifest("t014-s5", 14, 123_456))
    again, again_many = both()
    assert again == again_many and again != one
    assert again["latest"][3] == "t003-s0" and again["latest"][14] == "t014-s5"
    assert "t020-s1" in again["unreadable"] and "broken" not in again["unreadable"]
    assert "t030-s2" not in {e[0] for e in again["entries"]}


def test_the_s3_listing_really_keeps_requests_in_flight_at_once(tricky):
    """Counted at the client: each ListObjectsV2 after the first waits, before it is sent, until
    another one is in flight too (a barrier: a listing that sent them one after another would never
    pass it and fails here), and the manifest reads wait for four of them in flight."""
    store, finished = tricky
    in_flight, most, lock = {"ListObjectsV2": 0, "GetObject": 0}, {"ListObjectsV2": 0, "GetObject": 0}, threading.Lock()
    barriers = {"ListObjectsV2": threading.Barrier(2, timeout=30), "GetObject": threading.Barrier(4, timeout=30)}
    seen = {"ListObjectsV2": 0, "GetObject": 0}

    def before(model, **_):
        name = model.name
        with lock:
            seen[name] += 1
            in_flight[name] += 1
            most[name] = max(most[name], in_flight[name])
            wait = (name == "ListObjectsV2" and seen[name] in (2, 3)) or (name == "GetObject" and seen[name] <= 4)
        if wait:
            barriers[name].wait()

    def after(model, **_):
        with lock:
            in_flight[model.name] -= 1

    events = store.client.meta.events
    for name in ("ListObjectsV2", "GetObject"):
        events.register(f"before-call.s3.{name}", before)
        events.register(f"after-call.s3.{name}", after)
    store.list_ranges = 4
    listing = list_snapshots(store, cache=False, concurrency=8)
    assert len(listing) + len(listing.unreadable) == len(finished)
    assert most["ListObjectsV2"] >= 2 and most["GetObject"] >= 4
    assert seen["ListObjectsV2"] == store.last_listing["requests"]


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
            "--s3-tenants", "2", "--rounds", "1", "--sweep", "none", "--s3-endpoint-url", s3_env.endpoint_url,
            "--latency-ms", "2"]
    assert main(args) == 0
    # Text after the section (another benchmark's, or people's notes) is kept as it is.
    output.write_text(output.read_text() + "\nAfter the section.\n")
    # Writing the section again replaces it, and nothing else.
    assert main(["--rerender", str(tmp_path / "work" / "results.json"), "--output", str(output)]) == 0
    text = output.read_text()
    assert text.startswith(others) and text.count(START) == text.count(END) == 1
    section = text.split(START)[1]
    assert "local folder, 4 tenants x 2 = 8 snapshots" in section and "SeaweedFS (S3), 2 tenants x 2" in section
    assert "| warm run: cache hit |" in section and "| 0 |" in section  # a warm run reads no manifest
    assert text.endswith(f"{END}\n\nAfter the section.\n")
    # The concurrent cold listing and the one-pass one, both measured, on both S3 targets.
    assert "| SeaweedFS (S3), 4 snapshots | list only |" in section
    assert "| SeaweedFS (S3) + 2 ms a request, 4 snapshots | list only |" in section
    assert section.count("|  | first run |") == 2
