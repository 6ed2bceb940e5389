"""One contract suite for every backend: the local folder, and a real SeaweedFS S3 server."""

from __future__ import annotations

import io
import os
import uuid

import blake3
import pytest

from memrestore.backends import LocalBackend, list_snapshots, open_backend, put_manifest, read_manifest
from memrestore.backends.errors import (
    AccessDeniedError,
    InvalidKeyError,
    InvalidManifestError,
    ObjectNotFoundError,
)
from memrestore.backends.s3 import S3Backend
from memrestore.backends.demo_snapshots import write_sample_snapshot

MiB = 1024 * 1024


@pytest.fixture(params=["local", "s3", "s3-prefix"])
def store(request, tmp_path):
    """A fresh, empty backend of each kind, opened from its URL as the CLI does."""
    if request.param == "local":
        return open_backend(str(tmp_path / "backend"))
    seaweed = request.getfixturevalue("s3_env")
    bucket = seaweed.create_bucket(f"contract-{uuid.uuid4().hex[:12]}")
    prefix = "/backups/prod" if request.param == "s3-prefix" else ""
    backend = open_backend(f"s3://{bucket}{prefix}")
    assert isinstance(backend, S3Backend)
    return backend


class Collect:
    def __init__(self):
        self.buf = io.BytesIO()

    def write(self, data):
        self.buf.write(data)
        return len(data)


def test_put_download_round_trip_small_and_large(store):
    small = b"hello snapshot"
    large = os.urandom(3 * MiB) * 7 + b"tail"  # 21 MiB: many reads of one stream
    store.put_object("s/small.bin", small)
    store.put_object("s/large.bin", large)
    for key, data in (("s/small.bin", small), ("s/large.bin", large)):
        sink, seen = Collect(), []
        count = store.download(key, sink, seen.append)
        assert count == len(data) == sum(seen)
        assert blake3.blake3(sink.buf.getvalue()).digest() == blake3.blake3(data).digest()
        assert store.object_size(key) == len(data)


