"""Errors of the restore side, and the one drawing of every error memrestore raises on purpose.

Each class sits in the module named beside it (under ``memrestore.``), one module per layer:
``backends/errors.py`` (so that ``backends/`` imports nothing from the layers above it), this one,
and ``flows/errors.py`` (the Prefect side's). ``tests/test_error_tree.py`` holds
this drawing to the code: every :class:`RestoreError` subclass is drawn, under its own parent,
in its own module, and nothing drawn is missing::

    RestoreError                          backends.errors  root: an error raised on purpose
    ├── BadInputError                     backends.errors  input that can never work, whatever is retried
    │   ├── InvalidKeyError               backends.errors  a content key that is not a clean relative path
    │   ├── InvalidSnapshotIdError        backends.errors  a snapshot id outside FORMAT.md's alphabet
    │   ├── InvalidManifestError          backends.errors  manifest JSON that does not parse or breaks a rule
    │   ├── BackendUrlError               backends.errors  a --backend that names no usable store
    │   ├── RateSpellingError             backends.errors  a --limit-rate that is not a rate (also ValueError)
    │   ├── InstantSpellingError          backends.errors  an --as-of that is not an ISO 8601 time (also ValueError)
    │   ├── SnapshotNotFoundError         tasks.errors     no such snapshot, or none for the tenant (as of a time)
    │   ├── SnapshotChoiceError           tasks.errors     a snapshot id and --as-of both given
    │   ├── ShareSpellingError            tasks.errors     a --sample that is neither 5% nor 10G (also ValueError)
    │   └── ValidationHookError           tasks.errors     the operator's validation cannot run as given
    ├── BackendError                      backends.errors  the store could not serve a request
    │   ├── TransientBackendError         backends.errors  throttling, 5xx, timeouts, dropped connections: retried
    │   └── PermanentBackendError         backends.errors  fails on the first attempt: not retried
    │       ├── ObjectNotFoundError       backends.errors
    │       └── AccessDeniedError         backends.errors
    ├── RestoreRefusedError               tasks.errors     the destination or the plan says no; nothing written
    │   ├── IncompatibleSnapshotError     tasks.errors     the snapshot cannot go into this destination
    │   │   ├── WireVersionError          tasks.errors     a wire version the destination cannot read
    │   │   ├── ForgottenMemoriesError    tasks.errors     older than the forget floor: would bring memories back
    │   │   ├── ModelMissingError         tasks.errors     no HNSW index for the named model
    │   │   ├── FileNameTooLongError      tasks.errors     a model name that makes an HNSW file name too long
    │   │   ├── DestinationCollisionError tasks.errors     two blobs that would be written to one file
    │   │   └── ChecksumsRequiredError    tasks.errors     --require-checksums and an item without blake3
    │   ├── DataDirNotEmptyError          tasks.errors     new_cluster on a data dir with entries
    │   ├── TenantPathOccupiedError       tasks.errors     single_tenant on a tenant dir with entries
    │   ├── UnsafeDestinationError        tasks.errors     a symlink or a file where a directory must be
    │   ├── LeftoverAsideError            tasks.errors     old data set aside by a restore whose marker was removed
    │   ├── InsufficientSpaceError        tasks.errors     the data dir's file system cannot hold the snapshot
    │   ├── RestoreInProgressError        tasks.errors     a marker, or another restore holding the lock
    │   ├── MarkerVanishedError           tasks.errors     this restore's marker went or was replaced mid-restore
    │   ├── ResumeRefusedError            tasks.errors     --resume or abort of a marker it must not act on
    │   │   ├── ForeignMarkerError        tasks.errors     a marker memrestore did not write
    │   │   └── OtherRestoreError         tasks.errors     --resume with another restore's arguments
    │   └── NothingToAbortError           tasks.errors     abort with no marker
    ├── ChecksumMismatchError             tasks.errors     a blob's blake3 differs from the manifest
    ├── RestoredCopyCheckError            tasks.errors     a restored copy fails its check (SQLite, tables, HNSW)
    │   └── ValidationFailedError         tasks.errors     it fails the operator's own validation
    │       ├── ValidationTimedOutError   tasks.errors     the validation ran past its time limit; killed
    │       └── ValidatorChangedCopyError tasks.errors     the validation changed the copy's bytes
    ├── ScratchDirError                   tasks.errors     a drill's scratch dir cannot be used
    ├── DestinationIOError                tasks.errors     writing the data dir failed (disk full, EIO)
    ├── RollbackFailedError               tasks.errors     a failed restore could not be undone; marker kept
    ├── LocalServerError                  flows.errors     the local Prefect server cannot start, answer or stop
    ├── FleetError                        flows.errors     a fleet drill's deployment is not there
    └── ServeError                        flows.errors     ``serve`` has no Prefect API to serve to

Not drawn, on purpose: ``backends.manifest_cache.ManifestCacheError`` derives from ``Exception``.
It never reaches a user: the listing catches it, logs it and reads the store instead.

Every message says what was found and what to do next.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from memrestore.backends.errors import BadInputError, RestoreError, shown
from memrestore.tasks import units

if TYPE_CHECKING:
    from memrestore.tasks.validation import Validation, ValidationResult


class SnapshotNotFoundError(BadInputError):
    """The asked-for snapshot does not exist, or the tenant has none."""


class ShareSpellingError(BadInputError, ValueError):
    """A sampled verify's share that is neither a percent (``5%``) nor a byte count (``10G``)."""


