"""What an operator's Python validator is given (:class:`RestoredCopy`), and one example validator
(:func:`commit_log_readable`) to copy from.

A validator is a function named by its import path, ``package.module:function``, given to a
restore (``--validate-callable``) or a drill. memrestore runs it in a Python process of its own
(tasks/validation.py says why), with one argument, a :class:`RestoredCopy`; the contract:

- it **passes** by returning ``None`` or ``True``;
- it **fails** by returning ``False`` or a message (a ``str``: the reason), or by raising (the
  exception's type and message are the reason, its traceback goes into the output);
- whatever it prints (stdout and stderr) is kept, its last lines shown in the report;
- it must return within the time limit (``--validate-timeout``), or it is killed and the copy
  fails as ``timed_out``;
- it must not change the copy: the copy's files are read-only while it runs, and hashed again
  afterwards (a changed byte refuses the restore); whatever it leaves beside them (a ``-wal``, a
  lock file) is removed before the commit. So open SQLite as :func:`commit_log_readable` does.

A validator that needs nothing else: ``memrestore.tasks.validators:commit_log_readable``. This
module imports only the standard library, so the validator's process starts fast.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RestoredCopy:
    """A restored copy, as a validator sees it.

    ``data_dir`` is a data dir that holds this one tenant, ``tenant_<id>/`` (in a restore, the
    staged copy, ``<data_dir>/.restore-staging``, before the commit; in a drill, its scratch
    copy): point the service's own code at it as at a data dir. ``tenant_dir`` is
    ``data_dir / tenant_<id>``; ``sqlite_path`` its ``data.sqlite``."""

    data_dir: Path
    tenant_dir: Path
    tenant_id: int
    snapshot_id: str

    @property
    def sqlite_path(self) -> Path:
        return self.tenant_dir / "data.sqlite"


def open_read_only(path: Path) -> sqlite3.Connection:
    """The database at ``path`` opened as a validator must: read-only and ``immutable=1``, so that
    SQLite writes nothing into it or beside it (no lock, no ``-wal``/``-shm``/``-journal``; a
    checkpoint of a WAL-mode database would otherwise get them)."""
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro&immutable=1", uri=True)


def commit_log_readable(copy: RestoredCopy) -> str | None:
    """The example validator: open the tenant's ``data.sqlite`` read-only, as the service opens
    it, and read what the service reads first: the newest position of its commit log and how
    many memories there are. Fails (returns the reason) when the query fails or the log is
    empty; prints what it found."""
    try:
        db = open_read_only(copy.sqlite_path)
        try:
            newest, entries = db.execute("SELECT max(oplog_pos), count(*) FROM memory_commit_log").fetchone()
            memories = db.execute("SELECT count(*) FROM memories").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        return f"the service's first query on {copy.sqlite_path} fails: {exc}"
    if newest is None:
        return f"{copy.sqlite_path} has an empty memory_commit_log: the service would start with no history"
    print(f"tenant {copy.tenant_id}, snapshot {copy.snapshot_id}: memory_commit_log has {entries} entries, "
          f"newest oplog position {newest}; {memories} memories")
    return None
