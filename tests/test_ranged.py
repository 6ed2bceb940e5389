"""Large S3 objects come down as several ranged GETs at once, each part written at its offset and
the whole hashed in file order: exact bytes, resumed when a body breaks, refused when the object
changes underneath. Against SeaweedFS (and the fault proxy in front of it); part sizes are made
small so that a few MiB make many parts."""

from __future__ import annotations

import errno
import os
import random
import threading
import uuid

import blake3
import pytest

from memrestore.backends import open_backend
from memrestore.backends import s3 as s3_module
from memrestore.backends import streams as streams_module
from memrestore.backends.errors import PermanentBackendError, TransientBackendError
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.backends.streams import StreamPool
from memrestore.tasks.errors import DestinationIOError
from memrestore.tasks.choose import fetch_manifest
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.stage import _StagedFile
from memrestore.tasks.validate import validate
from tests.restorekit import execute
from tests.conftest import tree
from tests.farproxy import FarProxy
from tests.faultproxy import Fault
from tests.restorekit import ours
from tests.seaweed import point_boto3
from tests.test_disk_full import fill, volume  # noqa: F401  (a small tmpfs, and filling it)

KiB = 1024
MiB = 1024 * KiB
PART = 256 * KiB
BLOB = 3 * MiB + 12345  # 13 parts, the last one short


@pytest.fixture
def small_parts(monkeypatch):
    """Objects come down in parts of 256 KiB, on the restore's streams."""
    monkeypatch.setattr(streams_module, "PART_SIZE", PART)
    monkeypatch.setattr(streams_module, "MIN_PART_SIZE", PART)


@pytest.fixture
def snapshot(seaweedfs, monkeypatch):
    """A bucket holding tenant 1's snapshot with blobs of BLOB bytes; boto3's chain pointed at it."""
    point_boto3(monkeypatch, seaweedfs.env())
    bucket = seaweedfs.create_bucket(f"ranged-{uuid.uuid4().hex[:10]}")
    manifest = write_sample_snapshot(open_backend(f"s3://{bucket}"), tenant_id=1, snapshot_id="big",
                                     models=(("minilm", 384),), sqlite_bytes=BLOB, hnsw_bytes=BLOB)
    return bucket, manifest


def _expected(seaweedfs, bucket, manifest) -> dict[str, bytes]:
    client = seaweedfs.client()
    keys = {"tenant_1/data.sqlite": manifest.sqlite_checkpoint_key,
            "tenant_1/hnsw/minilm.bin": manifest.hnsw_snapshots[0].content_key}
    return {dest: client.get_object(Bucket=bucket, Key=key)["Body"].read() for dest, key in keys.items()}


def _restore(backend, data_dir):
    manifest = fetch_manifest(backend, 1, "big")
    plan = validate(manifest, DestinationState(embedding_model="minilm"), backend.url)
    return execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER)


def _ranges_sent(backend) -> list[str]:
    """The Range header of every GetObject the backend's client sends from now on."""
    seen: list[str] = []

    def record(request, **_):
        value = request.headers.get("Range") or ""
        seen.append(value.decode() if isinstance(value, bytes) else value)

    backend.client.meta.events.register("before-send.s3.GetObject", record)
    return seen


def test_a_large_object_comes_down_in_ranged_parts_exactly(seaweedfs, snapshot, small_parts, tmp_path):
    bucket, manifest = snapshot
    backend = open_backend(f"s3://{bucket}")
    ranges = _ranges_sent(backend)
    outcome = _restore(backend, tmp_path / "data")
    assert tree(tmp_path / "data") == _expected(seaweedfs, bucket, manifest)
    assert all(item.verified for item in outcome.items)
    sizes = [len(data) for data in _expected(seaweedfs, bucket, manifest).values()]
    ranged = [r for r in ranges if r]  # the manifest is read whole
    # Each blob in ceil(size / PART) ranged GETs, each asked for once, the last one short.
    assert sorted(ranged) == sorted(f"bytes={start}-{min(start + PART, size) - 1}"
                                    for size in sizes for start in range(0, size, PART))
    assert len(ranged) > 2 * 2  # more parts than a blob's two streams: the pool was kept full


