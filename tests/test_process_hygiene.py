"""Commands with no Prefect server set up, killed commands, and stopped ones: real processes, real
signals, real Prefect servers.

- With no ``PREFECT_API_URL``, commands share one local Prefect server per ``PREFECT_HOME``
  (flows/ops/local_server.py): the first starts it, later ones (and two started at once) reuse it, it
  stops by itself once idle, never while a command uses it, and ``memrestore server`` shows and
  stops it.
- A restore killed with SIGKILL leaves no process of its own; its flow run, left Running, is
  marked Crashed by the next command on its data dir (a refused restore, an abort) or, on a
  standing server, by the heartbeat automation (flows/ops/alerts.py).
- SIGINT and SIGTERM stop a restore promptly in staging and in the commit: exit 128 + signal,
  the marker keeps the phase, the flow run ends Crashed saying what is left, and a resume or an
  abort then finishes the job exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Iterator
from uuid import UUID

import pytest

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.flows.ops import local_server as localserver, prefect_config
from memrestore.tasks.crash_points import PAUSE_ENV, PAUSE_FILE_ENV
from memrestore.tasks.marker import MARKER_NAME, read_marker
from tests.conftest import tree
from tests.procs import memrestore as run_memrestore, start_memrestore, tail, wait_until

#: Generous: a loaded CI machine starts a Prefect server with a fresh database in 12-40 s.
COMMAND_SECONDS = 180
SNAPSHOT = "snap-1"
TENANT = 1


@pytest.fixture(scope="module")
def backend_url(tmp_path_factory) -> str:
    backend = LocalBackend(tmp_path_factory.mktemp("hygiene-backend"))
    write_sample_snapshot(backend, tenant_id=TENANT, snapshot_id=SNAPSHOT,
                          created_at_unix_micros=1_700_000_000_000_000, hnsw_bytes=3 * 1024 * 1024)
    return backend.url


def _env(home: Path, **extra: str) -> dict[str, str]:
    """A command's environment with nothing set up: no Prefect API, this PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", PAUSE_ENV, PAUSE_FILE_ENV)}
    env.update({"PREFECT_HOME": str(home), **extra})
    return env


def _restore_args(backend_url: str, data_dir: Path, mode: str = "wipe_and_restore", *more: str) -> list[str]:
    return ["restore", "--backend", backend_url, "--tenant", str(TENANT), "--snapshot", SNAPSHOT,
            "--data-dir", str(data_dir), "--mode", mode, "--embedding-model", "minilm", *more]


def memrestore(args: list[str], env: dict[str, str], timeout: float = COMMAND_SECONDS) -> subprocess.CompletedProcess:
    """A command run to its end with exactly the environment ``env``."""
    return run_memrestore(*args, base=env, timeout=timeout)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A command in a session of its own (its session id is its pid), output to ``log``."""
    return start_memrestore(args, log, env=env)


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[3])  # state, ppid, pgrp, session


def processes_in_session(sid: int) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and _session_of(int(p)) == sid]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def servers_of(home: Path) -> list[int]:
    """Every running local server process whose PREFECT_HOME is ``home``."""
    found = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
            environ = Path(f"/proc/{p}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if localserver.COMMAND_TAG.encode() in cmdline and f"PREFECT_HOME={home}".encode() in environ:
            found.append(int(p))
    return [pid for pid in found if _alive(pid)]


@contextmanager
def local_home(path: Path, **env: str) -> Iterator[Path]:
    """A PREFECT_HOME whose local server, if any, is stopped (by its PID) at the end."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        info = localserver.read_state(path)
        for pid in set(servers_of(path)) | ({info.pid} if info else set()):
            if localserver._is_our_server(pid):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def client_on(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        with get_client(sync_client=True) as client:
            yield client


def run_state(api_url: str, flow_run_id: str):
    with client_on(api_url) as client:
        return client.read_flow_run(UUID(flow_run_id)).state


def heartbeats(api_url: str, flow_run_id: str) -> int:
    """How many heartbeat events of the flow run the server has recorded."""
    import datetime

    import httpx

    since = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)).isoformat()
    response = httpx.post(f"{api_url}/events/filter", timeout=10, json={"limit": 50, "filter": {
        "occurred": {"since": since},
        "event": {"name": ["prefect.flow-run.heartbeat"]},
        "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
    }})
    response.raise_for_status()
    return len(response.json()["events"])


def paused_restore(args: list[str], env: dict[str, str], tmp: Path, at: str) -> subprocess.Popen:
    """A restore held at crash point ``at`` (tasks/crash_points.py), returned once it is there."""
    pause_file = tmp / f"paused-{time.monotonic_ns()}"
    proc = _start(args, {**env, PAUSE_ENV: at, PAUSE_FILE_ENV: str(pause_file)}, tmp / "paused.log")

    def there() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the restore exited ({proc.returncode}) before {at}:\n{tail(tmp / 'paused.log')}")
        return pause_file.exists()

    wait_until(there, COMMAND_SECONDS, f"the restore to reach {at}", poll=0.05)
    return proc


