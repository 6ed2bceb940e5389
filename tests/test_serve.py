"""The deployments on real Prefect servers: `memrestore serve`, prefect.yaml, the drill automation."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from tests.conftest import tree
from tests.prefect_server import PrefectServer, healthy, running_server, serving
from tests.procs import free_port, memrestore, start_memrestore, stop, tail, wait_until

REPO = Path(__file__).resolve().parent.parent
ON_DEMAND = "restore-snapshot/on-demand"
NIGHTLY = "restore-drill/nightly"
#: How long the server's scheduler gets to create the nightly runs (its fast loop runs every 5 s).
SCHEDULER_SECONDS = 120
RUN_SECONDS = 180
#: How long the server's automation gets to send its notification.
NOTIFY_SECONDS = 120


def _scheduled_runs(client, deployment_id):
    return client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
    )


@pytest.mark.parametrize(
    ("stop_signal", "minute", "hour"),
    [(signal.SIGINT, 17, 4), (signal.SIGTERM, 43, 2)],
    ids=["ctrl-c", "sigterm"],
)
def test_nightly_schedule_stays_active_after_serve_stops(prefect_server: PrefectServer, tmp_path, stop_signal, minute, hour):
    backend = LocalBackend(tmp_path / "backend")
    write_sample_snapshot(backend, tenant_id=1, snapshot_id="snap-1")
    cron = f"{minute} {hour} * * *"
    log = tmp_path / "serve.log"
    with serving(
        prefect_server, "--backend", backend.url, "--drill-cron", cron, "--tenant", "1", "--tenant", "3",
        "--max-age-hours", "26", "--scratch-dir", str(tmp_path / "scratch"),
        log=log, expect=(ON_DEMAND, NIGHTLY), stop_signal=stop_signal,
    ) as serve:
        assert stop(serve, stop_signal) == 0, tail(log)

    with prefect_server.client() as client:
        nightly = client.read_deployment_by_name(NIGHTLY)
        on_demand = client.read_deployment_by_name(ON_DEMAND)
        # Prefect's default would have paused the deployment (and deleted its scheduled runs).
        assert nightly.paused is False
        [schedule] = nightly.schedules
        assert schedule.active is True
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (cron, "UTC")
        assert nightly.parameters == {
            "backend": backend.url, "tenants": [1, 3], "max_age_hours": 26.0,
            "scratch_dir": str(tmp_path / "scratch"),
        }
        assert nightly.entrypoint == "memrestore.flows.drill.restore_drill"
        assert on_demand.schedules == [] and on_demand.parameters == {"backend": backend.url}
        assert on_demand.entrypoint == "memrestore.flows.restore.restore_snapshot"
        # Every parameter of the on-demand restore is typed, so the UI renders a form.
        props = on_demand.parameter_openapi_schema["properties"]
        assert {"backend", "tenant_id", "data_dir", "mode", "snapshot", "destination"} <= set(props)
        assert all("type" in p or "allOf" in p or "anyOf" in p or "$ref" in p for p in props.values())

        # With serve stopped, the server keeps scheduling drills at the cron's time.
        runs = wait_until(
            lambda: [r for r in _scheduled_runs(client, nightly.id)
                     if (r.expected_start_time.hour, r.expected_start_time.minute) == (hour, minute)],
            SCHEDULER_SECONDS, f"scheduled runs of {NIGHTLY} at {hour:02}:{minute:02} UTC",
        )
    assert all(r.expected_start_time.utcoffset().total_seconds() == 0 for r in runs)
    assert "serving restore-drill/nightly" in log.read_text()


def test_serve_without_an_api_url_uses_the_shared_local_server(tmp_path):
    backend = LocalBackend(tmp_path / "backend")
    write_sample_snapshot(backend, tenant_id=1, snapshot_id="snap-1")
    port = free_port()
    home = tmp_path / "home"
    local = PrefectServer(url=f"http://127.0.0.1:{port}", home=home, log=home / "memrestore-server.log")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_API_PORT=str(port), PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = tmp_path / "serve.log"
    serve = start_memrestore(["serve", "--backend", backend.url], log, env=env, group=False)
    try:
        def ready():
            if serve.poll() is not None:
                pytest.fail(f"memrestore serve exited with {serve.returncode}:\n{tail(log)}")
            if not healthy(local.api_url):
                return None
            with local.client() as client:
                names = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
            return names if {ON_DEMAND, NIGHTLY} <= set(names) and names[NIGHTLY].last_polled else None

        deployments = wait_until(ready, 180, "the local server and both deployments")
        assert deployments[NIGHTLY].schedules[0].schedule.cron == "0 3 * * *"
        # The UI in that server calls this same API (not Prefect's default port).
        with urllib.request.urlopen(f"{local.url}/ui-settings", timeout=10) as response:
            assert json.load(response)["api_url"] == local.api_url
    finally:
        code = stop(serve, signal.SIGINT)
        # The shared server stays for the next command (flows/ops/local_server.py), until idle or stopped.
        stopped = memrestore("server", "stop", base=env, timeout=60)
    assert code == 0, tail(log)
    assert f"started the local Prefect server at {local.url}" in log.read_text()
    assert stopped.returncode == 0 and "stopped the local Prefect server" in stopped.stdout, stopped.stderr
    wait_until(lambda: not healthy(local.api_url), 30, "the local server to stop")
    assert (home / "prefect.db").exists()


def test_serve_refuses_a_bad_cron_and_an_unreachable_api():
    def serve(*args: str, **env: str) -> subprocess.CompletedProcess:
        return memrestore("serve", *args, env=env)

    proc = serve("--drill-cron", "61 3 * * *")
    assert proc.returncode == 2 and "Invalid cron string" in proc.stderr
    dead = f"http://127.0.0.1:{free_port()}/api"
    proc = serve(PREFECT_API_URL=dead, PREFECT_CLIENT_MAX_RETRIES="0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: no Prefect API answers at PREFECT_API_URL={dead}")


@pytest.mark.usefixtures("prefect_api")
def test_prefect_yaml_deploys_both_to_a_process_pool_and_a_worker_runs_them(tmp_path):
    from prefect.client.orchestration import get_client

    backend = LocalBackend(tmp_path / "backend")
    write_sample_snapshot(backend, tenant_id=5, snapshot_id="snap-5", models=(("minilm", 384),))
    prefect = str(Path(sys.executable).with_name("prefect"))

    def cli(*args: str, cwd: Path = REPO, **env: str) -> None:
        proc = subprocess.run([prefect, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, **env})
        assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"

    cli("work-pool", "create", "memrestore", "--type", "process", "--overwrite")
    cli("--no-prompt", "deploy", "--all", MEMRESTORE_BACKEND=backend.url)

    with get_client(sync_client=True) as client:
        on_demand = client.read_deployment_by_name(ON_DEMAND)
        nightly = client.read_deployment_by_name(NIGHTLY)
        assert (on_demand.work_pool_name, nightly.work_pool_name) == ("memrestore", "memrestore")
        assert on_demand.schedules == [] and on_demand.entrypoint == "memrestore.flows.restore.restore_snapshot"
        assert nightly.entrypoint == "memrestore.flows.drill.restore_drill"
        [schedule] = nightly.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 3 * * *", "UTC", True)
        assert nightly.parameters == {"backend": backend.url, "pick": "latest", "window_days": 30}
        assert nightly.paused is False

        data_dir = tmp_path / "data"
        run = client.create_flow_run_from_deployment(on_demand.id, parameters={
            "backend": backend.url, "tenant_id": 5, "data_dir": str(data_dir), "mode": "new_cluster"})
        # A worker started elsewhere: the module entrypoint loads from the installed package.
        cli("worker", "start", "--pool", "memrestore", "--run-once", cwd=tmp_path)
        final = wait_until(lambda: (r := client.read_flow_run(run.id)).state.is_final() and r,
                           RUN_SECONDS, "the worker's flow run to finish")
    assert final.state.is_completed(), final.state
    assert tree(data_dir) == {
        "tenant_5/data.sqlite": (backend.root / "snap-5/sqlite.db").read_bytes(),
        "tenant_5/hnsw/minilm.bin": (backend.root / "snap-5/hnsw-0.bin").read_bytes(),
    }


class _Receiver(http.server.ThreadingHTTPServer):
    """A webhook endpoint on loopback that keeps every JSON body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N805
                length = int(handler.headers.get("content-length", 0))
                self.bodies.append(json.loads(handler.rfile.read(length)))
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@contextmanager
def webhook_pager(automation_for: Callable[[Any, str], Any]) -> Iterator[tuple[_Receiver, Any]]:
    """A webhook endpoint on loopback (:class:`_Receiver`), a notification block that posts to it,
    and the automation ``automation_for(block_id, block_name)`` made with that block, created on
    the current Prefect API; yields the receiver and the automation, and removes all three after."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    receiver = _Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    block_name = f"pager-{uuid.uuid4().hex[:8]}"
    automation = block_id = None
    try:
        block_id = CustomWebhookNotificationBlock(
            name="memrestore pager", url=f"http://127.0.0.1:{receiver.server_port}/hook",
            json_data={"text": "{{subject}}\n{{body}}"},
        ).save(block_name)
        automation = automation_for(block_id, block_name).create()
        yield receiver, automation
    finally:
        if automation is not None:
            automation.delete()
        if block_id is not None:
            CustomWebhookNotificationBlock.delete(block_name)
        receiver.shutdown()
        thread.join()
        receiver.server_close()


@pytest.mark.usefixtures("prefect_api")
def test_a_failed_drill_notifies_through_the_automation(tmp_path):
    from prefect.automations import Automation

    from memrestore.flows.ops.alerts import drill_failed_automation
    from memrestore.flows.drill import restore_drill

    tenant = 4000 + uuid.uuid4().int % 1000  # ours alone among the session's drill events
    with webhook_pager(lambda block, name: drill_failed_automation(block, name=f"drill failed {name}")) as (
            receiver, automation):
        assert Automation.read(id=automation.id).trigger.expect == {"memrestore.drill.failed"}

        # A real drill of a stale tenant: its snapshot is two days old, the limit one hour.
        backend = LocalBackend(tmp_path / "backend")
        two_days_ago = int((time.time() - 2 * 86400) * 1e6)
        write_sample_snapshot(backend, tenant_id=tenant, snapshot_id="stale", created_at_unix_micros=two_days_ago)
        state = restore_drill(backend=backend.url, tenants=[tenant], max_age_hours=1.0,
                              scratch_dir=str(tmp_path / "scratch"), return_state=True)
        assert state.is_failed()

        [body] = wait_until(
            lambda: [b for b in receiver.bodies if f"tenant {tenant}" in b["text"]],
            NOTIFY_SECONDS, f"the notification for tenant {tenant}",
        )
        text = body["text"]
        assert text.startswith(f"memrestore: tenant {tenant} failed its restore drill")
        assert "latest snapshot: stale" in text and f"backend: {backend.url}" in text


# --- stopping beside an API that stopped answering ----------------------------------------------


def _gone(pid: int) -> bool:
    """The process has exited (a zombie left for init to reap counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def freezable_server(tmp_path_factory) -> Iterator[PrefectServer]:
    """A Prefect server of these tests' own, to freeze: the session's server, frozen, would come
    back with a killed run still Running on it and the crash automation's clock running for it."""
    with running_server(tmp_path_factory.mktemp("freezable-prefect"), os.environ) as server:
        yield server


def test_serve_stops_a_restore_in_flight_when_the_api_stops_answering(freezable_server: PrefectServer, tmp_path):
    """The Prefect API freezes under an on-demand restore in flight; SIGTERM to serve. Prefect's own
    stop asks that API about the run before killing it and waited past 120 s with the restore still
    going; serve now stops it (SIGTERM, then SIGKILL) and exits 1, saying so. The data dir keeps the
    marker, and once the API is back the restore is resumed to the snapshot's bytes."""
    from prefect.deployments import run_deployment

    from memrestore.flows.ops.serve_stop import API_SILENCE_SECONDS, FORCED_EXIT, RUN_STOP_SECONDS
    from memrestore.tasks.crash_points import PAUSE_ENV, PAUSE_FILE_ENV
    from memrestore.tasks.marker import MARKER_NAME, read_marker

    prefect_server = freezable_server

    backend = LocalBackend(tmp_path / "backend")
    write_sample_snapshot(backend, tenant_id=7, snapshot_id="s1")
    data_dir, held, log = tmp_path / "data", tmp_path / "held", tmp_path / "serve.log"
    with serving(prefect_server, "--backend", backend.url, log=log,
                 env={PAUSE_ENV: "stage-chunk:1", PAUSE_FILE_ENV: str(held)}) as serve:
        with prefect_server.client():
            run_deployment(ON_DEMAND, timeout=0, parameters={
                "tenant_id": 7, "data_dir": str(data_dir), "mode": "new_cluster", "snapshot": "s1",
                "destination": {"embedding_model": "minilm"}})
        wait_until(held.exists, RUN_SECONDS, "the restore to be held mid-download")
        restore_pid = read_marker(data_dir).pid

        with prefect_server.frozen():
            began = time.monotonic()
            serve.send_signal(signal.SIGTERM)
            code = serve.wait(timeout=60)  # a liveness bound: Prefect alone had not exited at 120 s
            took = time.monotonic() - began
            wait_until(lambda: _gone(restore_pid), 10, "the restore's process to be gone")
    out = log.read_text()
    assert code == FORCED_EXIT, out[-3000:]
    assert (f"the Prefect API at {prefect_server.api_url} has not answered for {API_SILENCE_SECONDS:.0f} s"
            in out), out[-3000:]
    assert "1 flow run(s) in flight stopped by SIGTERM" in out and "--resume" in out, out[-3000:]
    print(f"serve exited {took:.1f} s after SIGTERM (the restore's own stop: up to {RUN_STOP_SECONDS:.0f} s)")
    assert (data_dir / MARKER_NAME).exists()

    env = prefect_server.env(PREFECT_HOME=str(tmp_path / "home"))
    args = ["restore", "--backend", backend.url, "--tenant", "7", "--snapshot", "s1", "--data-dir", str(data_dir),
            "--mode", "new_cluster", "--embedding-model", "minilm"]
    refused = memrestore(*args, base=env)
    assert refused.returncode == 1 and "its process is gone" in refused.stderr, refused.stderr
    resumed = memrestore(*args, "--resume", base=env)
    assert resumed.returncode == 0, resumed.stderr
    assert tree(data_dir) == {
        "tenant_7/data.sqlite": (backend.root / "s1/sqlite.db").read_bytes(),
        "tenant_7/hnsw/minilm.bin": (backend.root / "s1/hnsw-0.bin").read_bytes(),
        "tenant_7/hnsw/e5-base.bin": (backend.root / "s1/hnsw-1.bin").read_bytes(),
    }


def test_a_second_ctrl_c_stops_serve_at_once_when_the_api_stops_answering(freezable_server: PrefectServer, tmp_path):
    prefect_server = freezable_server
    log = tmp_path / "serve.log"
    with serving(prefect_server, log=log) as serve:
        with prefect_server.frozen():
            serve.send_signal(signal.SIGINT)
            wait_until(lambda: "SIGINT: stopping" in log.read_text(), 10, "serve to say it is stopping")
            serve.send_signal(signal.SIGINT)
            code = serve.wait(timeout=30)
    out = log.read_text()
    assert code == 1, out[-3000:]
    assert "SIGINT again: stopping now, without waiting for Prefect" in out, out[-3000:]
    assert "has not answered" not in out  # it did not wait for the watch


def test_the_stop_watch_counts_any_http_answer_and_not_silence():
    """serve's stop asks whether the API answers at all: an HTTP error (a Cloud workspace's 401, a
    404 under a path prefix) is an answer; a listener that never replies, or nothing listening, is not."""
    import socket

    from memrestore.flows.ops.serve_stop import answers

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody reads or replies
    try:
        assert answers(f"http://127.0.0.1:{server.server_port}/api/accounts/a/workspaces/w")
        assert not answers(f"http://127.0.0.1:{silent.getsockname()[1]}/api", timeout=0.5)
        assert not answers(f"http://127.0.0.1:{free_port()}/api", timeout=0.5)
    finally:
        silent.close()
        server.shutdown()
        server.server_close()
