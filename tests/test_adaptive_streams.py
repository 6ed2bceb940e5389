"""The default stream count finds itself (backends/stream_control.py run by StreamPool): restores
from SeaweedFS through the far-store proxy (tests/farproxy.py), which caps each connection, or the
whole link, at a rate far below what this machine can do even when loaded. Asserted: the direction
the count took and its bounds (ceiling, start), never seconds; the bytes exact either way.

Parts and reads are made small (256 KiB and 64 KiB) so that a few tens of MiB make many parts and
windows of under a second.
"""

from __future__ import annotations

import uuid

import pytest

from memrestore.backends import open_backend
from memrestore.backends import streams as streams_module
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.backends.stream_control import START
from memrestore.tasks.choose import fetch_manifest
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.validate import validate
from tests.farproxy import FarProxy
from tests.restorekit import execute
from tests.seaweed import point_boto3

KiB = 1024
MiB = 1024 * KiB
MB = 1_000_000
CEILING = 16


@pytest.fixture
def small_reads(monkeypatch):
    """Parts of 256 KiB, reads of 64 KiB: many parts, and windows judged after under a second."""
    monkeypatch.setattr(streams_module, "PART_SIZE", 256 * KiB)
    monkeypatch.setattr(streams_module, "MIN_PART_SIZE", 256 * KiB)
    monkeypatch.setattr(streams_module, "MAX_READ_SIZE", 64 * KiB)
    monkeypatch.setattr(streams_module, "MIN_READ_SIZE", 64 * KiB)


def _bucket(seaweedfs, monkeypatch, blob: int) -> str:
    """A bucket holding tenant 1's snapshot of three blobs of ``blob`` bytes."""
    point_boto3(monkeypatch, seaweedfs.env())
    bucket = seaweedfs.create_bucket(f"adaptive-{uuid.uuid4().hex[:10]}")
    write_sample_snapshot(open_backend(f"s3://{bucket}"), tenant_id=1, snapshot_id="s",
                          models=(("minilm", 384), ("e5-base", 768)), sqlite_bytes=blob, hnsw_bytes=blob)
    return bucket


