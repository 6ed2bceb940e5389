"""The snapshot manifest, exactly as FORMAT.md (and the service's serde defaults) put it.

Parsing is strict where a loose reading could restore the wrong thing (integers must be JSON
integers in range, checksums 64 lowercase hex digits, keys clean relative paths) and lenient where
FORMAT.md asks for forward compatibility (unknown fields are ignored).
"""

from __future__ import annotations

import enum
import json
import re
from typing import Annotated, Any

import pydantic
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from memrestore.backends.errors import InvalidKeyError, InvalidManifestError, InvalidSnapshotIdError, shown

#: The newest manifest version memrestore understands; a newer one is refused.
CURRENT_MANIFEST_VERSION = 1

U64 = Annotated[int, Field(strict=True, ge=0, le=2**64 - 1)]
U32 = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]
Checksum = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

_SNAPSHOT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# S3's own limit on a key; a longer key cannot name a real object anywhere we read from.
MAX_KEY_BYTES = 1024
#: The largest manifest read. Real ones are a few KiB (one entry per embedding model); the bound
#: keeps a hostile or corrupt one from costing gigabytes of memory to parse.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024


def check_snapshot_id(snapshot_id: str) -> str:
    """Return ``snapshot_id`` if FORMAT.md allows it, else raise :class:`InvalidSnapshotIdError`."""
    if (
        not isinstance(snapshot_id, str)
        or not _SNAPSHOT_ID.fullmatch(snapshot_id)
        or snapshot_id in (".", "..")
    ):
        raise InvalidSnapshotIdError(str(snapshot_id))
    return snapshot_id


def check_content_key(key: str) -> str:
    """Return ``key`` if it is a clean relative ``/``-separated path, else raise InvalidKeyError."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(str(key), "it is empty")
    if "\x00" in key:
        raise InvalidKeyError(key, "it contains a NUL character")
    if "\\" in key:
        raise InvalidKeyError(key, "it contains a backslash")
    if key.startswith("/"):
        raise InvalidKeyError(key, "it is absolute")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKeyError(key, "it is not valid UTF-8") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"it is {size} bytes long, above S3's {MAX_KEY_BYTES}")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            what = f"a {segment!r}" if segment else "an empty"
            raise InvalidKeyError(key, f"it has {what} segment")
    return key


def _key_for_pydantic(v: str) -> str:
    """:func:`check_content_key` as a pydantic validator: its refusal as the ValueError that
    pydantic reports with the field's place in the manifest."""
    try:
        return check_content_key(v)
    except InvalidKeyError as exc:
        raise ValueError(f"content key {shown(v)} is not a safe relative path ({exc.reason})") from exc


#: A manifest field naming a content object: a string that :func:`check_content_key` accepts.
ContentKey = Annotated[str, AfterValidator(_key_for_pydantic)]


class DistanceMetric(str, enum.Enum):
    """How an HNSW index measures distance; serde's PascalCase spellings are accepted too."""

    COSINE = "cosine"
    EUCLIDEAN = "euclidean"
    DOT_PRODUCT = "dot_product"

    @classmethod
    def _missing_(cls, value: object) -> DistanceMetric | None:
        aliases = {"Cosine": cls.COSINE, "Euclidean": cls.EUCLIDEAN, "DotProduct": cls.DOT_PRODUCT}
        return aliases.get(value) if isinstance(value, str) else None


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class WireVersion(_Model):
    """The protocol version a snapshot was written with, or a destination speaks."""

    major: U32
    minor: U32

    @classmethod
    def parse(cls, text: str) -> WireVersion:
        """Parse ``MAJOR.MINOR`` (as given on the command line)."""
        match = re.fullmatch(r"(\d{1,9})\.(\d{1,9})", text.strip())
        if not match:
            raise ValueError(f"wire version {text!r} is not MAJOR.MINOR, e.g. 1.0")
        return cls(major=int(match[1]), minor=int(match[2]))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


class EncryptionMetadata(_Model):
    """How the content objects were encrypted; memrestore restores the bytes as they are."""

    algorithm: str
    dek_id: str
    iv_b64: str


