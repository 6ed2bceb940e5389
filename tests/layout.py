"""The invariant a finished restore leaves, checked by the tests after their restores: the
restored tenant dir holds exactly FORMAT.md's layout of its snapshot (``data.sqlite`` and one
``hnsw/<model>.bin`` a model, nothing beside them: no ``-wal``, ``-shm`` or ``-journal``), every
file has the manifest's blake3, and no ``.restore*`` bookkeeping is left at the data dir's top.

Written apart from the product's own check (``tasks/checks.py``), so that it does not share that
check's mistakes: it lists with ``rglob`` and hashes with ``blake3`` here.
"""

from __future__ import annotations

from pathlib import Path

import blake3

from memrestore.backends.manifest import SnapshotManifest

#: What SQLite leaves beside a database it opened: the tests' autouse guard looks for these.
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def expected_layout(manifest: SnapshotManifest) -> dict[str, str | None]:
    """The tenant's files, relative to the data dir, each with its blake3 from the manifest."""
    tenant = f"tenant_{manifest.tenant_id}"
    files = {f"{tenant}/data.sqlite": manifest.sqlite_checkpoint_checksum}
    for entry in manifest.hnsw_snapshots:
        name = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in entry.embedding_model)
        files[f"{tenant}/hnsw/{name}.bin"] = entry.checksum
    return files


def assert_restored_layout(data_dir: Path, manifest: SnapshotManifest) -> None:
    """``data_dir`` holds ``manifest``'s tenant exactly as FORMAT.md lays it out, and no bookkeeping."""
    expected = expected_layout(manifest)
    tenant = data_dir / f"tenant_{manifest.tenant_id}"
    found = sorted(p.relative_to(data_dir).as_posix() for p in tenant.rglob("*") if not p.is_dir() or p.is_symlink())
    assert found == sorted(expected), f"{tenant} holds {found}, FORMAT.md's layout is {sorted(expected)}"
    for rel, checksum in expected.items():
        if checksum is not None:
            assert blake3.blake3((data_dir / rel).read_bytes()).hexdigest() == checksum, f"{rel}'s blake3"
    ours = sorted(p.name for p in data_dir.iterdir() if p.name.startswith(".restore"))
    assert ours == [], f"{data_dir} keeps {ours} after a finished restore"


def data_dir_for(mode, root: Path, tenant_id: int) -> Path:
    """What each mode's destination holds before a restore of ``tenant_id`` (what a refusal must
    leave, and what the mode must keep or replace): nothing for new_cluster; another tenant for
    single_tenant; the tenant's old dir, another tenant and a service file for the modes that
    replace."""
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    if mode.value in ("single_tenant", "replace_tenant", "wipe_and_restore"):
        (data_dir / "tenant_9").mkdir()
        (data_dir / "tenant_9" / "data.sqlite").write_bytes(b"tenant 9's database")
    if mode.value in ("replace_tenant", "wipe_and_restore"):
        (data_dir / f"tenant_{tenant_id}").mkdir()
        (data_dir / f"tenant_{tenant_id}" / "data.sqlite").write_bytes(b"the working database the service runs on")
        (data_dir / "service.conf").write_text("port = 7000\n")
    return data_dir


def sqlite_side_files(root: Path) -> list[Path]:
    """Every ``data.sqlite-wal``/``-shm``/``-journal`` under ``root``: a restore or a check left it."""
    return sorted(p for suffix in SQLITE_SIDE_SUFFIXES for p in root.rglob(f"data.sqlite{suffix}"))
