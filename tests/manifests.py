"""The one manifest the tests start from, as the JSON document of the format (FORMAT.md's
example): tenant 1's snapshot ``snap-1``, one HNSW model, every field set. A test builds its own
manifest by changing fields of a copy::

    manifest_doc(snapshot_id="snap-2", hnsw_snapshots__0__checksum=None)  # a nested field by path
    manifest_doc(label=DELETE)                                             # a field left out
    manifest_doc(hnsw_snapshots=[model_doc(embedding_model="e5-base")])   # a model of its own
    manifest_object(...)                                                   # the same, validated
"""

from __future__ import annotations

import copy
from typing import Any

from memrestore.backends.manifest import SnapshotManifest

#: A checksum of the right shape (blake3 hex) for fields whose bytes no test reads.
H = "a" * 64
BASE: dict[str, Any] = {
    "manifest_version": 1,
    "tenant_id": 1,
    "snapshot_id": "snap-1",
    "created_at_unix_micros": 1700000000000000,
    "wire_version": {"major": 1, "minor": 0},
    "table_schema_versions": {"memory_commit_log": 1},
    "oplog_watermark": 100,
    "oplog_floor": 1,
    "forget_floor": 50,
    "sqlite_checkpoint_key": "snap-1/sqlite.db",
    "sqlite_checkpoint_checksum": H,
    "hnsw_snapshots": [
        {
            "embedding_model": "minilm",
            "vector_dim": 384,
            "distance_metric": "cosine",
            "source_log_watermark": 100,
            "content_key": "snap-1/hnsw.bin",
            "checksum": H,
            "deleted_count_pending": 0,
        }
    ],
    "encryption": {"algorithm": "aes-256-gcm", "dek_id": "dek-1", "iv_b64": "AA=="},
    "label": None,
}
#: A value of ``manifest_doc``'s changes: the field is left out of the document.
DELETE = object()


def manifest_doc(**changes: Any) -> dict[str, Any]:
    """A deep copy of ``BASE`` with ``changes``: a name sets that field; ``a__0__b`` sets field ``b``
    of item 0 of field ``a``; the value ``DELETE`` removes the field."""
    doc = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = doc
        *parents, last = path.split("__")
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return doc


def model_doc(**changes: Any) -> dict[str, Any]:
    """A copy of ``BASE``'s one HNSW model with ``changes``."""
    return {**copy.deepcopy(BASE["hnsw_snapshots"][0]), **changes}


def manifest_object(**changes: Any) -> SnapshotManifest:
    """``manifest_doc(**changes)`` validated as a ``SnapshotManifest``."""
    return SnapshotManifest.model_validate(manifest_doc(**changes))
