"""``memrestore server status`` and ``server stop`` name the commands that use the shared local
server: real commands holding it (a restore paused mid-staging), a real local server."""

from __future__ import annotations

import json
import os
import signal

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.flows.ops import local_server as localserver
from tests.test_process_hygiene import _env, local_home, memrestore, paused_restore


def test_server_status_and_stop_name_the_commands_using_the_server(tmp_path):
    backend = LocalBackend(tmp_path / "backend")
    write_sample_snapshot(backend, tenant_id=1, snapshot_id="snap-1", hnsw_bytes=3 * 1024 * 1024)
    with local_home(tmp_path / "home") as home:
        env = _env(home)
        args = ["restore", "--backend", backend.url, "--tenant", "1", "--snapshot", "latest",
                "--data-dir", str(tmp_path / "data"), "--mode", "new_cluster"]
        holder = paused_restore(args, env, tmp_path, "stage-chunk:1")
        try:
            command = " ".join(["memrestore.flows.cli", *args])  # the holder's command line, as run
            status = memrestore(["server", "status"], env)
            assert status.returncode == 0, status.stderr
            assert f"in use by a running memrestore command (pid {holder.pid}: " in status.stdout
            assert command in status.stdout

            as_json = json.loads(memrestore(["server", "status", "--json"], env).stdout)
            assert [u["pid"] for u in as_json["users"]] == [holder.pid]
            assert as_json["users"][0]["command"].endswith(command)

            refused = memrestore(["server", "stop"], env)
            assert refused.returncode == 1
            assert f"(pid {holder.pid}: " in refused.stderr and command in refused.stderr
            assert "--force" in refused.stderr
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
        # Killed, it holds nothing: no user is named any more.
        assert localserver.users(home) == []
        idle = memrestore(["server", "status"], env)
        assert "idle for" in idle.stdout and "in use" not in idle.stdout
