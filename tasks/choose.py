"""Choosing the snapshot a restore takes: by id, the tenant's latest, or its latest as of a time;
and the refusals, which name what there is (the ids close to a mistyped one, the tenants there
are, the snapshots nearest the time). Plain functions, no Prefect: ``memrestore snapshots`` uses
them before Prefect is loaded, and the restore's first step is :func:`fetch_manifest`."""

from __future__ import annotations

import difflib
import logging
import shlex

from memrestore.backends import Backend, list_snapshots, read_manifest
from memrestore.backends.errors import ObjectNotFoundError, RestoreError
from memrestore.backends.listing import SnapshotEntry, SnapshotListing, format_instant
from memrestore.backends.manifest import SnapshotManifest, check_snapshot_id
from memrestore.tasks import units
from memrestore.tasks.errors import SnapshotChoiceError, SnapshotNotFoundError

LATEST = "latest"
#: How many tenants, close snapshot ids, or snapshots near a time a refusal names at most.
NAMED_AT_MOST = 10
CLOSE_IDS = 3

log = logging.getLogger(__name__)


def snapshots_command(backend: Backend, tenant_id: int | None = None) -> str:
    """The ``memrestore snapshots`` command that lists this backend (and tenant), ready to paste."""
    tenant = f" --tenant {tenant_id}" if tenant_id is not None else ""
    return f"`memrestore snapshots --backend {shlex.quote(backend.url)}{tenant}`"


def fetch_manifest(backend: Backend, tenant_id: int | None, snapshot: str = LATEST,
                   as_of: int | None = None) -> SnapshotManifest:
    """The manifest of ``snapshot`` (an id, or ``latest``) for ``tenant_id`` (any if None).

    ``latest`` is the tenant's newest snapshot by the manifest's ``created_at_unix_micros``,
    never by object modification times (a copy or re-upload changes those); with ``as_of``
    (unix microseconds), the newest created at or before that instant. ``as_of`` with a
    snapshot id is refused: each picks the snapshot.
    """
    if as_of is not None and snapshot != LATEST:
        raise SnapshotChoiceError(snapshot, format_instant(as_of))
    if snapshot == LATEST:
        if tenant_id is None:
            raise SnapshotNotFoundError("'latest' needs a tenant: pass --tenant N, or a snapshot id")
        return _latest(backend, tenant_id, as_of)

    check_snapshot_id(snapshot)  # a hostile id is refused before any I/O
    try:
        manifest = read_manifest(backend, snapshot)
    except ObjectNotFoundError:
        raise SnapshotNotFoundError(
            f"snapshot {snapshot!r} not found in backend {backend.url} (no {snapshot}/manifest.json; "
            "a folder without a manifest is an unfinished snapshot)."
            f"{_did_you_mean(backend, tenant_id, snapshot)} List the snapshots with "
            f"{snapshots_command(backend, tenant_id)}."
        ) from None
    if tenant_id is not None and manifest.tenant_id != tenant_id:
        raise SnapshotNotFoundError(
            f"snapshot {snapshot!r} belongs to tenant {manifest.tenant_id}, not tenant {tenant_id}; "
            "check --tenant, or pick one of this tenant's snapshots with "
            f"{snapshots_command(backend, tenant_id)}."
        )
    return manifest


def _latest(backend: Backend, tenant_id: int, as_of: int | None) -> SnapshotManifest:
    # Every tenant is listed (it costs what one tenant's listing does: the manifests are read or
    # taken from the cache either way), so that an unknown tenant is told the ones there are.
    listing = list_snapshots(backend)
    for sid, why in sorted(listing.unreadable.items()):
        log.warning("skipping snapshot %s whose manifest cannot be read: %s", sid, why)
    return choose_latest(backend, listing, tenant_id, as_of)


def choose_latest(backend: Backend, listing: SnapshotListing, tenant_id: int,
                  as_of: int | None = None) -> SnapshotManifest:
    """The tenant's latest in ``listing`` (of every tenant), as of ``as_of`` when given; else
    refused, naming the tenants there are, or the tenant's snapshots nearest after the time."""
    chosen = listing.latest(tenant_id, as_of)
    if chosen is None:
        raise SnapshotNotFoundError(no_snapshot_message(backend, listing, tenant_id, as_of))
    return chosen


def no_snapshot_message(backend: Backend, listing: SnapshotListing, tenant_id: int,
                        as_of: int | None = None) -> str:
    """Why ``listing`` has no latest for the tenant (as of ``as_of``), and what there is instead."""
    skipped = f" ({len(listing.unreadable)} unreadable manifests skipped)" if listing.unreadable else ""
    mine = listing.tenant_entries(tenant_id)
    if not mine:
        return (f"backend {backend.url} holds no finished snapshot of tenant {tenant_id}{skipped}; "
                f"{tenants_there(listing)} Check the tenant id and the backend with "
                f"{snapshots_command(backend)}.")
    assert as_of is not None, "a tenant with snapshots has a latest unless a time rules them out"
    return (f"tenant {tenant_id} has no finished snapshot created at or before {format_instant(as_of)} "
            f"in backend {backend.url}{skipped}; {nearest_after(mine, as_of)} Pass a later --as-of, or "
            f"see them all with {snapshots_command(backend, tenant_id)}.")


def tenants_there(listing: SnapshotListing) -> str:
    tenants = listing.tenant_ids()
    if not tenants:
        return "it holds no finished snapshot at all."
    named = ", ".join(map(str, tenants[:NAMED_AT_MOST]))
    more = f" and {len(tenants) - NAMED_AT_MOST} more" if len(tenants) > NAMED_AT_MOST else ""
    return f"it holds snapshots of tenant{'s' if len(tenants) > 1 else ''} {named}{more}."


def nearest_after(entries: list[SnapshotEntry], as_of: int) -> str:
    """The tenant's snapshots nearest after ``as_of`` (all are after it), oldest first."""
    near = entries[:CLOSE_IDS]
    named = "; ".join(
        f"{e.snapshot_id}, created {format_instant(e.created_at_unix_micros)} "
        f"({units.age((e.created_at_unix_micros - as_of) / 1e6)} after it)" for e in near)
    return f"its oldest {'are' if len(near) > 1 else 'is'} {named}."


def _did_you_mean(backend: Backend, tenant_id: int | None, snapshot: str) -> str:
    """`` Did you mean 'x'?`` for the snapshot ids (of the tenant, when given) closest to a
    mistyped one; empty when none is close or the backend cannot be listed now."""
    try:
        listing = list_snapshots(backend, tenant_id)
    except RestoreError:
        return ""
    ids = [e.snapshot_id for e in listing.entries]
    close = difflib.get_close_matches(snapshot, ids, n=CLOSE_IDS, cutoff=0.6)
    if not close:
        return ""
    return f" Did you mean {' or '.join(repr(c) for c in close)}?"
