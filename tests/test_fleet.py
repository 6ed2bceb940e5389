"""Fleet drills on a real Prefect server: a process work pool, two workers started here (each its
own process, name and PREFECT_HOME), the ``drill-tenant/fleet`` deployment deployed from
prefect.yaml, and drills that fan out to it; then one worker killed with SIGKILL, with its
flow-run processes, in the middle of a drill.

Every process started here (tests/procs.py) is stopped by its PID when its fixture ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from uuid import UUID

import pytest
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, DeploymentFilterName
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.flows.ops.fleet import FLEET_DEPLOYMENT, lost_run_automation, worker_of
from tests.prefect_server import PrefectServer
from tests.procs import VENV_BIN, start, start_memrestore, stop, tail, wait_until

REPO = Path(__file__).resolve().parent.parent
HOUR_MICROS = 3600 * 10**6
#: The deployment's concurrency limit here: the workers' room added up, so that each worker is sure
#: of a share (fleet-a may hold two slots, never the third) rather than racing for freed slots.
CONCURRENCY_LIMIT = 3
WORKERS = {"fleet-a": 2, "fleet-b": 1}  # name -> the worker's own --limit
VICTIM = "fleet-b"  # one run at a time: killed, it takes exactly one run with it
#: The victim reads each manifest this slowly. A drill run restores in itself, so a small one is
#: Running for a fraction of a second, over before its first heartbeat can be read back (the
#: server's event persister writes events every 5 s): slowed, the victim's runs stay Running,
#: their heartbeat readable, long enough to be killed mid-run.
SLOW_MANIFEST_SECONDS = 10
#: Put on the victim's PYTHONPATH (its flow-run processes inherit it): the slow disk, an audit hook.
SLOW_DISK = """\
import os, sys, time

_UNDER = os.environ["MEMRESTORE_TEST_SLOW_UNDER"]
_SECONDS = float(os.environ["MEMRESTORE_TEST_SLOW_SECONDS"])


def _slow_manifest_reads(event, args):
    if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
        path = os.fspath(args[0])
        if isinstance(path, str) and path.startswith(_UNDER) and path.endswith("/manifest.json"):
            time.sleep(_SECONDS)