class SnapshotChoiceError(BadInputError):
    """A snapshot id and an ``--as-of`` time both given: each picks the snapshot."""

    def __init__(self, snapshot: str, as_of: str) -> None:
        self.snapshot, self.as_of = snapshot, as_of
        super().__init__(
            f"both a snapshot id ({snapshot!r}) and --as-of ({as_of}) were given, and each picks the "
            "snapshot: pass --snapshot ID to restore that one, or --as-of TIME (with --snapshot "
            "latest or none) for the newest snapshot created at or before that time."
        )


class RestoreRefusedError(RestoreError):
    """A precondition failed; the data dir was not changed."""


class IncompatibleSnapshotError(RestoreRefusedError):
    """The snapshot cannot be restored into this destination (FORMAT.md's DestinationState rules)."""


class WireVersionError(IncompatibleSnapshotError):
    """The snapshot's wire version is not one the destination can read."""

    def __init__(self, snapshot_id: str, have: object, want: object) -> None:
        self.snapshot_id, self.have, self.want = snapshot_id, have, want
        super().__init__(
            f"snapshot {snapshot_id!r} was written with wire version {have}, and the destination speaks "
            f"{want}: a restore needs the same major version and a snapshot minor no newer than "
            "the destination's. Upgrade the destination service (then pass --wire-version), or "
            "restore a snapshot written by a compatible version."
        )


class ForgottenMemoriesError(IncompatibleSnapshotError):
    """The snapshot predates the destination's forget floor: it would bring forgotten memories back."""

    def __init__(self, snapshot_id: str, forget_floor: int | None, floor: int) -> None:
        self.snapshot_id, self.forget_floor, self.floor = snapshot_id, forget_floor, floor
        found = "no forget_floor" if forget_floor is None else f"forget_floor {forget_floor}"
        super().__init__(
            f"snapshot {snapshot_id!r} has {found}, but the destination has forgotten oplog positions "
            f"up to {floor} on request: restoring it would bring forgotten memories back. "
            f"Restore a snapshot taken after the forget (forget_floor >= {floor})."
        )


class ModelMissingError(IncompatibleSnapshotError):
    """The snapshot has no HNSW index for the destination's embedding model."""

    def __init__(self, snapshot_id: str, model: str, models: list[str]) -> None:
        self.snapshot_id, self.model, self.models = snapshot_id, model, models
        super().__init__(
            f"snapshot {snapshot_id!r} has no HNSW index for embedding model {shown(model)} (it has: "
            f"{', '.join(shown(m) for m in models) or 'none'}); pass the model the destination "
            "serves with --embedding-model, or restore a snapshot that has it."
        )