def test_blobs_of_like_size_share_the_streams_one_each_and_nothing_is_read_back(
        seaweedfs, small_parts, monkeypatch, tmp_path):
    """Four blobs of one size on four streams: a free stream takes the next part of the blob with
    the fewest parts running, so once all four have joined each is read by one stream at a time,
    in order, and hashed as its bytes arrive: nothing is read back from a staged file to be hashed
    (which parts written ahead of the hash cost). Every blob is still exact and verified."""

    point_boto3(monkeypatch, seaweedfs.env())
    bucket = seaweedfs.create_bucket(f"ranged-{uuid.uuid4().hex[:10]}")
    models = (("minilm", 384), ("e5-base", 768), ("bge-large", 1024))
    backend = open_backend(f"s3://{bucket}")
    write_sample_snapshot(backend, tenant_id=1, snapshot_id="big", models=models, sqlite_bytes=BLOB, hnsw_bytes=BLOB)
    read_back: list[int] = []
    hash_back = _StagedFile._hash_back
    monkeypatch.setattr(_StagedFile, "_hash_back",
                        lambda self, start, end: (read_back.append(end - start), hash_back(self, start, end)))
    # Through a far-store proxy (2 MB/s a connection), so that a part takes longer than the other
    # blobs take to join: on loopback the first blob could run a dozen parts before they do.
    with FarProxy(seaweedfs.endpoint_url, rate=2_000_000) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        backend = open_backend(f"s3://{bucket}")
        ranges = _ranges_sent(backend)
        plan = validate(fetch_manifest(backend, 1, "big"), DestinationState(embedding_model="minilm"), backend.url)
        outcome = execute(backend, plan, tmp_path / "data", RestoreMode.NEW_CLUSTER, streams=4)
    assert len(outcome.items) == 4 and all(item.verified and item.bytes > 1 * MiB for item in outcome.items)
    assert len(ranges) > 1 + 4 * 4  # every blob in many parts
    # Only at the start, before the other blobs join, may the first take several streams (a few
    # parts, more on a loaded machine); all four streams on one blob at a time would read ~3/4 back.
    total = sum(item.bytes for item in outcome.items)
    assert sum(read_back) <= total / 8, (sum(read_back), total)