def service_data(data_dir: Path) -> None:
    """The destination's own data, which wipe_and_restore replaces."""
    (data_dir / "tenant_7").mkdir(parents=True)
    (data_dir / "tenant_7" / "data.sqlite").write_bytes(b"tenant 7's own database")
    (data_dir / "service.conf").write_text("keep me until the restore commits\n")


# --- the shared local server -------------------------------------------------------------------

def test_commands_share_one_local_server_and_server_stop_ends_it(backend_url, tmp_path):
    with local_home(tmp_path / "home") as home:
        env = _env(home)
        first = memrestore(_restore_args(backend_url, tmp_path / "d1"), env)
        assert first.returncode == 0, first.stderr
        assert "started a local Prefect server" in first.stderr
        info = localserver.read_state(home)
        assert info is not None and servers_of(home) == [info.pid]
        # In a session of its own: neither a Ctrl-C at the terminal nor the command's end reaches it.
        assert _session_of(info.pid) == info.pid

        second = memrestore(_restore_args(backend_url, tmp_path / "d2"), env)
        assert second.returncode == 0, second.stderr
        assert "started a local Prefect server" not in second.stderr
        assert servers_of(home) == [info.pid]
        assert tree(tmp_path / "d1") == tree(tmp_path / "d2") != {}

        status = json.loads(memrestore(["server", "status", "--json"], env).stdout)
        assert status["running"] and status["healthy"] and status["server"]["pid"] == info.pid

        # Both restores are on that server, completed.
        with client_on(info.api_url) as client:
            runs = client.read_flow_runs()
        assert sorted(r.state.type.value for r in runs if r.name.startswith("tenant-1")) == ["COMPLETED"] * 2

        stopped = memrestore(["server", "stop"], env)
        assert stopped.returncode == 0 and f"pid {info.pid}" in stopped.stdout
        wait_until(lambda: not servers_of(home), 30, "the local server to exit")
        assert "no local Prefect server is running" in memrestore(["server", "status"], env).stdout


def test_two_commands_started_at_once_start_one_server(backend_url, tmp_path):
    with local_home(tmp_path / "home") as home:
        env = _env(home)
        procs = [_start(_restore_args(backend_url, tmp_path / f"d{i}"), env, tmp_path / f"{i}.log") for i in (1, 2)]
        codes = [p.wait(timeout=COMMAND_SECONDS) for p in procs]
        logs = [(tmp_path / f"{i}.log").read_text() for i in (1, 2)]
        assert codes == [0, 0], logs
        assert sum("started a local Prefect server" in log for log in logs) == 1, logs
        assert len(servers_of(home)) == 1


def test_idle_server_stops_by_itself_but_not_while_a_command_uses_it(backend_url, tmp_path):
    idle = 4
    with local_home(tmp_path / "home") as home:
        env = _env(home, **{localserver.IDLE_ENV: str(idle)})
        data_dir = tmp_path / "data"
        proc = paused_restore(_restore_args(backend_url, data_dir), env, tmp_path, "stage-chunk:1")
        info = localserver.read_state(home)
        assert info is not None
        # Held by a running command well past the idle time: it stays, and `server stop` refuses.
        time.sleep(3 * idle)
        assert servers_of(home) == [info.pid]
        refused = memrestore(["server", "stop"], env)
        assert refused.returncode == 1 and "in use by a running memrestore command" in refused.stderr
        assert "--force" in refused.stderr
        # The command dies (SIGKILL: no exit handler runs); the kernel drops its hold, and the
        # server, idle from then on, stops by itself.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        wait_until(lambda: not servers_of(home), 10 * idle + 30, "the idle server to stop by itself")
        assert localserver.read_state(home) is None


# --- SIGKILL ---------------------------------------------------------------------------------

def test_sigkill_leaves_no_process_behind_and_the_next_command_marks_the_run_crashed(backend_url, tmp_path):
    with local_home(tmp_path / "home") as home:
        env = _env(home)
        data_dir = tmp_path / "data"
        service_data(data_dir)
        before = tree(data_dir)
        proc = paused_restore(_restore_args(backend_url, data_dir), env, tmp_path, "stage-chunk:2")
        info = localserver.read_state(home)
        marker = read_marker(data_dir)
        assert marker is not None and marker.flow_run_id and marker.prefect_api_url == info.api_url
        assert run_state(info.api_url, marker.flow_run_id).is_running()

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # Nothing of the command's is left: no process in its session, and no child of it
        # re-parented anywhere (the shared server was started before, in its own session).
        wait_until(lambda: not processes_in_session(proc.pid), 10, "the killed command's processes to go")
        assert servers_of(home) == [info.pid]

        refused = memrestore(_restore_args(backend_url, data_dir), env)
        assert refused.returncode == 1
        assert "its process is gone" in refused.stderr and "--resume" in refused.stderr
        state = run_state(info.api_url, marker.flow_run_id)
        assert state.is_crashed()
        assert str(data_dir) in state.message and "phase staging" in state.message
        assert "--resume" in state.message and "memrestore abort" in state.message

        aborted = memrestore(["abort", "--data-dir", str(data_dir)], env)
        assert aborted.returncode == 0, aborted.stderr
        assert tree(data_dir) == before
        state = run_state(info.api_url, marker.flow_run_id)
        assert state.is_crashed() and "rolled it back" in state.message