class FileNameTooLongError(IncompatibleSnapshotError):
    """An embedding model's name makes an HNSW file name longer than a file system allows."""

    def __init__(self, snapshot_id: str, model: str | None, length: int, limit: int) -> None:
        self.snapshot_id, self.model, self.length = snapshot_id, model, length
        super().__init__(
            f"snapshot {snapshot_id!r}: embedding model {shown(model)} makes a file name too long: "
            f"{length} bytes, above the {limit} a file system allows; the destination service could "
            "not store it either. Rename the model in the service and take a new snapshot."
        )


class DestinationCollisionError(IncompatibleSnapshotError):
    """Two blobs of the snapshot would be written to the same file."""

    def __init__(self, snapshot_id: str, first: str, second: str, destination: str) -> None:
        self.snapshot_id, self.destination = snapshot_id, destination
        super().__init__(
            f"snapshot {snapshot_id!r}: {shown(first)} and {shown(second)} would both be written to "
            f"{destination} (model names are made file-safe by replacing characters "
            "outside A-Z a-z 0-9 . _ -), so one would overwrite the other. Rename one "
            "embedding model in the service and take a new snapshot."
        )


class ChecksumsRequiredError(IncompatibleSnapshotError):
    """``--require-checksums``, and a blob of the snapshot has no checksum."""

    def __init__(self, snapshot_id: str, labels: list[str]) -> None:
        self.snapshot_id, self.labels = snapshot_id, labels
        super().__init__(
            f"snapshot {snapshot_id!r} has no checksum for {', '.join(labels)}, and "
            "--require-checksums is set: those bytes could not be verified. Restore a snapshot "
            "with checksums, or drop --require-checksums to restore them unverified."
        )


class DataDirNotEmptyError(RestoreRefusedError):
    """new_cluster on a data dir that holds something. The hint names the one-tenant mode that
    fits (never wipe_and_restore, which would delete every other tenant too)."""

    def __init__(self, path: Path, entries: list[str], tenant_id: int | None = None) -> None:
        self.path = path
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        tenant = f"tenant_{tenant_id}" if tenant_id is not None else None
        if tenant is not None and tenant in entries:
            hint = (f"To replace {tenant} only, with every other entry left as it is, use --mode "
                    "replace_tenant")
        else:
            hint = "To add this tenant beside what is there, use --mode single_tenant"
        super().__init__(
            f"data dir {path} is not empty (found: {shown}); new_cluster restores only into an "
            f"empty or absent data dir. {hint}; to start a fresh data dir, name an empty or absent one."
        )


class TenantPathOccupiedError(RestoreRefusedError):
    """single_tenant on a tenant dir that holds data: pointed to replace_tenant, the one-tenant
    replace, not to wipe_and_restore."""

    def __init__(self, tenant_id: int, path: Path) -> None:
        self.tenant_id = tenant_id
        self.path = path
        super().__init__(
            f"tenant {tenant_id} already has data in {path}; single_tenant will not overwrite "
            f"it. To replace tenant {tenant_id} only, use --mode replace_tenant: its current dir "
            "is set aside until the restored one is in place (and put back if the restore fails "
            "or is aborted), and every other tenant is left untouched."
        )


class UnsafeDestinationError(RestoreRefusedError):
    def __init__(self, path: Path, found: str) -> None:
        self.path = path
        super().__init__(
            f"{path} is {found}; memrestore only writes into real directories inside the data "
            "dir and never through symlinks. Replace it with a plain directory (or remove it) "
            "and run the restore again."
        )


class LeftoverAsideError(RestoreRefusedError):
    def __init__(self, aside: Path) -> None:
        self.path = aside
        super().__init__(
            f"{aside} holds data set aside by an interrupted restore (a wipe_and_restore or a "
            "replace_tenant) whose marker was removed: it may be the only copy of what the data dir "
            "held before. Move what you need from it "
            f"back into {aside.parent}, delete it, and run the restore again."
        )