sys.addaudithook(_slow_manifest_reads)
"""
#: Flow runs send a heartbeat this often (Prefect's minimum), and the automation marks a run
#: Crashed when none came for LOST_AFTER_SECONDS.
HEARTBEAT_SECONDS = 30
LOST_AFTER_SECONDS = 45
#: The drill's child timeout here: far above a child's real run (seconds), so that it never fires
#: on a live run, and above the automation's delay (its window, up to one more window until the
#: server's next proactive evaluation, and its event lag: 47 to 116 s seen here on a loaded
#: machine), so that it is Prefect's zombie handling that catches the killed run.
CHILD_TIMEOUT_SECONDS = 300
WORKER_READY_SECONDS = 120
CLI_SECONDS = 480
#: How long a run's log lines may take to be readable through the API (they are sent in batches).
LOGS_WAIT_SECONDS = 60
TENANTS = [1, 2, 3, 4, 5, 6]


def _prefect(server: PrefectServer, *args: str, **env: str) -> None:
    proc = subprocess.run([str(VENV_BIN / "prefect"), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=server.env(**env))
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


def _descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (children, their children, ...), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo:
        for children in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in children.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), so that a PID reused later is not taken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    log: Path
    def freeze(self) -> list[int]:
        """SIGSTOP the worker and everything under it, as a hung machine: nothing of it moves (and
        no PID of it can be reused until it is killed or continued)."""
        frozen = [self.proc.pid]
        os.kill(self.proc.pid, signal.SIGSTOP)
        while new := [p for p in _descendants(self.proc.pid) if p not in frozen]:
            _signal_all(new, signal.SIGSTOP)
            frozen += new
        return frozen

    def stop(self) -> None:
        """SIGTERM the worker (SIGKILL if it lingers), then SIGKILL any flow-run process of it that
        outlived it, each checked to be the same process before the signal."""
        under = {pid: _started(pid) for pid in _descendants(self.proc.pid)}
        stop(self.proc)
        _signal_all([pid for pid, started in under.items() if started is not None and _started(pid) == started],
                    signal.SIGKILL)


@dataclass
class Fleet:
    server: PrefectServer
    pool: str
    deployment_id: UUID
    workers: dict[str, Worker]


def _start_worker(server: PrefectServer, pool: str, name: str, limit: int, home: Path, **env: str) -> Worker:
    log = home.with_suffix(".log")
    env = server.env(
        PREFECT_HOME=str(home),
        PREFECT_WORKER_QUERY_SECONDS="1",  # Prefect's default polls every 10 s
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY=str(HEARTBEAT_SECONDS),
        **env,
    )
    proc = start([VENV_BIN / "prefect", "worker", "start", "--pool", pool, "--type", "process", "--name", name,
                  "--limit", limit], log, cwd=REPO, env=env, group=False)  # signalled by PID, its runs one by one
    return Worker(name=name, proc=proc, log=log)


@pytest.fixture(scope="module")
def fleet(prefect_server: PrefectServer, tmp_path_factory) -> Iterator[Fleet]:
    """A process pool of its own, drill-tenant/fleet deployed to it from prefect.yaml with a
    concurrency limit, the lost-run automation for its runs, and two workers polling it (the
    victim's disk slow, see SLOW_MANIFEST_SECONDS)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    homes = tmp_path_factory.mktemp("fleet")
    pool = f"fleet-{uuid.uuid4().hex[:8]}"
    _prefect(prefect_server, "work-pool", "create", pool, "--type", "process")
    _prefect(prefect_server, "--no-prompt", "deploy", "--name", "fleet", "--pool", pool,
             "--concurrency-limit", str(CONCURRENCY_LIMIT), MEMRESTORE_BACKEND=str(homes / "unused"))
    workers: dict[str, Worker] = {}
    automation = None
    try:
        with prefect_server.client() as client:
            deployment = client.read_deployment_by_name(FLEET_DEPLOYMENT)
        with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
            automation = lost_run_automation(LOST_AFTER_SECONDS, deployment_id=deployment.id,
                                             name=f"lost runs of {pool}").create()
        slow = homes / "slow-disk"
        slow.mkdir()
        (slow / "sitecustomize.py").write_text(SLOW_DISK)
        slow_env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")])),
                    "MEMRESTORE_TEST_SLOW_UNDER": str(tmp_path_factory.getbasetemp()),
                    "MEMRESTORE_TEST_SLOW_SECONDS": str(SLOW_MANIFEST_SECONDS)}
        for name, limit in WORKERS.items():
            workers[name] = _start_worker(prefect_server, pool, name, limit, homes / name,
                                          **(slow_env if name == VICTIM else {}))
        with prefect_server.client() as client:
            def online() -> bool:
                for w in workers.values():
                    if w.proc.poll() is not None:
                        pytest.fail(f"worker {w.name} exited with {w.proc.returncode}:\n{tail(w.log)}")
                return {w.name for w in client.read_workers_for_work_pool(pool)
                        if w.status.value == "ONLINE"} == set(workers)

            wait_until(online, WORKER_READY_SECONDS, f"both workers to poll pool {pool}")
        yield Fleet(server=prefect_server, pool=pool, deployment_id=deployment.id, workers=workers)
    finally:
        for w in workers.values():
            w.stop()
        if automation is not None:
            with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
                automation.delete()


def _write_tenants(root: Path) -> LocalBackend:
    """Six tenants, each a small snapshot; tenant 2's latest is corrupted and its older one good."""
    backend = LocalBackend(root)
    now = int(time.time() * 10**6)
    small = (("minilm", 8),)
    for tenant in TENANTS:
        write_sample_snapshot(backend, tenant_id=tenant, snapshot_id=f"t{tenant}-good", models=small,
                              created_at_unix_micros=now - 3 * HOUR_MICROS)
    bad = write_sample_snapshot(backend, tenant_id=2, snapshot_id="t2-bad", models=small,
                                created_at_unix_micros=now - HOUR_MICROS)
    path = backend.root / bad.hnsw_snapshots[0].content_key
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    return backend


