"""The two choices a restore is asked for, as enums with no dependency beyond the standard library:
the command line offers them as ``--mode`` and ``--check`` without importing Prefect, and
``tasks.plan`` (``RestoreMode``) and ``tasks.checks`` (``CheckLevel``) export them from here."""

from __future__ import annotations

import enum


class RestoreMode(str, enum.Enum):
    """How the restore treats what the data dir already holds.

    The first three are the service's own (FORMAT.md). ``replace_tenant`` is memrestore's, for
    the on-call job "put tenant N back to an earlier snapshot" in a data dir shared by many
    tenants: the tenant's current dir is set aside until the restored one is in place (and put
    back by an undo, a failure or ``abort``), and every other entry of the data dir is untouched.
    """

    NEW_CLUSTER = "new_cluster"            # the data dir is empty or absent
    SINGLE_TENANT = "single_tenant"        # the tenant's dir is empty or absent; others untouched
    REPLACE_TENANT = "replace_tenant"      # the tenant's dir is replaced; others untouched
    WIPE_AND_RESTORE = "wipe_and_restore"  # everything in the data dir is replaced


class CheckLevel(str, enum.Enum):
    """How a restore checks its staged copy before the commit."""

    QUICK = "quick"  # PRAGMA quick_check (O(N), no index cross-check), the tables, the sizes
    FULL = "full"    # PRAGMA integrity_check (also every index against its table), tables, sizes
    NONE = "none"    # no check: the blake3 of each blob only