def _restore(bucket, proxy, monkeypatch, data_dir, **request):
    """A whole restore (the composer's plain steps) through ``proxy``; its outcome, and how its
    stream count went, as the outcome reports it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
    backend = open_backend(f"s3://{bucket}")
    plan = validate(fetch_manifest(backend, 1, "s"), DestinationState(embedding_model="minilm"), backend.url)
    outcome = execute(backend, plan, data_dir, RestoreMode.NEW_CLUSTER, **request)
    assert len(outcome.items) == 3 and all(item.verified for item in outcome.items)
    return outcome, [tuple(change) for change in outcome.streams_changes]


def test_more_streams_when_each_connection_is_capped(seaweedfs, small_reads, monkeypatch, tmp_path):
    bucket = _bucket(seaweedfs, monkeypatch, 12 * MiB)
    with FarProxy(seaweedfs.endpoint_url, rate=1 * MB, delay=0.01) as proxy:
        outcome, history = _restore(bucket, proxy, monkeypatch, tmp_path / "data", max_streams=CEILING)
    counts = [n for _, n, _ in history]
    # Each added connection brings its 1 MB/s: it climbs, doubling, to the ceiling and stays there.
    assert counts[0] == START and counts[1:3] == [2 * START, CEILING], history
    assert outcome.streams_peak == CEILING and outcome.streams_final == CEILING


def test_fewer_streams_when_one_connection_already_fills_the_link(seaweedfs, small_reads, monkeypatch, tmp_path):
    bucket = _bucket(seaweedfs, monkeypatch, 5 * MiB)
    # Each connection could take 50 MB/s; the link gives 4 MB/s to all of them together.
    with FarProxy(seaweedfs.endpoint_url, rate=50 * MB, delay=0.01, link_rate=4 * MB) as proxy:
        outcome, history = _restore(bucket, proxy, monkeypatch, tmp_path / "data", max_streams=CEILING)
    counts = [n for _, n, _ in history]
    # It tries more, finds no gain, and goes back: never near the ceiling, fewer at the end.
    assert counts[0] == START and 2 * START in counts and "no gain" in [why for _, _, why in history], history
    assert outcome.streams_peak < CEILING and outcome.streams_final <= outcome.streams_peak
    assert outcome.streams_final < outcome.streams_peak or outcome.streams_final == START


def test_the_rate_limit_holds_and_bounds_the_count(seaweedfs, small_reads, monkeypatch, tmp_path):
    bucket = _bucket(seaweedfs, monkeypatch, 4 * MiB)
    cap = 4 * MiB
    # Connections capped at 1.5 MB/s would have it climb; the limit is reached at 4 streams.
    with FarProxy(seaweedfs.endpoint_url, rate=1.5 * MB, delay=0.01) as proxy:
        outcome, history = _restore(bucket, proxy, monkeypatch, tmp_path / "data", max_streams=CEILING,
                                    limit_rate=cap)
    assert outcome.streams_peak < CEILING and "no gain" in [why for _, _, why in history], history
    assert outcome.bytes_per_second <= 1.1 * cap  # a ceiling, not a speed floor


def test_a_fixed_count_does_not_move(seaweedfs, small_reads, monkeypatch, tmp_path):
    bucket = _bucket(seaweedfs, monkeypatch, 512 * KiB)
    with FarProxy(seaweedfs.endpoint_url, rate=1 * MB) as proxy:
        outcome, history = _restore(bucket, proxy, monkeypatch, tmp_path / "data", streams=3)
    assert history == [(0.0, 3, "fixed")]
    assert outcome.streams_peak == 3 and outcome.streams_final == 3


@pytest.mark.usefixtures("prefect_api")
def test_a_drills_tenants_share_its_budget_of_streams(seaweedfs, small_reads, monkeypatch, tmp_path):
    """Three tenants drilled at once, each connection capped so that each restore would climb to
    its ceiling of 6 on its own: together they keep at most the drill's budget of streams in flight
    (counted at the proxy; made 6 here, 192 in use), and one more for each tenant that starts while
    the others hold them all (its first stream is never refused), where three pools of their own
    reach 18. (Issue 20: four large tenants each free to climb peaked at 209-241 MiB of RSS.)"""
    from memrestore.flows import drill as drill_flow
    from memrestore.flows.drill import drill_report, restore_drill
    from memrestore.tasks.drill_report import table_rows

    monkeypatch.setattr(drill_flow, "DRILL_STREAMS", 6)

    point_boto3(monkeypatch, seaweedfs.env())
    bucket = seaweedfs.create_bucket(f"adaptive-drill-{uuid.uuid4().hex[:10]}")
    for tenant in (1, 2, 3):
        write_sample_snapshot(open_backend(f"s3://{bucket}"), tenant_id=tenant, snapshot_id=f"t{tenant}",
                              models=(("minilm", 384),), sqlite_bytes=None, hnsw_bytes=6 * MiB)
    ceiling = 6
    with FarProxy(seaweedfs.endpoint_url, rate=1 * MB, delay=0.01) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint_url)
        proxy.reset()
        report = drill_report(restore_drill(backend=f"s3://{bucket}", scratch_dir=str(tmp_path / "scratch"),
                                            concurrency=3, max_streams=ceiling, return_state=True))
        timeline = proxy.timeline()
    assert report.ok == 3, report
    # Each tenant's line says what its restore ran, in the JSON and in the report's rate.
    assert all(1 <= t.streams_peak <= 6 and 1 <= t.streams_final <= t.streams_peak for t in report.tenants), report
    assert all(row["rate"].endswith(" streams") for row in table_rows(report)), table_rows(report)
    assert max(timeline) <= ceiling + 2, " ".join(map(str, timeline))
    assert max(timeline) > START, " ".join(map(str, timeline))  # they did climb, within the ceiling