def _children(client, fleet: Fleet, backend: LocalBackend) -> list:
    """The runs of drill-tenant/fleet that drilled ``backend``."""
    runs = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[fleet.deployment_id])), limit=200)
    return [r for r in runs if r.parameters.get("backend") == backend.url]


def _most_at_once(runs) -> int:
    """The most runs that were Running together, from their start and end times."""
    edges = sorted([(r.start_time, 1) for r in runs] + [(r.end_time, -1) for r in runs],
                   key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def _drill(fleet: Fleet, backend: LocalBackend, scratch: Path, log_dir: Path, *args: str) -> subprocess.Popen:
    """``memrestore drill --via-deployment drill-tenant/fleet --json`` against the fleet's server,
    in a process of its own (a drill run in this process would leave Prefect's event client of
    the whole test session pointed at this server). Its JSON goes to ``log_dir/drill.json``."""
    return start_memrestore(
        ["drill", "--backend", backend.url, "--scratch-dir", scratch, "--via-deployment", FLEET_DEPLOYMENT,
         "--child-timeout", CHILD_TIMEOUT_SECONDS, "--json", *args],
        log_dir / "drill.json", errors=log_dir / "drill.log", cwd=REPO, env=fleet.server.env(), group=False)


def test_a_fleet_drill_runs_on_both_workers_and_reports_every_tenant(fleet: Fleet, tmp_path):
    backend = _write_tenants(tmp_path / "backend")
    scratch = tmp_path / "scratch"
    drill = _drill(fleet, backend, scratch, tmp_path, *(a for i in [*TENANTS, 9] for a in ("--tenant", str(i))))
    try:
        code = drill.wait(timeout=CLI_SECONDS)
    finally:
        stop(drill)
    assert code == 1, tail(tmp_path / "drill.log")
    report = json.loads((tmp_path / "drill.json").read_text())
    t = {r["tenant_id"]: r for r in report["tenants"]}
    # Worst first: 9 has nothing to restore, 2 a last good snapshot; then the tenants that passed.
    assert [r["tenant_id"] for r in report["tenants"]] == [9, 2, 1, 3, 4, 5, 6]
    assert (report["ok"], report["failed"]) == (5, 2)
    assert all(t[i]["status"] == "ok" and t[i]["snapshot_id"] == f"t{i}-good" for i in (1, 3, 4, 5, 6))
    assert all(t[i]["bytes"] and t[i]["restore_seconds"] for i in (1, 3, 4, 5, 6))
    # A finding made on a worker crosses over whole: the checksum failure, the walk back.
    assert t[2]["status"] == "failed" and t[2]["reason"].startswith("checksum mismatch for 't2-bad/hnsw-0.bin'")
    assert (t[2]["snapshot_id"], t[2]["last_good_snapshot_id"]) == ("t2-bad", "t2-good")
    # A tenant with nothing to restore is failed by the parent: no run is sent for it.
    assert t[9]["status"] == "failed" and "holds no finished snapshot of tenant 9" in t[9]["reason"]
    assert all(r["lost_runs"] == [] for r in report["tenants"])
    # The workers restored into the scratch dir (this machine's) and deleted every copy.
    assert list(scratch.iterdir()) == []

    with fleet.server.client() as client:
        children = _children(client, fleet, backend)
        by_tenant = {c.parameters["tenant_id"]: c for c in children}
        assert sorted(by_tenant) == TENANTS and len(children) == len(TENANTS)
        # Each worker ran some of them (each labels the runs it takes with its name).
        assert {worker_of(c) for c in children} == set(WORKERS), [(c.name, worker_of(c)) for c in children]
        assert {c.work_pool_name for c in children} == {fleet.pool}
        # A failed tenant's run is Failed (red in the UI), its reason the state's message; the
        # worker left it so (its process's exit did not make it Crashed, and it was not run again).
        assert by_tenant[2].state.is_failed() and by_tenant[2].state.message == t[2]["reason"]
        assert by_tenant[2].run_count == 1
        assert all(c.state.is_completed() and c.state.message == f"tenant {i} passed"
                   for i, c in by_tenant.items() if i != 2)
        # The report's lines are the children's persisted results, Failed or not: a failed
        # tenant's is the error its run ended with, its whole result inside.
        assert all(c.state.result() == t[i] for i, c in by_tenant.items() if i != 2)
        assert by_tenant[2].state.result(raise_on_failure=False).result.model_dump(mode="json") == t[2]
        # They are subflows of one restore-drill run, which ended Failed with the report as result.
        [parent_id] = {client.read_task_run(c.parent_task_run_id).flow_run_id for c in children}
        parent = client.read_flow_run(parent_id)
        assert client.read_flow(parent.flow_id).name == "restore-drill"
        assert parent.state.is_failed() and parent.state.message.startswith(
            "2 of 7 tenants failed the restore drill (tenants 9, 2)")
        assert parent.name.startswith("drill-file-") and parent.name.endswith("Z")
        assert parent.state.result(raise_on_failure=False) == report
        # Prefect's bound: the deployment's concurrency limit, never more children running at once.
        limit = client.read_deployment(fleet.deployment_id).global_concurrency_limit
        assert limit is not None and limit.limit == CONCURRENCY_LIMIT
        assert _most_at_once(children) <= CONCURRENCY_LIMIT
        # A tenant is that one run: it restores each snapshot it tries in itself, with no
        # restore-snapshot subflow and no task run, and logs each failed attempt (the walk back).
        ids = [c.id for c in children]
        assert client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=ids))) == []
        assert client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids))) == []
        failed_attempt = "tenant 2, snapshot t2-bad: the restore failed: checksum mismatch for 't2-bad/hnsw-0.bin'"

        def logged() -> bool:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[by_tenant[2].id])))
            return any(log.message.startswith(failed_attempt) for log in logs)

        wait_until(logged, LOGS_WAIT_SECONDS, "tenant 2's run to log its failed attempt")


