"""Write sample snapshots exactly as the memory service does: a real SQLite checkpoint with a
``memory_commit_log`` table, one HNSW blob per embedding model, content first, manifest last.

Used by the demo, the tests and the benchmarks. The HNSW blobs are opaque bytes to a restore, so
they are filled with seeded pseudo-random data of the asked size.
"""

from __future__ import annotations

import random
import sqlite3
import tempfile
import time
from pathlib import Path

from memrestore.backends.base import Backend, put_manifest
from memrestore.backends.hashing import hash_file
from memrestore.backends.manifest import SnapshotManifest

DEFAULT_MODELS: tuple[tuple[str, int], ...] = (("minilm", 384), ("e5-base", 768))
#: Payload size of one sample commit-log row, when growing a checkpoint to a target size.
ROW_PAYLOAD = 64 * 1024
WRITE_CHUNK = 4 * 1024 * 1024


def make_sqlite_checkpoint(path: Path, rows: int = 100, target_bytes: int | None = None, seed: int = 0) -> None:
    """A real SQLite database: ``memory_commit_log`` (and ``memories``), ``rows`` rows, grown with
    blob payloads until the file reaches ``target_bytes`` when that is given."""
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=OFF")
        db.execute("PRAGMA synchronous=OFF")
        db.execute(
            "CREATE TABLE memory_commit_log (oplog_pos INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
            " payload BLOB NOT NULL, created_at_unix_micros INTEGER NOT NULL)"
        )
        db.execute("CREATE TABLE memories (id INTEGER PRIMARY KEY, text TEXT NOT NULL, oplog_pos INTEGER)")
        now = int(time.time() * 1e6)
        db.executemany(
            "INSERT INTO memory_commit_log VALUES (?, ?, ?, ?)",
            ((i + 1, "remember", rng.randbytes(64), now + i) for i in range(rows)),
        )
        db.executemany(
            "INSERT INTO memories VALUES (?, ?, ?)",
            ((i + 1, f"memory number {i + 1}", i + 1) for i in range(rows)),
        )
        db.commit()
        if target_bytes:
            pos = rows + 1
            while path.stat().st_size < target_bytes:
                batch = [(pos + i, "bulk", rng.randbytes(ROW_PAYLOAD), now) for i in range(64)]
                db.executemany("INSERT INTO memory_commit_log VALUES (?, ?, ?, ?)", batch)
                db.commit()
                pos += len(batch)
    finally:
        db.close()


def make_blob(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, WRITE_CHUNK)
            f.write(rng.randbytes(n))
            left -= n


def write_sample_snapshot(
    backend: Backend,
    *,
    tenant_id: int,
    snapshot_id: str,
    created_at_unix_micros: int | None = None,
    models: tuple[tuple[str, int], ...] = DEFAULT_MODELS,
    sqlite_rows: int = 100,
    sqlite_bytes: int | None = None,
    hnsw_bytes: int = 64 * 1024,
    checksums: bool = True,
    forget_floor: int | None = 50,
    seed: int | None = None,
) -> SnapshotManifest:
    """Build a snapshot and store it in ``backend``: content objects first, manifest last."""
    seed = tenant_id * 1_000_003 + sum(map(ord, snapshot_id)) if seed is None else seed
    created = created_at_unix_micros if created_at_unix_micros is not None else int(time.time() * 1e6)
    with tempfile.TemporaryDirectory(prefix="memrestore-sample-") as tmp:
        sqlite_path = Path(tmp, "data.sqlite")
        make_sqlite_checkpoint(sqlite_path, sqlite_rows, sqlite_bytes, seed)
        sqlite_key = f"{snapshot_id}/sqlite.db"
        backend.put_object(sqlite_key, sqlite_path)
        entries = []
        for index, (model, dim) in enumerate(models):
            blob = Path(tmp, f"hnsw-{index}.bin")
            make_blob(blob, hnsw_bytes, seed + index + 1)
            key = f"{snapshot_id}/hnsw-{index}.bin"
            backend.put_object(key, blob)
            entries.append(
                {
                    "embedding_model": model,
                    "vector_dim": dim,
                    "distance_metric": "cosine",
                    "source_log_watermark": 100,
                    "content_key": key,
                    "checksum": hash_file(blob)[1] if checksums else None,
                    "deleted_count_pending": 0,
                }
            )
        manifest = SnapshotManifest.model_validate(
            {
                "manifest_version": 1,
                "tenant_id": tenant_id,
                "snapshot_id": snapshot_id,
                "created_at_unix_micros": created,
                "wire_version": {"major": 1, "minor": 0},
                "table_schema_versions": {"memory_commit_log": 1, "memories": 1},
                "oplog_watermark": 100,
                "oplog_floor": 1,
                "forget_floor": forget_floor,
                "sqlite_checkpoint_key": sqlite_key,
                "sqlite_checkpoint_checksum": hash_file(sqlite_path)[1] if checksums else None,
                "hnsw_snapshots": entries,
                "encryption": None,
                "label": "sample",
            }
        )
    put_manifest(backend, manifest)
    return manifest
