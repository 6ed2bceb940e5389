"""A real ``prefect server start`` (API, UI, scheduler) and ``memrestore serve`` against it.

The session's ``prefect_api`` fixture is Prefect's test harness: an API with no UI and no
scheduler. Deployments, schedules and the UI need the real server, so ``prefect_server`` starts one
per session on a free loopback port, with its own ``PREFECT_HOME``::

    # conftest.py
    from tests.prefect_server import prefect_server  # noqa: F401

    def test_something(prefect_server):
        with serving(prefect_server, "--backend", url) as serve:
            with prefect_server.client() as client:
                client.read_deployment_by_name("restore-snapshot/on-demand")

The server runs in a process group of its own, stopped as a whole when the session ends;
``memrestore serve`` is stopped by its PID when its block ends (tests/procs.py does both).
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import pytest

from tests.procs import VENV_BIN, free_port, start, start_memrestore, stop, tail, wait_until

#: Cold start is 12-15 s here with a fresh database; a loaded CI machine gets room.
SERVER_STARTUP_SECONDS = 120
#: From `memrestore serve` starting to its runner's first poll of the API.
SERVE_READY_SECONDS = 120


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass(frozen=True)
class PrefectServer:
    url: str  # http://127.0.0.1:PORT, the UI's root
    home: Path
    log: Path
    pid: int | None = None  # the server's process (its group's leader), when this session started it

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The server stops answering (SIGSTOP to its process group: connections are accepted by
        the kernel, never answered, as a hung server or a dropped network does), then resumes."""
        assert self.pid is not None, "only a server this session started can be frozen"
        os.killpg(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.pid, signal.SIGCONT)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that talks to this server."""
        return {**os.environ, "PREFECT_API_URL": self.api_url, **extra}

    @contextmanager
    def client(self):
        """A sync Prefect client on this server (whatever API the rest of the session uses)."""
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.api_url}):
            with get_client(sync_client=True) as client:
                yield client


def launch(home: Path, port: int, log: Path, env: Mapping[str, str], timeout: float = SERVER_STARTUP_SECONDS,
           append: bool = False) -> subprocess.Popen:
    """``prefect server start`` on 127.0.0.1:``port`` with its database under ``home`` (``env``, less
    any PREFECT_API_URL, is its environment), in a process group of its own, output to ``log``;
    returned once ``/api/health`` answers. Raises RuntimeError, with the log's tail, if it exits or
    is not healthy within ``timeout`` (it is stopped then)."""
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The UI asks /ui-settings for its API URL, built from these settings, not from the
        # command line's --host/--port: without them the browser would call port 4200.
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
    })
    proc = start([VENV_BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", port], log, env=env,
                 append=append)
    api_url = f"http://127.0.0.1:{port}/api"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server start exited with {proc.returncode}:\n{tail(log)}")
        return healthy(api_url)

    try:
        wait_until(up, timeout, lambda: f"prefect server start to be healthy on {api_url}:\n{tail(log)}",
                   poll=0.5, error=RuntimeError)
    except BaseException:
        stop(proc)
        raise
    return proc


@contextmanager
def running_server(home: Path, env: Mapping[str, str]) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free loopback port, its state in ``home``, until the block ends."""
    port = free_port()
    log = home / "server.log"
    proc = launch(home, port, log, env)
    try:
        yield PrefectServer(url=f"http://127.0.0.1:{port}", home=home, log=log, pid=proc.pid)
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    """``prefect server start`` on a free loopback port for the session."""
    # A run refused a slot of its deployment's concurrency limit is offered again after this many
    # seconds (Prefect's default 30): the fleet drill tests fill their limit on purpose.
    with running_server(tmp_path_factory.mktemp("prefect-server-home"),
                        {**os.environ, "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "1"}) as server:
        yield server


def _polled_since(client, name: str, since: datetime.datetime) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        deployment = client.read_deployment_by_name(name)
    except ObjectNotFound:
        return False
    return deployment.last_polled is not None and deployment.last_polled > since


@contextmanager
def serving(server: PrefectServer, *args: str, log: Path, expect: tuple[str, ...] = (
        "restore-snapshot/on-demand",), stop_signal: int = signal.SIGTERM,
        env: Mapping[str, str] | None = None) -> Iterator[subprocess.Popen]:
    """``memrestore serve *args`` against ``server`` (``env`` added to its environment, and so to
    its flow runs'), yielded once its runner has polled the API for every deployment in
    ``expect``; stopped with ``stop_signal`` by its PID at the end."""
    started = datetime.datetime.now(datetime.timezone.utc)
    # A runner polls every 10 s by default; every second keeps the tests short.
    proc = start_memrestore(["serve", *args], log, env=server.env(PREFECT_RUNNER_POLL_FREQUENCY="1", **(env or {})),
                            group=False)
    try:
        with server.client() as client:
            def ready() -> bool:
                if proc.poll() is not None:
                    pytest.fail(f"memrestore serve exited with {proc.returncode}:\n{tail(log)}")
                return all(_polled_since(client, name, started) for name in expect)

            wait_until(ready, SERVE_READY_SECONDS, f"memrestore serve to poll for {expect}")
        yield proc
    finally:
        stop(proc, stop_signal)