def _heartbeat_seen(client, run_id: UUID) -> bool:
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    events = client.read_events(filter=EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"])), limit=10)
    return bool(events.events)


def _kill_mid_run(client, fleet: Fleet, backend: LocalBackend, drill: subprocess.Popen, log: Path) -> set[UUID]:
    """Wait until the victim worker runs one of the drill's children and that run has sent a
    heartbeat (its slow manifest read keeps it Running meanwhile); then SIGKILL the worker and all
    its processes. Returns the runs it held."""
    victim = fleet.workers[VICTIM]
    deadline = time.monotonic() + CLI_SECONDS
    while time.monotonic() < deadline:
        if drill.poll() is not None:
            pytest.fail(f"the drill ended before worker {VICTIM} ran any of it:\n{tail(log)}")
        running = [r for r in _children(client, fleet, backend) if worker_of(r) == VICTIM and r.state.is_running()]
        if not running or not _heartbeat_seen(client, running[0].id):
            time.sleep(0.2)
            continue
        frozen = victim.freeze()
        time.sleep(0.5)  # a state the run sent just before it was frozen lands
        if client.read_flow_run(running[0].id).state.is_final():
            _signal_all(frozen, signal.SIGCONT)  # it had just finished: wait for the next one
            continue
        _signal_all(frozen, signal.SIGKILL)
        victim.proc.wait(timeout=30)
        held = {r.id for r in _children(client, fleet, backend) if worker_of(r) == VICTIM and not r.state.is_final()}
        assert running[0].id in held
        return held
    pytest.fail(f"worker {VICTIM} never ran a child of the drill long enough to be killed mid-run")


def test_a_worker_killed_mid_drill_leaves_no_tenant_missing(fleet: Fleet, tmp_path):
    backend = _write_tenants(tmp_path / "backend")
    scratch = tmp_path / "scratch"
    log = tmp_path / "drill.log"
    out = tmp_path / "drill.json"
    drill = _drill(fleet, backend, scratch, tmp_path)
    try:
        with fleet.server.client() as client:
            lost = _kill_mid_run(client, fleet, backend, drill, log)
            code = drill.wait(timeout=CLI_SECONDS)
            children = {c.id: c for c in _children(client, fleet, backend)}
    finally:
        stop(drill)
    assert code == 1, tail(log)  # tenant 2's corrupted latest, as ever; nothing else
    report = json.loads(out.read_text())
    t = {r["tenant_id"]: r for r in report["tenants"]}
    assert sorted(t) == TENANTS and (report["ok"], report["failed"]) == (5, 1)
    assert t[2]["reason"].startswith("checksum mismatch") and t[2]["last_good_snapshot_id"] == "t2-good"

    # The killed worker's run is Crashed (its heartbeats stopped), and its tenant was drilled again
    # on the worker left: the tenant's line is the retry's, and names the run that was lost.
    for run_id in lost:
        run = children[run_id]
        tenant = run.parameters["tenant_id"]
        assert run.state.is_crashed(), run.state
        # Prefect's zombie automation marked it so: the child timeout is far off.
        assert run.state.message.startswith(f"no heartbeat for {LOST_AFTER_SECONDS} s"), run.state.message
        [line] = t[tenant]["lost_runs"]
        assert str(run_id) in line and f"on worker {VICTIM} crashed" in line
        retries = [c for c in children.values() if c.parameters["tenant_id"] == tenant and c.id != run_id]
        assert [worker_of(c) for c in retries] == ["fleet-a"] and retries[0].state.is_final()
    assert all(not t[i]["lost_runs"] for i in TENANTS if i not in {children[r].parameters["tenant_id"] for r in lost})
    # Every tenant's outcome came from a run that finished.
    assert all(c.state.is_final() for c in children.values())
    # The dead worker's copy stays where it was killed (on a dead machine, with its disk); the
    # worker left deleted all of its own.
    left = {p.name.split("-")[1] for p in scratch.iterdir()}
    assert left <= {str(children[r].parameters["tenant_id"]) for r in lost}


def test_runs_no_worker_takes_are_given_up_and_a_missing_deployment_is_refused(fleet: Fleet, tmp_path):
    """The fan-out alone, on a pool nobody polls: once none of its runs is on a worker and nothing
    has moved for the child timeout, it cancels the runs and fails their tenants, naming the pool.
    A deployment that does not exist is refused before any run is made."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from memrestore.flows.errors import FleetError
    from memrestore.flows.ops.fleet import fan_out

    idle = f"idle-{uuid.uuid4().hex[:8]}"
    _prefect(fleet.server, "work-pool", "create", idle, "--type", "process")
    with fleet.server.client() as client:
        flow_id = client.create_flow_from_name("drill-tenant")
        client.create_deployment(flow_id=flow_id, name=idle, work_pool_name=idle,
                                 entrypoint="memrestore.flows.drill.drill_tenant_flow")
    parameters = {t: {"backend": "file:///nowhere", "tenant_id": t, "snapshots": [f"t{t}"]} for t in (1, 2)}
    seen: list[str] = []
    with temporary_settings({PREFECT_API_URL: fleet.server.api_url}):
        with pytest.raises(FleetError, match=f"deployment 'drill-tenant/nowhere' not found on the Prefect "
                                             f"API at {fleet.server.api_url}; a fleet drill needs it"):
            fan_out("drill-tenant/nowhere", parameters)
        outcomes = dict(fan_out(f"drill-tenant/{idle}", parameters, child_timeout_seconds=3,
                                poll_seconds=0.5, log=seen.append))
    assert sorted(outcomes) == [1, 2]
    for tenant, result in outcomes.items():
        assert (result.status, result.snapshot_id) == ("failed", f"t{tenant}")
        assert result.reason.startswith(f"the drill of tenant {tenant} has no outcome: run drill-tenant-{tenant} (")
        assert "(no worker took it) was cancelled" in result.reason
        assert f"no worker of pool {idle!r} took this run in 3 s" in result.reason
    assert seen == [f"2 runs of drill-tenant/{idle} created for workers of pool {idle!r}"]
    with fleet.server.client() as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[idle])))
    assert len(runs) == 2 and all(r.state.is_cancelled() for r in runs)
