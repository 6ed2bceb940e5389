"""The data a restore carries from step to step: mode, destination state, plan."""

from __future__ import annotations

import enum
import re
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field

from memrestore.backends.manifest import WireVersion
from memrestore.tasks.modes import RestoreMode  # defined there (no Prefect), importable from here

#: The newest wire version memrestore speaks, and the default destination's.
NEWEST_WIRE_VERSION = WireVersion(major=1, minor=0)

_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class ItemKind(str, enum.Enum):
    SQLITE_CHECKPOINT = "sqlite_checkpoint"
    HNSW_SNAPSHOT = "hnsw_snapshot"


class DestinationState(BaseModel):
    """What the destination service is: FORMAT.md's rules are checked against it."""

    model_config = ConfigDict(frozen=True)

    wire_version: WireVersion = NEWEST_WIRE_VERSION
    tombstone_floor: int | None = Field(default=None, ge=0, le=2**64 - 1)
    embedding_model: str | None = None


class PlanItem(BaseModel):
    """One blob to restore: where it comes from, what it must hash to, where it goes."""

    model_config = ConfigDict(frozen=True)

    kind: ItemKind
    embedding_model: str | None = None
    content_key: str
    expected_checksum: str | None
    #: Path relative to the data dir, '/'-separated (e.g. ``tenant_1/hnsw/minilm.bin``).
    destination: str
    #: Size reported by the backend, once measured; ``None`` before.
    size: int | None = None

    @property
    def label(self) -> str:
        """``sqlite_checkpoint`` or ``hnsw:<model>``, as the service's own outcome names items."""
        if self.kind is ItemKind.SQLITE_CHECKPOINT:
            return "sqlite_checkpoint"
        return f"hnsw:{self.embedding_model}"


class RestorePlan(BaseModel):
    """A validated snapshot, ready to restore: nothing about it is left to decide."""

    model_config = ConfigDict(frozen=True)

    backend: str
    tenant_id: int
    snapshot_id: str
    created_at_unix_micros: int
    destination_state: DestinationState
    items: list[PlanItem]
    warnings: list[str] = []
    #: The tables the manifest's ``table_schema_versions`` names: the checkpoint must have them.
    table_names: list[str] = []

    @property
    def tenant_dir(self) -> str:
        return tenant_dir_name(self.tenant_id)

    @property
    def total_bytes(self) -> int | None:
        sizes = [i.size for i in self.items]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[misc]


def tenant_dir_name(tenant_id: int) -> str:
    return f"tenant_{tenant_id}"


def safe_model_file_name(embedding_model: str) -> str:
    """The model name with every character outside ``A-Z a-z 0-9 . _ -`` replaced by ``_``."""
    return _UNSAFE_NAME_CHARS.sub("_", embedding_model) + ".bin"


def sqlite_destination(tenant_id: int) -> str:
    return str(PurePosixPath(tenant_dir_name(tenant_id), "data.sqlite"))


def hnsw_destination(tenant_id: int, embedding_model: str) -> str:
    return str(PurePosixPath(tenant_dir_name(tenant_id), "hnsw", safe_model_file_name(embedding_model)))