class HnswSnapshotEntry(_Model):
    """One HNSW index blob, for one embedding model."""

    embedding_model: str
    vector_dim: U32
    distance_metric: DistanceMetric
    source_log_watermark: U64
    content_key: ContentKey
    checksum: Checksum | None = None
    deleted_count_pending: U64

    @field_validator("vector_dim")
    @classmethod
    def _positive_dim(cls, v: int) -> int:
        if v == 0:
            raise ValueError("vector_dim must be above 0")
        return v


class SnapshotManifest(_Model):
    """``<snapshot_id>/manifest.json``: what one snapshot of one tenant holds."""

    manifest_version: U32
    tenant_id: U64
    snapshot_id: str
    created_at_unix_micros: U64
    wire_version: WireVersion
    table_schema_versions: dict[str, U32]
    oplog_watermark: U64
    oplog_floor: U64
    forget_floor: U64 | None = None
    sqlite_checkpoint_key: ContentKey
    sqlite_checkpoint_checksum: Checksum | None = None
    hnsw_snapshots: list[HnswSnapshotEntry]
    encryption: EncryptionMetadata | None = None
    label: str | None = None

    @field_validator("snapshot_id")
    @classmethod
    def _snapshot_id(cls, v: str) -> str:
        try:
            return check_snapshot_id(v)
        except InvalidSnapshotIdError as exc:
            raise ValueError(f"snapshot id {shown(v)} is outside A-Z a-z 0-9 . _ - (1-128 chars)") from exc

    @field_validator("manifest_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if not 1 <= v <= CURRENT_MANIFEST_VERSION:
            raise ValueError(
                f"manifest_version {v} is not one memrestore knows (it reads 1 to "
                f"{CURRENT_MANIFEST_VERSION}); upgrade memrestore to restore this snapshot"
            )
        return v

    @model_validator(mode="after")
    def _invariants(self) -> SnapshotManifest:
        w = self.oplog_watermark
        if self.oplog_floor > w:
            raise ValueError(f"oplog_floor {self.oplog_floor} is above oplog_watermark {w}")
        if self.forget_floor is not None and self.forget_floor > w:
            raise ValueError(f"forget_floor {self.forget_floor} is above oplog_watermark {w}")
        seen: set[str] = set()
        for entry in self.hnsw_snapshots:
            if entry.source_log_watermark > w:
                raise ValueError(
                    f"HNSW snapshot {shown(entry.embedding_model)} has source_log_watermark "
                    f"{entry.source_log_watermark}, above oplog_watermark {w}"
                )
            if entry.embedding_model in seen:
                raise ValueError(f"embedding model {shown(entry.embedding_model)} appears twice")
            seen.add(entry.embedding_model)
        keys = [self.sqlite_checkpoint_key] + [e.content_key for e in self.hnsw_snapshots]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"content key {shown(duplicates[0])} is named by more than one item")
        return self

    @property
    def embedding_models(self) -> list[str]:
        return [e.embedding_model for e in self.hnsw_snapshots]

    def to_json(self) -> bytes:
        """The manifest as the service writes it (every field, ``null`` where unset)."""
        return self.model_dump_json(indent=2).encode()


class _DuplicateField(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """serde refuses a JSON object with a member twice; so do we (else the last one would win)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateField(f"field {shown(key)} appears twice in one object")
        out[key] = value
    return out


def parse_manifest(raw: bytes | str, where: str) -> SnapshotManifest:
    """Parse manifest JSON; any problem becomes an :class:`InvalidManifestError` naming ``where``."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidManifestError(
            where, f"it is {len(raw)} bytes, above the {MAX_MANIFEST_BYTES} a manifest may have")
    try:
        doc = json.loads(raw, object_pairs_hook=_refuse_duplicates)
    except _DuplicateField as exc:
        raise InvalidManifestError(where, str(exc)) from None
    except RecursionError:
        raise InvalidManifestError(where, "it is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
        raise InvalidManifestError(where, f"it is not valid JSON ({exc})") from None
    try:
        return SnapshotManifest.model_validate(doc)
    except pydantic.ValidationError as exc:
        raise InvalidManifestError(where, _describe(exc)) from None
    except RecursionError:
        raise InvalidManifestError(where, "it is nested too deeply") from None


def _describe(exc: pydantic.ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(
            str(part) if isinstance(part, int) or (part.isidentifier() and len(part) <= 64) else shown(part)
            for part in err["loc"]
        ) or "top level"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}")
    more = exc.error_count() - len(problems)
    return "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")
