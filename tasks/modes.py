"""The two choices a restore is asked for, as enums with no dependency beyond the standard library:
the command line offers them as ``--mode`` and ``--check`` without importing Prefect, and
``tasks.plan`` (``RestoreMode``) and ``tasks.checks`` (``CheckLevel``) export them from here."""

from __future__ import annotations

import enum


class RestoreMode(str, enum.Enum):
    """How the restore treats what the data dir already holds."""

    NEW_CLUSTER = "new_cluster"
    SINGLE_TENANT = "single_tenant"
    WIPE_AND_RESTORE = "wipe_and_restore"


class CheckLevel(str, enum.Enum):
    """How a restore checks its staged copy before the commit."""

    QUICK = "quick"  # PRAGMA quick_check (O(N), no index cross-check), the tables, the sizes
    FULL = "full"    # PRAGMA integrity_check (also every index against its table), tables, sizes
    NONE = "none"    # no check: the blake3 of each blob only