def test_put_object_from_a_file(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    store.put_object("s/from-file.bin", src)
    assert store.object_size("s/from-file.bin") == 1000


def test_missing_objects_are_not_found_naming_the_key(store):
    for call in (
        lambda: store.download("nope/missing.bin", Collect()),
        lambda: store.object_size("nope/missing.bin"),
    ):
        with pytest.raises(ObjectNotFoundError, match="nope/missing.bin") as info:
            call()
        assert info.value.key == "nope/missing.bin"
    with pytest.raises(ObjectNotFoundError):
        store.read_manifest_bytes("nope")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a\\b", "a/./b"])
def test_bad_keys_are_refused_before_any_io(store, key):
    with pytest.raises(InvalidKeyError):
        store.download(key, Collect())
    with pytest.raises(InvalidKeyError):
        store.put_object(key, b"x")


def test_sink_errors_pass_through_as_they_are(store):
    store.put_object("s/blob.bin", b"y" * 10_000)

    class Full:
        def write(self, data):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        store.download("s/blob.bin", Full())


def test_listing_finds_finished_snapshots_only(store):
    write_sample_snapshot(store, tenant_id=1, snapshot_id="t1-a", created_at_unix_micros=10, hnsw_bytes=100)
    write_sample_snapshot(store, tenant_id=2, snapshot_id="t2-a", created_at_unix_micros=20, hnsw_bytes=100)
    store.put_object("unfinished/sqlite.db", b"no manifest yet")
    store.put_object("not a snapshot id/manifest.json", b"{}")
    assert store.list_snapshot_ids() == ["t1-a", "t2-a"]
    assert [ref.snapshot_id for ref in store.list_manifests()] == ["t1-a", "t2-a"]  # versions: test_listing.py
    listing = list_snapshots(store)
    assert [(m.tenant_id, m.snapshot_id) for m in listing.snapshots] == [(1, "t1-a"), (2, "t2-a")]
    assert [m.snapshot_id for m in list_snapshots(store, tenant_id=2).snapshots] == ["t2-a"]


def test_latest_is_by_created_at_never_by_write_order(store):
    # The newest snapshot is written FIRST, so every object time says the older one is newer.
    write_sample_snapshot(store, tenant_id=1, snapshot_id="made-last", created_at_unix_micros=3_000, hnsw_bytes=10)
    write_sample_snapshot(store, tenant_id=1, snapshot_id="made-first", created_at_unix_micros=1_000, hnsw_bytes=10)
    write_sample_snapshot(store, tenant_id=1, snapshot_id="made-middle", created_at_unix_micros=2_000, hnsw_bytes=10)
    write_sample_snapshot(store, tenant_id=2, snapshot_id="other-tenant", created_at_unix_micros=9_000, hnsw_bytes=10)
    listing = list_snapshots(store)
    assert listing.latest(1).snapshot_id == "made-last"
    assert listing.latest(2).snapshot_id == "other-tenant"
    assert listing.latest(3) is None


def test_latest_breaks_ties_by_snapshot_id(store):
    for sid in ("tie-b", "tie-a", "tie-c"):
        write_sample_snapshot(store, tenant_id=1, snapshot_id=sid, created_at_unix_micros=5, hnsw_bytes=10)
    assert list_snapshots(store).latest(1).snapshot_id == "tie-c"


def test_unreadable_manifest_is_reported_not_fatal(store):
    write_sample_snapshot(store, tenant_id=1, snapshot_id="good", created_at_unix_micros=1, hnsw_bytes=10)
    store.put_object("broken/manifest.json", b"{ this is not json")
    listing = list_snapshots(store)
    assert [m.snapshot_id for m in listing.snapshots] == ["good"]
    assert "broken" in listing.unreadable and "not valid JSON" in listing.unreadable["broken"]


def test_manifest_in_the_wrong_folder_is_refused(store):
    m = write_sample_snapshot(store, tenant_id=1, snapshot_id="real", created_at_unix_micros=1, hnsw_bytes=10)
    store.put_object("copy/manifest.json", m.to_json())
    assert read_manifest(store, "real").snapshot_id == "real"
    with pytest.raises(InvalidManifestError, match="names snapshot 'real' but sits in folder 'copy'"):
        read_manifest(store, "copy")


def test_manifest_round_trips_exactly(store):
    m = write_sample_snapshot(store, tenant_id=7, snapshot_id="rt", created_at_unix_micros=1, hnsw_bytes=10)
    put_manifest(store, m)
    assert read_manifest(store, "rt") == m


# --- backend-specific behaviour ------------------------------------------------------------------


def test_local_symlink_out_of_the_backend_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"do not read")
    backend = LocalBackend(tmp_path / "backend")
    (tmp_path / "backend" / "snap").mkdir(parents=True)
    os.symlink(outside, tmp_path / "backend" / "snap" / "link")
    with pytest.raises(InvalidKeyError, match="outside the backend folder"):
        backend.download("snap/link/secret", Collect())


def test_local_missing_root_says_so(tmp_path):
    with pytest.raises(ObjectNotFoundError, match="does not exist"):
        LocalBackend(tmp_path / "nope").list_snapshot_ids()


def test_s3_wrong_credentials_are_access_denied(s3_env, monkeypatch):
    bucket = s3_env.create_bucket(f"denied-{uuid.uuid4().hex[:8]}")
    s3_env.client().put_object(Bucket=bucket, Key="k/obj", Body=b"x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    backend = open_backend(f"s3://{bucket}")
    with pytest.raises(AccessDeniedError, match="k/obj"):
        backend.download("k/obj", Collect())


def test_s3_missing_bucket_is_not_found(s3_env):
    with pytest.raises(ObjectNotFoundError, match="bucket not found"):
        open_backend("s3://no-such-bucket-here").list_snapshot_ids()


@pytest.mark.parametrize("url,kind", [
    ("file:///tmp/x", LocalBackend), ("/tmp/x", LocalBackend), ("relative/dir", LocalBackend),
])
def test_open_backend_urls(url, kind):
    assert isinstance(open_backend(url), kind)


@pytest.mark.parametrize("url", ["", "s3://", "http://host/x", "file://host/x"])
def test_open_backend_refuses_unusable_urls(url):
    from memrestore.backends.errors import BadInputError

    with pytest.raises(BadInputError):
        open_backend(url)