class InsufficientSpaceError(RestoreRefusedError):
    def __init__(self, path: Path, needed: int, free: int) -> None:
        self.needed, self.free = needed, free
        super().__init__(
            f"the file system of {path} has {units.size(free)} free but the snapshot needs "
            f"{units.size(needed)} staged beside the current data; free some space or "
            "restore into a larger volume."
        )


class RestoreInProgressError(RestoreRefusedError):
    """A marker is in the data dir, or another restore holds its lock: one restore at a time.

    ``holder`` says who holds the marker (:func:`tasks.marker.describe_marker`); build one with
    :meth:`running` (its process holds the lock), :meth:`gone` (nothing holds it) or
    :meth:`locking` (a restore holds the lock and has not written its marker yet)."""

    def __init__(self, marker: Path, holder: str, locked: bool = False) -> None:
        self.marker = marker
        found = (
            f"another memrestore process holds the lock on {marker.parent} and is about to "
            f"write its marker {marker} ({holder})"
            if locked
            else f"marker {marker} exists ({holder})"
        )
        super().__init__(
            f"a restore is in progress in this data dir: {found}. "
            "If that restore is still running, wait for it. If it was interrupted, finish it "
            "with `memrestore restore ... --resume` or undo it with `memrestore abort "
            f"--data-dir {marker.parent}`; the service will not start while the marker exists."
        )

    @classmethod
    def running(cls, marker: Path, holder: str) -> "RestoreInProgressError":
        return cls(marker, holder + "; its process is still running")

    @classmethod
    def gone(cls, marker: Path, holder: str) -> "RestoreInProgressError":
        return cls(marker, holder + "; its process is gone (nothing holds the data dir's lock)")

    @classmethod
    def locking(cls, marker: Path) -> "RestoreInProgressError":
        return cls(marker, "starting, or just finishing", locked=True)


class MarkerVanishedError(RestoreRefusedError):
    """The marker this restore holds disappeared or was replaced while it ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        super().__init__(
            f"the restore marker {marker} vanished or was replaced mid-restore; another process "
            "is changing this data dir. Stop it, check the data dir, and run the restore again."
        )


class ResumeRefusedError(RestoreRefusedError):
    """``--resume`` or ``abort`` found a marker it must not act on."""


class ForeignMarkerError(ResumeRefusedError):
    """The marker was not written by memrestore: the service or an operator put it there."""

    def __init__(self, marker: Path, holder: str, action: str) -> None:
        self.marker = marker
        super().__init__(
            f"cannot {action}: marker {marker} was not written by memrestore ({holder}); the "
            "service or an operator put it there. Find out why before removing it by hand; "
            "memrestore will not touch it."
        )


class OtherRestoreError(ResumeRefusedError):
    """``--resume`` of a restore other than the interrupted one the marker names."""

    def __init__(self, data_dir: Path, found: tuple[str, int, str], asked: tuple[str, int, str]) -> None:
        self.path = data_dir
        self.found, self.asked = found, asked
        super().__init__(
            f"cannot resume: the interrupted restore in {data_dir} is of snapshot {found[0]!r}, "
            f"tenant {found[1]}, mode {found[2]}, not snapshot {asked[0]!r}, tenant {asked[1]}, "
            f"mode {asked[2]}. Resume it with those arguments, or undo it with `memrestore abort "
            f"--data-dir {data_dir}` first."
        )


class NothingToAbortError(RestoreRefusedError):
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir
        super().__init__(f"no restore to abort in {data_dir}: it holds no restore marker")


class ChecksumMismatchError(RestoreError):
    def __init__(self, key: str, expected: str, actual: str) -> None:
        self.key, self.expected, self.actual = key, expected, actual
        super().__init__(
            f"checksum mismatch for {key!r}: the manifest says blake3 {expected}, the backend's "
            f"bytes hash to {actual}. The object is corrupt or was replaced after the snapshot; "
            "nothing was written to the data dir. Restore an older snapshot."
        )


class DestinationIOError(RestoreError):
    def __init__(self, action: str, path: Path, exc: OSError) -> None:
        self.path = path
        self.errno = exc.errno
        super().__init__(
            f"{action} {path} failed: {exc.strerror or exc}. The data dir's previous contents "
            "are intact; fix the cause (free space, permissions, the disk) and run the restore "
            "again."
        )


class RollbackFailedError(RestoreError):
    def __init__(self, data_dir: Path, cause: BaseException, undo: BaseException) -> None:
        self.path = data_dir
        super().__init__(
            f"the restore into {data_dir} failed ({cause}), and undoing it failed too ({undo}). "
            "The marker is kept, so the service will not start on a half-restored data dir. "
            f"Fix the cause, then run `memrestore abort --data-dir {data_dir}` to put the previous "
            "contents back, or `memrestore restore ... --resume` to finish the restore."
        )


class RestoredCopyCheckError(RestoreError):
    """A restored copy, staged before a commit or a drill's, is not what the snapshot promised:
    the SQLite checkpoint fails ``quick_check``/``integrity_check`` or lacks a table the manifest
    names, or an HNSW file is missing or has a size other than the backend's."""


