"""The benchmark's inputs: sample snapshots built once and cached, reused while their spec holds.

Every snapshot is written by :func:`backends.demo_snapshots.write_sample_snapshot`, exactly as the memory
service writes them (a real SQLite checkpoint, one HNSW blob per model, manifest last). A stamp
file records the spec each was built from; a snapshot whose stamp matches is reused as it is,
any other is rebuilt. The cache lives under ``benchmarks/.data/`` (gitignored) unless told
otherwise.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from memrestore.backends import LocalBackend
from memrestore.backends.base import read_manifest
from memrestore.backends.demo_snapshots import write_sample_snapshot

MiB = 1024 * 1024
GiB = 1024 * MiB

#: Three embedding models, as in the issue: one SQLite checkpoint and three HNSW blobs.
MODELS: tuple[tuple[str, int], ...] = (("minilm", 384), ("e5-base", 768), ("bge-large", 1024))
#: The model the destination serves (restores need one named when a snapshot holds several).
SERVED_MODEL = MODELS[0][0]

#: Bump when the way inputs are built changes, so that old caches are rebuilt.
CACHE_VERSION = 1


@dataclass(frozen=True)
class SnapshotSpec:
    """One cached snapshot: a SQLite checkpoint of ``sqlite_bytes`` and one HNSW blob of
    ``hnsw_bytes`` per model."""

    snapshot_id: str
    tenant_id: int
    #: None: a small checkpoint of 100 rows (tens of KiB); a size grows it in 4 MiB steps.
    sqlite_bytes: int | None
    hnsw_bytes: int
    models: tuple[tuple[str, int], ...] = MODELS

    @property
    def total_bytes(self) -> int:
        """The intended size (the checkpoint ends a little above its target: SQLite grows in pages)."""
        return (self.sqlite_bytes or 0) + self.hnsw_bytes * len(self.models)

    def stamp(self) -> dict:
        return {"cache_version": CACHE_VERSION, **asdict(self)}


#: Below this, a checkpoint is left at its natural small size: the sample writer grows one in
#: 4 MiB batches, which would overshoot a small target many times over.
SMALL_SQLITE = 16 * MiB


def even_snapshot(snapshot_id: str, tenant_id: int, total: int) -> SnapshotSpec:
    """A snapshot of about ``total`` bytes: SQLite and three HNSW blobs of ``total / 4`` each
    (small snapshots: a small checkpoint and three blobs of ``total / 3``)."""
    if total < 4 * SMALL_SQLITE:
        return SnapshotSpec(snapshot_id, tenant_id, sqlite_bytes=None, hnsw_bytes=total // len(MODELS))
    quarter = total // (1 + len(MODELS))
    return SnapshotSpec(snapshot_id, tenant_id, sqlite_bytes=quarter, hnsw_bytes=quarter)


def _stamp_path(root: Path, snapshot_id: str) -> Path:
    return root.parent / f"{root.name}.stamps" / f"{snapshot_id}.json"


def is_cached(root: Path, spec: SnapshotSpec) -> bool:
    stamp = _stamp_path(root, spec.snapshot_id)
    if not stamp.is_file() or json.loads(stamp.read_text()) != json.loads(json.dumps(spec.stamp())):
        return False
    try:
        read_manifest(LocalBackend(root), spec.snapshot_id)
    except Exception:  # noqa: BLE001 - anything unreadable is rebuilt
        return False
    return True


def ensure_snapshot(root: Path, spec: SnapshotSpec, log=print) -> bool:
    """Build ``spec`` into the local backend folder ``root`` unless it is cached there.

    Returns True when it was built now, False when the cached copy was reused.
    """
    if is_cached(root, spec):
        return False
    stamp = _stamp_path(root, spec.snapshot_id)
    stamp.unlink(missing_ok=True)
    shutil.rmtree(root / spec.snapshot_id, ignore_errors=True)
    log(f"building snapshot {spec.snapshot_id} ({spec.total_bytes / MiB:.0f} MiB) in {root}")
    write_sample_snapshot(
        LocalBackend(root),
        tenant_id=spec.tenant_id,
        snapshot_id=spec.snapshot_id,
        models=spec.models,
        sqlite_bytes=spec.sqlite_bytes,
        hnsw_bytes=spec.hnsw_bytes,
        created_at_unix_micros=1_700_000_000_000_000 + spec.tenant_id,
    )
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(spec.stamp()))
    return True


def content_paths(root: Path, snapshot_id: str) -> list[Path]:
    """The snapshot's content files in the backend folder (not the manifest), in manifest order."""
    manifest = read_manifest(LocalBackend(root), snapshot_id)
    keys = [manifest.sqlite_checkpoint_key] + [e.content_key for e in manifest.hnsw_snapshots]
    return [root / key for key in keys]
