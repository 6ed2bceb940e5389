"""Errors raised by the backup side: bad input and backend failures.

Every error memrestore raises on purpose derives from :class:`RestoreError`. This module holds
the root and the part the backends raise, so that ``backends/`` imports nothing from the layers
above it; the one drawing of the whole tree, with where each class lives, is in
``tasks/errors.py``.

Each message says what was found and what to do about it.
"""

from __future__ import annotations


#: How much of a value from the input a message quotes: enough to recognise it, never megabytes.
QUOTE_LIMIT = 120


def shown(value: object) -> str:
    """``value`` quoted for a message: repr (control and bidi characters escaped), and cut
    to :data:`QUOTE_LIMIT` characters with its length when longer."""
    text = repr(value)
    if len(text) <= QUOTE_LIMIT:
        return text
    length = f" ({len(value)} characters)" if isinstance(value, (str, bytes)) else ""
    return f"{text[:QUOTE_LIMIT]}...{length}"


class RestoreError(Exception):
    """Root of every error memrestore raises on purpose."""


class BadInputError(RestoreError):
    """The input can never succeed: retrying does not help."""


class InvalidKeyError(BadInputError):
    """A content key that could escape the backend root or the data dir."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(
            f"content key {shown(key)} is not a safe relative path ({reason}); the manifest is "
            "refused before anything is read or written. Check the snapshot's manifest.json: "
            "keys must be '/'-separated, relative, with no empty, '.' or '..' segment, "
            "backslash or NUL."
        )


class InvalidSnapshotIdError(BadInputError):
    """A snapshot id outside ``A-Z a-z 0-9 . _ -`` (1 to 128 characters, not ``.``/``..``)."""

    def __init__(self, snapshot_id: str) -> None:
        self.snapshot_id = snapshot_id
        super().__init__(
            f"snapshot id {shown(snapshot_id)} is not valid: ids are 1 to 128 characters of "
            "A-Z a-z 0-9 . _ - and neither '.' nor '..'. List the backend's snapshots with "
            "`memrestore snapshots --backend URL` and pass one of those ids."
        )


class InvalidManifestError(BadInputError):
    """A manifest that does not parse, or parses but breaks FORMAT.md's invariants."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(
            f"manifest {where} is not a valid snapshot manifest: {problem}. The snapshot "
            "cannot be restored as it is; restore an older snapshot (see `memrestore "
            "snapshots`) or fix the backup that wrote it."
        )


class BackendUrlError(BadInputError):
    """A backend URL memrestore cannot use."""


class RateSpellingError(BadInputError, ValueError):
    """A ``--limit-rate`` value that is not a rate (or one too low to be meant)."""


class InstantSpellingError(BadInputError, ValueError):
    """An ``--as-of`` that is not an ISO 8601 time."""


class BackendError(RestoreError):
    """The backend failed to serve a request."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        self.key = key
        super().__init__(message)


class TransientBackendError(BackendError):
    """A failure that may pass: throttling, a 5xx, a timeout, a dropped connection."""


class PermanentBackendError(BackendError):
    """A failure that will not pass by retrying."""


class ObjectNotFoundError(PermanentBackendError):
    """The object (or manifest) does not exist in the backend."""


class AccessDeniedError(PermanentBackendError):
    """The backend refused access to the object."""
