"""Shared fixtures: a real Prefect API for the session, sample snapshots on disk, SeaweedFS."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.procs import free_port

# Prefect reads its settings at import: give the test session its own home and quiet defaults.
_PREFECT_HOME = tempfile.mkdtemp(prefix="memrestore-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# The manifest cache of the session (and of the CLI it runs) is its own, never the user's.
_CACHE_DIR = tempfile.mkdtemp(prefix="memrestore-cache-")
os.environ["MEMRESTORE_CACHE_DIR"] = _CACHE_DIR
os.environ.pop("MEMRESTORE_NO_CACHE", None)
# The suite runs in parallel (pytest-xdist, `-n` in pyproject.toml): each worker is a process of
# its own that imports this file, so the two directories above are per worker, and so is every
# session fixture (each worker starts its own SeaweedFS and Prefect servers). A CLI run with no
# PREFECT_API_URL starts the local server of its PREFECT_HOME on the port this names when it is
# free (flows/ops/local_server.py), else on any: not Prefect's 4200, which two workers' servers (or
# another checkout's tests) would race for, one of them failing to bind it.
os.environ["PREFECT_SERVER_API_PORT"] = str(free_port())

from memrestore.backends import LocalBackend  # noqa: E402
from memrestore.backends.demo_snapshots import write_sample_snapshot  # noqa: E402
from tests.layout import sqlite_side_files  # noqa: E402
from tests.faultproxy import faultproxy  # noqa: E402,F401  (a fault proxy before SeaweedFS)
from tests.seaweed import s3_env, seaweedfs  # noqa: E402,F401  (session fixture; boto3 pointed at it)
from tests.prefect_server import prefect_server  # noqa: E402,F401  (session fixture)

#: Where a worker keeps its summaries for the controller (tests/restorekit.report).
REPORT_KEY = "memrestore_reports"

#: Started first, on whichever workers are free then: the modules whose tests wait longest (on
#: Prefect servers, heartbeats, a fresh venv, the quick benchmark). Started last, any of them would
#: be the run's tail, the other workers idle meanwhile. Modules not named here follow in file order.
SLOW_FIRST = ("test_fleet", "test_packaging", "test_process_hygiene", "test_serve", "test_bench_smoke",
              "test_ui_browser", "test_ui_restore", "test_ui_drill", "test_ui_drill_trend", "test_ui_as_of", "test_crash",
              "test_wal_checkpoint",
              "test_replace_tenant", "test_listing", "test_concurrency", "test_precommit_check", "test_validation_hooks",
              "test_hostile", "test_streams", "test_adaptive_streams")
#: Modules whose tests are handed to the workers one by one. Every other module runs whole on one
#: worker, so that its module-scoped fixtures are set up once, as without xdist (a Prefect server
#: to freeze, a fleet of workers, a kill log summed up at the module's end). The tests here share
#: none of those: at most a small sample snapshot, written again by each worker that needs it.
ONE_BY_ONE = ("test_process_hygiene", "test_listing", "test_precommit_check", "test_streams", "test_adaptive_streams",
              "test_wal_checkpoint",
              "test_replace_tenant")


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """The slowest modules first (SLOW_FIRST); each module's tests stay in their order."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(_module(item.nodeid), len(rank)))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadscope`` (pyproject.toml), with a module as the scope except for ONE_BY_ONE's.
    (xdist's loadgroup would do it with marks, but on pytest 9.2 it no longer groups anything:
    pytest-dev/pytest-xdist#1386.) Scopes go out in collection order, a worker getting the next
    one when it has two tests left."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleOrTest(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return nodeid if _module(nodeid) in ONE_BY_ONE else nodeid.split("::", 1)[0]

    return ModuleOrTest(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """An xdist worker's summaries (tests/restorekit.report), written here once it is done."""
    reporter = node.config.pluginmanager.get_plugin("terminalreporter")
    for lines in getattr(node, "workeroutput", {}).get(REPORT_KEY, []):
        if reporter is not None:
            reporter.write_line("")
            for line in lines:
                reporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def _no_local_server_left():
    """A CLI run with no PREFECT_API_URL starts the shared local server of the session's
    PREFECT_HOME (flows/ops/local_server.py); it goes when the session ends, not 10 idle minutes later."""
    yield
    from memrestore.flows.ops.local_server import stop_server

    stop_server(Path(_PREFECT_HOME), force=True)
    _remove_own_dirs()


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


def pytest_unconfigure(config):
    """The controller's pair of the directories above goes with it; a worker's goes at the end of
    its session (_no_local_server_left), not here: execnet interrupts a worker still busy 5 s after
    its session ends."""
    if not hasattr(config, "workerinput"):
        _remove_own_dirs()


def _remove_own_dirs() -> None:
    for path in (_PREFECT_HOME, _CACHE_DIR):
        shutil.rmtree(path, ignore_errors=True)


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
