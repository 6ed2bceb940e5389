"""Shared fixtures: a real Prefect API for the session, sample snapshots on disk, SeaweedFS."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Prefect reads its settings at import: give the test session its own home and quiet defaults.
_PREFECT_HOME = tempfile.mkdtemp(prefix="memrestore-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The manifest cache of the session (and of the CLI it runs) is its own, never the user's.
os.environ["MEMRESTORE_CACHE_DIR"] = tempfile.mkdtemp(prefix="memrestore-cache-")
os.environ.pop("MEMRESTORE_NO_CACHE", None)

from memrestore.backends import LocalBackend  # noqa: E402
from memrestore.backends.sample import write_sample_snapshot  # noqa: E402
from tests.layout import sqlite_side_files  # noqa: E402
from tests.faultproxy import faultproxy  # noqa: E402,F401  (a fault proxy before SeaweedFS)
from tests.seaweed import s3_env, seaweedfs  # noqa: E402,F401  (session fixture; boto3 pointed at it)
from tests.prefect_server import prefect_server  # noqa: E402,F401  (session fixture)


@pytest.fixture(scope="session", autouse=True)
def _no_local_server_left():
    """A CLI run with no PREFECT_API_URL starts the shared local server of the session's
    PREFECT_HOME (flows/localserver.py); it goes when the session ends, not 10 idle minutes later."""
    yield
    from memrestore.flows.localserver import stop_server

    stop_server(Path(_PREFECT_HOME), force=True)


@pytest.fixture(autouse=True)
def _no_sqlite_side_files_left(request):
    """After every test that had a tmp dir: no ``data.sqlite-wal``/``-shm``/``-journal`` anywhere
    in it. A restore, or a check of a restored or staged copy, must leave nothing beside the
    database (issue 19); a test whose own service connection makes them closes it first."""
    yield
    tmp = request.node.funcargs.get("tmp_path")
    if tmp is not None:
        left = sqlite_side_files(tmp)
        assert not left, f"left beside a restored or checked database: {[str(p) for p in left]}"


@pytest.fixture(scope="session")
def prefect_api():
    """A real Prefect API server for the session; yields its URL (for subprocesses too)."""
    from prefect.settings import get_current_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        url = get_current_settings().api.url
        os.environ["PREFECT_API_URL"] = url  # subprocesses (the CLI) talk to the same server
        yield url
        os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "backend")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def snapshot(backend: LocalBackend):
    """Tenant 1's snapshot ``snap-1``: a real SQLite checkpoint and two HNSW blobs."""
    return write_sample_snapshot(backend, tenant_id=1, snapshot_id="snap-1", created_at_unix_micros=1_700_000_000_000_000)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (symlinks shown as their target)."""
    out: dict[str, bytes] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            out[rel] = path.read_bytes()
        elif path.is_dir() and not any(path.iterdir()):
            out[rel + "/"] = b""
    return out
