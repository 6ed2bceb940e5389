"""FORMAT.md's rules, each accepted and refused: the manifest, keys, ids, the destination."""

from __future__ import annotations

import json

import pytest

from memrestore.backends.errors import InvalidKeyError, InvalidManifestError, InvalidSnapshotIdError
from memrestore.backends.manifest import (
    DistanceMetric,
    SnapshotManifest,
    WireVersion,
    check_content_key,
    check_snapshot_id,
    parse_manifest,
)
from memrestore.tasks.errors import IncompatibleSnapshotError
from memrestore.tasks.plan import DestinationState
from memrestore.tasks.validate import validate
from tests.manifests import BASE, DELETE
from tests.manifests import manifest_doc as manifest


def parse(m: dict) -> SnapshotManifest:
    return parse_manifest(json.dumps(m), "test/manifest.json")


def test_the_format_example_parses_and_round_trips():
    m = parse(BASE)
    assert m.tenant_id == 1 and m.hnsw_snapshots[0].distance_metric is DistanceMetric.COSINE
    assert json.loads(m.to_json()) == BASE


@pytest.mark.parametrize("field", ["forget_floor", "sqlite_checkpoint_checksum", "encryption", "label"])
def test_nullable_fields_accept_null(field):
    assert getattr(parse(manifest(**{field: None})), field) is None


def test_hnsw_checksum_may_be_null():
    assert parse(manifest(hnsw_snapshots__0__checksum=None)).hnsw_snapshots[0].checksum is None


@pytest.mark.parametrize("spelling,metric", [
    ("cosine", "cosine"), ("euclidean", "euclidean"), ("dot_product", "dot_product"),
    ("Cosine", "cosine"), ("Euclidean", "euclidean"), ("DotProduct", "dot_product"),
])
def test_distance_metric_spellings(spelling, metric):
    m = parse(manifest(hnsw_snapshots__0__distance_metric=spelling))
    assert m.hnsw_snapshots[0].distance_metric.value == metric


def test_unknown_distance_metric_is_refused():
    with pytest.raises(InvalidManifestError, match="distance_metric"):
        parse(manifest(hnsw_snapshots__0__distance_metric="manhattan"))


def test_unknown_fields_are_ignored():
    m = manifest(future_field={"x": 1}, hnsw_snapshots__0__quantization="pq")
    assert parse(m).snapshot_id == "snap-1"


def test_newer_manifest_version_is_refused_with_what_to_do():
    with pytest.raises(InvalidManifestError, match="manifest_version 2 .* upgrade memrestore"):
        parse(manifest(manifest_version=2))


@pytest.mark.parametrize("field,value", [
    ("tenant_id", -1), ("tenant_id", 2**64), ("tenant_id", "1"), ("tenant_id", 1.0), ("tenant_id", True),
    ("oplog_watermark", 2**64), ("created_at_unix_micros", -5),
    ("table_schema_versions", {"memory_commit_log": 2**32}),
    ("sqlite_checkpoint_checksum", "A" * 64), ("sqlite_checkpoint_checksum", "a" * 63),
    ("snapshot_id", "snap/1"), ("snapshot_id", ".."), ("snapshot_id", "x" * 129),
])
def test_out_of_range_or_mistyped_values_are_refused(field, value):
    with pytest.raises(InvalidManifestError, match=field):
        parse(manifest(**{field: value}))


def test_u64_extremes_are_accepted():
    m = parse(manifest(tenant_id=2**64 - 1, oplog_watermark=2**64 - 1))
    assert m.tenant_id == 2**64 - 1


@pytest.mark.parametrize("field", ["tenant_id", "snapshot_id", "hnsw_snapshots", "wire_version"])
def test_missing_required_field_is_refused(field):
    with pytest.raises(InvalidManifestError, match=field):
        parse(manifest(**{field: DELETE}))


@pytest.mark.parametrize("changes,problem", [
    ({"oplog_floor": 101}, "oplog_floor 101 is above oplog_watermark 100"),
    ({"forget_floor": 101}, "forget_floor 101 is above oplog_watermark 100"),
    ({"hnsw_snapshots__0__source_log_watermark": 101}, "source_log_watermark 101"),
    ({"hnsw_snapshots__0__vector_dim": 0}, "vector_dim must be above 0"),
])
def test_manifest_invariants(changes, problem):
    with pytest.raises(InvalidManifestError, match=problem):
        parse(manifest(**changes))


def test_invariants_hold_at_their_bounds():
    parse(manifest(oplog_floor=100, forget_floor=100, hnsw_snapshots__0__source_log_watermark=100))


def test_embedding_models_must_be_unique():
    m = manifest()
    m["hnsw_snapshots"].append(dict(m["hnsw_snapshots"][0], content_key="snap-1/other.bin"))
    with pytest.raises(InvalidManifestError, match="'minilm' appears twice"):
        parse(m)


def test_same_key_named_twice_is_refused():
    with pytest.raises(InvalidManifestError, match="named by more than one item"):
        parse(manifest(hnsw_snapshots__0__content_key="snap-1/sqlite.db"))


