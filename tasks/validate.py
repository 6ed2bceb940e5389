"""Validation: FORMAT.md's rules, a manifest against a destination, producing a RestorePlan.

Pure: no I/O, so it is never retried; every refusal happens here, before a byte is written.
"""

from __future__ import annotations

from memrestore.backends.manifest import SnapshotManifest
from memrestore.tasks.errors import (
    ChecksumsRequiredError,
    DestinationCollisionError,
    FileNameTooLongError,
    ForgottenMemoriesError,
    ModelMissingError,
    WireVersionError,
)
from memrestore.tasks.plan import (
    DestinationState,
    ItemKind,
    PlanItem,
    RestorePlan,
    hnsw_destination,
    sqlite_destination,
)


#: NAME_MAX on Linux file systems: a longer HNSW file name cannot exist in any data dir.
MAX_FILE_NAME_BYTES = 255


def plan_items(manifest: SnapshotManifest) -> list[PlanItem]:
    """The blobs of a snapshot, SQLite checkpoint first, with their destinations."""
    items = [
        PlanItem(
            kind=ItemKind.SQLITE_CHECKPOINT,
            content_key=manifest.sqlite_checkpoint_key,
            expected_checksum=manifest.sqlite_checkpoint_checksum,
            destination=sqlite_destination(manifest.tenant_id),
        )
    ]
    for entry in manifest.hnsw_snapshots:
        items.append(
            PlanItem(
                kind=ItemKind.HNSW_SNAPSHOT,
                embedding_model=entry.embedding_model,
                content_key=entry.content_key,
                expected_checksum=entry.checksum,
                destination=hnsw_destination(manifest.tenant_id, entry.embedding_model),
            )
        )
    return items


def unverified_warnings(items: list[PlanItem], consequence: str = "will be restored unverified") -> list[str]:
    return [
        f"{item.label} ({item.content_key}) has no checksum in the manifest: it {consequence}"
        for item in items
        if item.expected_checksum is None
    ]


def hash_plan(manifest: SnapshotManifest, backend_url: str) -> RestorePlan:
    """The plan of a verify: every blob of the snapshot, to be hashed against its checksum, with
    no destination to check it against."""
    items = plan_items(manifest)
    return RestorePlan(
        backend=backend_url,
        tenant_id=manifest.tenant_id,
        snapshot_id=manifest.snapshot_id,
        created_at_unix_micros=manifest.created_at_unix_micros,
        destination_state=DestinationState(),
        items=items,
        warnings=unverified_warnings(items, "can only be hashed, not verified"),
    )


def validate(
    manifest: SnapshotManifest,
    destination: DestinationState,
    backend_url: str,
    require_checksums: bool = False,
) -> RestorePlan:
    """Check ``manifest`` against ``destination`` and return the plan, or refuse.

    The embedding model is checked only when the destination names one (FORMAT.md's
    DestinationState): the snapshot must then hold an index of it. Named or not, every HNSW
    index of the snapshot is restored: the tenant's whole state.
    """
    sid = manifest.snapshot_id

    have, want = manifest.wire_version, destination.wire_version
    if have.major != want.major or have.minor > want.minor:
        raise WireVersionError(sid, have, want)

    floor = destination.tombstone_floor
    if floor is not None and (manifest.forget_floor is None or manifest.forget_floor < floor):
        raise ForgottenMemoriesError(sid, manifest.forget_floor, floor)

    if destination.embedding_model is not None and destination.embedding_model not in manifest.embedding_models:
        raise ModelMissingError(sid, destination.embedding_model, manifest.embedding_models)

    items = plan_items(manifest)

    for item in items:
        name = item.destination.rsplit("/", 1)[1]
        if len(name.encode()) > MAX_FILE_NAME_BYTES:
            raise FileNameTooLongError(sid, item.embedding_model, len(name.encode()), MAX_FILE_NAME_BYTES)

    by_destination: dict[str, PlanItem] = {}
    for item in items:
        other = by_destination.setdefault(item.destination, item)
        if other is not item:
            raise DestinationCollisionError(sid, other.label, item.label, item.destination)

    unverified = [item for item in items if item.expected_checksum is None]
    if unverified and require_checksums:
        raise ChecksumsRequiredError(sid, [i.label for i in unverified])
    warnings = unverified_warnings(items)

    return RestorePlan(
        backend=backend_url,
        tenant_id=manifest.tenant_id,
        snapshot_id=sid,
        created_at_unix_micros=manifest.created_at_unix_micros,
        destination_state=destination,
        items=items,
        warnings=warnings,
        table_names=sorted(manifest.table_schema_versions),
    )