class ValidationHookError(BadInputError):
    """The operator's validation (tasks/validation.py) cannot run as given: a template placeholder
    that is not one, a program not found or not executable, a callable misspelled or not
    importable. Refused before anything is fetched; the message says what is wrong with the hook."""


def _output_ends(result: "ValidationResult") -> str:
    """The last lines of a validation's output, on one line, for a message."""
    from memrestore.tasks.validation import MESSAGE_LINES

    lines = [line.strip() for line in result.output.splitlines() if line.strip()][-MESSAGE_LINES:]
    return f" Its output ends: {' | '.join(lines)}." if lines else " It printed nothing."


class ValidationFailedError(RestoredCopyCheckError):
    """The copy fails the operator's own validation: their command exited non-zero, their
    callable returned False or a reason, or raised. ``result`` is the ValidationResult."""

    def __init__(self, validation: "Validation", result: "ValidationResult", root: Path, snapshot_id: str,
                 what: str = "staged") -> None:
        self.result, self.path, self.snapshot_id = result, root, snapshot_id
        super().__init__(
            f"the {what} copy of snapshot {snapshot_id!r} in {root} fails the operator's validation: "
            f"{result.reason} ({units.duration(result.seconds)}).{_output_ends(result)} {self._hint()}"
        )

    def _hint(self) -> str:
        return ("The service cannot use this copy: restore an older snapshot, or fix the validation "
                "(--validate-command, --validate-callable) if it is what is wrong.")


class ValidationTimedOutError(ValidationFailedError):
    """The operator's validation ran past its time limit; its process group was killed."""

    def _hint(self) -> str:
        return ("Raise --validate-timeout if the check needs longer, or find why it hangs; until it "
                "answers in time, this copy counts as failed.")


class ValidatorChangedCopyError(ValidationFailedError):
    """The operator's validation changed the copy's bytes (or removed or replaced a file of it):
    what a restore commits must be the snapshot's, so the copy is refused."""

    def __init__(self, validation: "Validation", result: "ValidationResult", root: Path, snapshot_id: str,
                 changed: list[str], what: str = "staged") -> None:
        self.result, self.path, self.snapshot_id, self.changed = result, root, snapshot_id, changed
        RestoredCopyCheckError.__init__(
            self,
            f"the operator's validation ({validation.describe()}) changed the {what} copy of snapshot "
            f"{snapshot_id!r} in {root}: {'; '.join(changed)}. What a restore commits must be the "
            "snapshot's own bytes, so this copy is refused. Make the validator open the copy read-only "
            "(SQLite: mode=ro&immutable=1, as memrestore.tasks.validators.open_read_only does) and "
            "write nothing into it.",
        )


class ScratchDirError(RestoreError):
    def __init__(self, path: Path, found: str) -> None:
        self.path = path
        super().__init__(
            f"scratch dir {path} cannot be used: {found}. The drill restores each tenant into a "
            "fresh directory inside it: pass --scratch-dir with a writable directory (created if "
            "absent) on a volume with room for the largest tenant."
        )