@pytest.mark.parametrize("key,reason", [
    ("", "empty"), ("/etc/passwd", "absolute"), ("a/../b", "'..' segment"), ("../b", "'..' segment"),
    ("a/./b", "'.' segment"), ("a//b", "empty segment"), ("a/", "empty segment"),
    ("a\\b", "backslash"), ("a\x00b", "NUL"), ("x" * 1025, "1025 bytes"), ("a/\udc80", "UTF-8"),
])
def test_bad_content_keys(key, reason):
    with pytest.raises(InvalidKeyError, match=reason):
        check_content_key(key)
    # In JSON, a lone surrogate is already refused by the parser.
    with pytest.raises(InvalidManifestError, match="content key|lone leading surrogate"):
        parse(manifest(sqlite_checkpoint_key=key))


@pytest.mark.parametrize("key", ["snap-1/sqlite.db", "a", "a/b/c.bin", "..a/b..", "ünïcode/ключ", "a b/c"])
def test_good_content_keys(key):
    assert check_content_key(key) == key


@pytest.mark.parametrize("sid", ["", ".", "..", "a/b", "a b", "x" * 129, "snap\x00", "snäp", "a\\b"])
def test_bad_snapshot_ids(sid):
    with pytest.raises(InvalidSnapshotIdError):
        check_snapshot_id(sid)


@pytest.mark.parametrize("sid", ["a", "snap-1", "A.b_c-9", "...", "x" * 128])
def test_good_snapshot_ids(sid):
    assert check_snapshot_id(sid) == sid


def test_not_json_and_deep_nesting_are_our_errors():
    with pytest.raises(InvalidManifestError, match="not valid JSON"):
        parse_manifest(b"{not json", "x")
    with pytest.raises(InvalidManifestError):
        parse_manifest(b"[" * 100_000 + b"]" * 100_000, "x")


# --- DestinationState rules -------------------------------------------------------------------


def plan(m: dict | None = None, **destination):
    return validate(parse(m or BASE), DestinationState(**destination), "file:///backend")


@pytest.mark.parametrize("snap,dest,ok", [
    ((1, 0), (1, 0), True), ((1, 0), (1, 3), True), ((1, 2), (1, 2), True),
    ((1, 3), (1, 2), False), ((2, 0), (1, 9), False), ((1, 0), (2, 0), False),
])
def test_wire_version_rule(snap, dest, ok):
    m = manifest(wire_version={"major": snap[0], "minor": snap[1]})
    wire = WireVersion(major=dest[0], minor=dest[1])
    if ok:
        plan(m, wire_version=wire)
    else:
        with pytest.raises(IncompatibleSnapshotError, match=f"wire version {snap[0]}.{snap[1]}"):
            plan(m, wire_version=wire)


def test_tombstone_floor_rule():
    plan(tombstone_floor=None)
    plan(tombstone_floor=50)  # forget_floor 50 >= 50
    plan(manifest(forget_floor=None), tombstone_floor=None)
    with pytest.raises(IncompatibleSnapshotError, match="forget_floor 50.*forgotten.*up to 51"):
        plan(tombstone_floor=51)
    with pytest.raises(IncompatibleSnapshotError, match="no forget_floor"):
        plan(manifest(forget_floor=None), tombstone_floor=0)


def test_embedding_model_rule_applies_only_when_a_model_is_named():
    assert plan().destination_state.embedding_model is None  # nothing named: nothing checked
    assert plan(embedding_model="minilm").items[1].destination == "tenant_1/hnsw/minilm.bin"
    with pytest.raises(IncompatibleSnapshotError, match="no HNSW index for embedding model 'e5'"):
        plan(embedding_model="e5")
    two = manifest()
    two["hnsw_snapshots"].append(dict(two["hnsw_snapshots"][0], embedding_model="e5", content_key="snap-1/e5.bin"))
    everything = ["tenant_1/data.sqlite", "tenant_1/hnsw/minilm.bin", "tenant_1/hnsw/e5.bin"]
    # Every HNSW snapshot is restored, named or not: the tenant's whole state.
    assert [i.destination for i in plan(two).items] == everything
    assert [i.destination for i in plan(two, embedding_model="e5").items] == everything
    with pytest.raises(IncompatibleSnapshotError, match="no HNSW index for embedding model 'bert'.*'minilm', 'e5'"):
        plan(two, embedding_model="bert")
    none = manifest(hnsw_snapshots=[])
    assert [i.destination for i in plan(none).items] == ["tenant_1/data.sqlite"]
    with pytest.raises(IncompatibleSnapshotError, match="it has: none"):
        plan(none, embedding_model="minilm")


def test_models_that_sanitise_to_the_same_file_are_refused():
    two = manifest()
    two["hnsw_snapshots"][0]["embedding_model"] = "a/b"
    two["hnsw_snapshots"].append(dict(two["hnsw_snapshots"][0], embedding_model="a_b", content_key="snap-1/e5.bin"))
    with pytest.raises(IncompatibleSnapshotError, match="both be written to tenant_1/hnsw/a_b.bin"):
        plan(two, embedding_model="a_b")


def test_require_checksums():
    m = manifest(hnsw_snapshots__0__checksum=None)
    assert plan(m).warnings == [
        "hnsw:minilm (snap-1/hnsw.bin) has no checksum in the manifest: it will be restored unverified"]
    with pytest.raises(IncompatibleSnapshotError, match="no checksum for hnsw:minilm.*--require-checksums"):
        validate(parse(m), DestinationState(), "x", require_checksums=True)
    assert validate(parse(BASE), DestinationState(), "x", require_checksums=True).warnings == []