def test_broken_parts_resume_where_they_stopped(seaweedfs, faultproxy, snapshot, small_parts,
                                                monkeypatch, tmp_path):
    bucket, manifest = snapshot
    point_boto3(monkeypatch, faultproxy.env(seaweedfs))
    key = manifest.hnsw_snapshots[0].content_key
    faultproxy.fail_next(3, Fault.TRUNCATE, match=key, methods=("GET",))
    backend = open_backend(f"s3://{bucket}")
    _restore(backend, tmp_path / "data")
    assert tree(tmp_path / "data") == _expected(seaweedfs, bucket, manifest)
    # Each cut body costs one more GET, of the rest of its part: nothing is fetched twice over.
    assert faultproxy.count("GET", match=key) == -(-BLOB // PART) + 3


def test_a_part_that_keeps_breaking_is_a_transient_failure_and_nothing_is_left(
        seaweedfs, faultproxy, snapshot, small_parts, monkeypatch, tmp_path):
    bucket, manifest = snapshot
    point_boto3(monkeypatch, faultproxy.env(seaweedfs))
    key = manifest.sqlite_checkpoint_key
    faultproxy.always(Fault.TRUNCATE, match=key, methods=("GET",))
    data_dir = tmp_path / "data"
    (data_dir / "tenant_2").mkdir(parents=True)
    (data_dir / "tenant_2" / "data.sqlite").write_bytes(b"keep me")
    backend = open_backend(f"s3://{bucket}")
    with pytest.raises(TransientBackendError, match=f"{key}: the download broke off {s3_module.MAX_STREAM_BREAKS + 1} times"):
        manifest_ = fetch_manifest(backend, 1, "big")
        plan = validate(manifest_, DestinationState(embedding_model="minilm"), backend.url)
        execute(backend, plan, data_dir, RestoreMode.WIPE_AND_RESTORE)
    assert tree(data_dir) == {"tenant_2/data.sqlite": b"keep me"}


def test_an_object_rewritten_during_its_download_is_refused(seaweedfs, snapshot, small_parts, tmp_path):
    bucket, manifest = snapshot
    backend = open_backend(f"s3://{bucket}")
    key = manifest.hnsw_snapshots[0].content_key
    lock, rewritten = threading.Lock(), []

    class RewritesOnFirstWrite:
        """Someone rewrites the object while the first parts arrive; the rest are asked for after."""

        def write_at(self, offset, data):
            with lock:
                if not rewritten:
                    seaweedfs.client().put_object(Bucket=bucket, Key=key, Body=os.urandom(BLOB))
                    rewritten.append(offset)

    # Two streams for 13 parts: most parts are asked for after the rewrite.
    with pytest.raises(PermanentBackendError, match="changed while it was being downloaded"), StreamPool(2) as pool:
        backend.download_at(key, RewritesOnFirstWrite(), pool=pool)


def test_staged_file_hashes_out_of_order_writes_in_file_order(tmp_path):
    data = os.urandom(5 * MiB + 7)
    chunks = [(offset, data[offset:offset + 64 * KiB + 3]) for offset in range(0, len(data), 64 * KiB + 3)]
    random.Random(5).shuffle(chunks)
    fd = os.open(tmp_path / "f.part", os.O_RDWR | os.O_CREAT)
    try:
        staged = _StagedFile(fd)
        threads = [threading.Thread(target=lambda part=chunks[i::4]: [staged.write_at(o, d) for o, d in part])
                   for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert staged.hexdigest() == blake3.blake3(data).hexdigest()
        assert staged.size == len(data)
    finally:
        os.close(fd)
    assert (tmp_path / "f.part").read_bytes() == data


def test_staged_file_writes_a_large_chunk_in_small_slices(monkeypatch, tmp_path):
    """A 1 MiB chunk goes to the file as writes of at most WRITE_SLICE: the kernel sizes its
    page-cache pages to the write, and large ones cost several times more to fill here
    (BENCHMARKS.md). The bytes and the hash are the chunk's, whole."""
    import memrestore.tasks.stage as stage_module

    sizes: list[int] = []
    real_pwrite = os.pwrite

    def pwrite(fd, data, offset):
        sizes.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = os.urandom(1 * MiB + 5)
    fd = os.open(tmp_path / "f.part", os.O_RDWR | os.O_CREAT)
    try:
        staged = _StagedFile(fd)
        staged.write(data)
        assert staged.hexdigest() == blake3.blake3(data).hexdigest()
    finally:
        os.close(fd)
    assert (tmp_path / "f.part").read_bytes() == data
    assert max(sizes) == stage_module.WRITE_SLICE == 128 * KiB and sum(sizes) == len(data), sizes


def test_staged_file_with_a_gap_does_not_hash(tmp_path):
    fd = os.open(tmp_path / "f.part", os.O_RDWR | os.O_CREAT)
    try:
        staged = _StagedFile(fd)
        staged.write_at(0, b"a" * 100)
        staged.write_at(200, b"b" * 100)  # bytes 100-199 never came
        with pytest.raises(OSError, match="gaps"):
            staged.hexdigest()
    finally:
        os.close(fd)


def test_a_disk_that_fills_during_ranged_parts_fails_clearly_and_leaves_the_data_dir(
        seaweedfs, snapshot, small_parts, volume, tmp_path):
    """Another writer fills the volume while the parts of a blob arrive: a real ENOSPC from a
    ``pwrite`` in one of the range threads; the restore stops, rolls back, names the file."""
    bucket, manifest = snapshot
    vol = volume(64)
    data_dir = vol.path / "data"
    (data_dir / "tenant_2").mkdir(parents=True)
    (data_dir / "tenant_2" / "data.sqlite").write_bytes(b"keep me")
    key = manifest.hnsw_snapshots[0].content_key
    lock, filled = threading.Lock(), []

    class FillsTheVolume(type(open_backend(f"s3://{bucket}"))):
        def download_at(self, k, sink, on_bytes=None, pool=None, **kw):
            outer = sink

            class Sink:
                def write_at(self, offset, data):
                    with lock:
                        if k == key and not filled:
                            filled.append(fill(vol.path / "another-writer"))
                    outer.write_at(offset, data)

            return super().download_at(k, Sink(), on_bytes, pool, **kw)

    backend = FillsTheVolume(bucket)
    plan = validate(fetch_manifest(backend, 1, "big"), DestinationState(embedding_model="minilm"), backend.url)
    with pytest.raises(DestinationIOError, match="No space left on device") as caught:
        execute(backend, plan, data_dir, RestoreMode.WIPE_AND_RESTORE)
    assert caught.value.errno == errno.ENOSPC and filled
    assert tree(data_dir) == {"tenant_2/data.sqlite": b"keep me"}
    assert ours(data_dir) == []


@pytest.mark.parametrize("checksums", [True, False], ids=["blake3-in-manifest", "no-checksum-in-manifest"])
def test_a_body_damaged_in_transit_is_caught(seaweedfs, faultproxy, monkeypatch, tmp_path, checksums):
    """One byte of a blob changed between S3 and us (the proxy flips it). With the manifest's
    blake3, that check refuses it; without one, the CRC32 that S3 sent with the object does
    (a transient failure: the download is retried). Either way the data dir is left as it was,
    and the next restore is exact."""
    from memrestore.tasks.errors import ChecksumMismatchError

    point_boto3(monkeypatch, faultproxy.env(seaweedfs))
    bucket = seaweedfs.create_bucket(f"damaged-{uuid.uuid4().hex[:10]}")
    backend = open_backend(f"s3://{bucket}")
    manifest = write_sample_snapshot(backend, tenant_id=1, snapshot_id="snap", models=(("minilm", 384),),
                                     checksums=checksums)
    key = manifest.hnsw_snapshots[0].content_key
    data_dir = tmp_path / "data"
    (data_dir / "tenant_2").mkdir(parents=True)
    (data_dir / "tenant_2" / "data.sqlite").write_bytes(b"keep me")
    plan = validate(fetch_manifest(backend, 1, "snap"), DestinationState(embedding_model="minilm"), backend.url)

    faultproxy.fail_next(1, Fault.CORRUPT, match=key, methods=("GET",))
    expected = (ChecksumMismatchError, key) if checksums else (TransientBackendError, f"{key} arrived damaged")
    with pytest.raises(expected[0], match=expected[1]):
        execute(backend, plan, data_dir, RestoreMode.WIPE_AND_RESTORE)
    assert tree(data_dir) == {"tenant_2/data.sqlite": b"keep me"}
    assert ours(data_dir) == []

    execute(backend, plan, data_dir, RestoreMode.WIPE_AND_RESTORE)
    restored = tree(data_dir)
    assert restored["tenant_1/hnsw/minilm.bin"] == seaweedfs.client().get_object(Bucket=bucket, Key=key)["Body"].read()