def test_standing_server_automation_marks_a_killed_restore_crashed(backend_url, tmp_path, prefect_server):
    """No command touches the data dir again: the heartbeat automation alone ends the run."""
    from memrestore.flows.ops.alerts import CRASHED_MESSAGE, crashed_restore_automation

    silence = timedelta(seconds=40)  # the CLI's heartbeat is every 30 s; 90 s in production
    with prefect_server.client():
        automation_id = crashed_restore_automation(silence=silence, name=f"test-crashed-{tmp_path.name}").create().id
    try:
        data_dir = tmp_path / "data"
        proc = paused_restore(_restore_args(backend_url, data_dir),
                              prefect_server.env(PREFECT_HOME=str(tmp_path / "home")), tmp_path, "stage-chunk:1")
        marker = read_marker(data_dir)
        assert marker is not None and marker.prefect_api_url == prefect_server.api_url
        # The automation's window opens at the run's first heartbeat: kill only once the server has
        # it (a heartbeat still in the client's event queue would die with the process).
        wait_until(lambda: heartbeats(prefect_server.api_url, marker.flow_run_id), 120,
                   "the restore's first heartbeat to reach the server", poll=0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

        def crashed():
            state = run_state(prefect_server.api_url, marker.flow_run_id)
            return state if state.is_crashed() else None

        state = wait_until(crashed, 240, "the automation to mark the killed restore Crashed", poll=2)
        assert state.message == CRASHED_MESSAGE
        assert (data_dir / MARKER_NAME).exists()  # the automation only reports; the data dir waits
    finally:
        with prefect_server.client() as client:
            client.delete_automation(automation_id)


# --- SIGINT and SIGTERM ------------------------------------------------------------------------

@pytest.mark.parametrize("point,phase", [("stage-chunk:2", "staging"), ("phase-committing:1", "committing")])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_restore_promptly_and_leaves_it_recoverable(backend_url, tmp_path, prefect_api,
                                                                         sig, point, phase):
    env = {**_env(tmp_path / "home"), "PREFECT_API_URL": prefect_api}
    data_dir = tmp_path / "data"
    service_data(data_dir)
    before = tree(data_dir)
    args = _restore_args(backend_url, data_dir)
    proc = paused_restore(args, env, tmp_path, point)
    marker = read_marker(data_dir)

    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    out = (tmp_path / "paused.log").read_text()
    assert code == 128 + sig, out
    assert f"stopped by {sig.name}" in out and f"phase {phase}" in out
    assert "--resume" in out and f"memrestore abort --data-dir {data_dir}" in out
    assert "Traceback" not in out
    left = read_marker(data_dir)
    assert left is not None and left.phase.value == phase
    if phase == "staging":
        assert {k: v for k, v in tree(data_dir).items() if not k.startswith(".restore")} == before
    state = run_state(prefect_api, marker.flow_run_id)
    assert state.is_crashed() and f"phase {phase}" in state.message and str(data_dir) in state.message

    # Recoverable both ways: abort a copy back to the old tree, resume the original to the new one.
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(data_dir), str(copy)], check=True)
    aborted = memrestore(["abort", "--data-dir", str(copy)], env)
    assert aborted.returncode == 0, aborted.stderr
    assert tree(copy) == before
    resumed = memrestore([*args, "--resume"], env)
    assert resumed.returncode == 0, resumed.stderr
    fresh = tmp_path / "fresh"
    assert memrestore(_restore_args(backend_url, fresh, "new_cluster"), env).returncode == 0
    assert tree(data_dir) == tree(fresh)


# --- which API a command uses ------------------------------------------------------------------

@pytest.mark.parametrize("where", ["env", ".env", "prefect.toml", "pyproject.toml", "profile", "nothing"])
def test_a_configured_api_is_found_where_prefect_reads_it(tmp_path, monkeypatch, where):
    """The local server is only for users with no API set up: any source Prefect reads counts."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PREFECT_HOME", str(home))
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(name, raising=False)
    (home / "profiles.toml").write_text('active = "ephemeral"\n[profiles.ephemeral]\n'
                                        'PREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n')
    url = "http://prefect.example:4200/api"
    if where == "env":
        monkeypatch.setenv("PREFECT_API_URL", url)
    elif where == ".env":
        (tmp_path / ".env").write_text(f"OTHER=1\nPREFECT_API_URL='{url}'\n")
    elif where == "prefect.toml":
        (tmp_path / "prefect.toml").write_text(f'[api]\nurl = "{url}"\n')
    elif where == "pyproject.toml":
        (tmp_path / "pyproject.toml").write_text(f'[tool.prefect.api]\nurl = "{url}"\n')
    elif where == "profile":
        (home / "profiles.toml").write_text(f'active = "prod"\n[profiles.prod]\nPREFECT_API_URL = "{url}"\n')
    assert prefect_config.configured_api_url() == (None if where == "nothing" else url)
