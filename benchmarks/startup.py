"""What one memrestore command costs with nothing set up, and with a standing Prefect server
(issue 12; row 0 of BENCHMARKS.md in those two settings).

    .venv/bin/python -m benchmarks.startup [--rounds 5] [--no-write]

A 2 MiB snapshot in a local folder, restored by ``memrestore restore`` again and again, each
into a new data dir; interleaved rounds of:

- **no server set up** (``PREFECT_API_URL`` unset, one fresh ``PREFECT_HOME`` for the run):
  the CLI, which starts the shared local server once (its first command is reported apart)
  and reuses it;
- **before: Prefect's temporary server per command**: the same ``restore-snapshot`` flow called
  straight from Python with ``PREFECT_API_URL`` unset, as every command did before the shared
  server: Prefect starts a temporary server of its own for the process and stops it at exit;
- **standing server**: the CLI with ``PREFECT_API_URL`` set to a ``prefect server start``;
- **baseline**: ``python -c 'import prefect'``, the floor of any command that runs a flow.

Each command's wall time and peak RSS (``/usr/bin/time``; the temporary server, a child that is
not waited for, is not in its figure) are reported as medians, and the table is written into
BENCHMARKS.md between this module's markers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.measure import run_measured
from benchmarks.report import median_with_runs, publish_section
from benchmarks.servers import PREFECT_QUIET, PrefectServer

BEGIN = "<!-- startup:begin -->"
END = "<!-- startup:end -->"
BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"

#: The flow as every command ran it before: Prefect's temporary server per process.
PER_PROCESS = """
import asyncio, sys
from memrestore.flows.restore import restore_snapshot
from memrestore.tasks.plan import RestoreMode
asyncio.run(restore_snapshot(backend=sys.argv[1], tenant_id=1, data_dir=sys.argv[2],
            mode=RestoreMode.NEW_CLUSTER, snapshot="latest", destination={"embedding_model": "minilm"}))
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_QUIET)
    env.update(extra)
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="Print the table; leave BENCHMARKS.md alone.")
    args = parser.parse_args(argv)

    from memrestore.backends import LocalBackend
    from memrestore.backends.demo_snapshots import write_sample_snapshot

    work = Path(tempfile.mkdtemp(prefix="memrestore-startup-"))
    memrestore = str(Path(sys.executable).parent / "memrestore")
    standing = PrefectServer(work / "standing-home")
    try:
        backend = LocalBackend(work / "backend")
        write_sample_snapshot(backend, tenant_id=1, snapshot_id="s1", created_at_unix_micros=1_700_000_000_000_000,
                              sqlite_rows=20, hnsw_bytes=1024 * 1024)
        n = 0

        def data_dir() -> str:
            nonlocal n
            n += 1
            return str(work / f"data-{n}")

        def restore(env: dict[str, str]) -> list[str]:
            return [memrestore, "restore", "--backend", backend.url, "--tenant", "1", "--snapshot", "latest",
                    "--data-dir", data_dir(), "--mode", "new_cluster", "--embedding-model", "minilm"]

        local_env = _env(PREFECT_HOME=str(work / "local-home"))
        before_env = _env(PREFECT_HOME=str(work / "per-process-home"))
        print("starting a standing Prefect server ...", flush=True)
        standing.start()
        standing_env = {**_env(), **standing.env()}

        print("first commands (fresh PREFECT_HOME: the server starts and creates its database) ...", flush=True)
        first_local = run_measured(restore(local_env), env=local_env)
        first_before = run_measured([sys.executable, "-c", PER_PROCESS, backend.url, data_dir()], env=before_env)
        run_measured(restore(standing_env), env=standing_env)  # the standing server's first run, untimed

        cases = {
            "no server set up: memrestore, later commands (the shared local server reused)": lambda: run_measured(restore(local_env), env=local_env),
            "no server set up, before: Prefect's temporary server per command": lambda: run_measured(
                [sys.executable, "-c", PER_PROCESS, backend.url, data_dir()], env=before_env),
            "standing server (PREFECT_API_URL set): memrestore": lambda: run_measured(restore(standing_env), env=standing_env),
            "baseline: python -c 'import prefect'": lambda: run_measured([sys.executable, "-c", "import prefect"], env=_env()),
        }
        runs: dict[str, list] = {label: [] for label in cases}
        for r in range(args.rounds):
            for label, case in cases.items():
                run = case()
                runs[label].append(run)
                print(f"  round {r + 1}: {label}: {run.seconds:.2f} s, {run.max_rss_bytes / 2**20:.0f} MiB", flush=True)
    finally:
        standing.stop()
        from memrestore.flows.ops.local_server import stop_server

        stop_server(work / "local-home", force=True)
        shutil.rmtree(work, ignore_errors=True)

    floor = statistics.median(r.seconds for r in runs["baseline: python -c 'import prefect'"])
    lines = [
        BEGIN,
        "### Row 0 with and without a Prefect server set up (issue 12)",
        "",
        f"`python -m benchmarks.startup --rounds {args.rounds}`, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: `memrestore restore` of a 2 MiB "
        "snapshot from a local folder, each into a new data dir, interleaved rounds; medians (all runs in "
        "parentheses); peak RSS of the command itself, on this machine.",
        "",
        "| setting | seconds, median (runs) | x `import prefect` | peak RSS MiB, median |",
        "| --- | --- | --- | --- |",
        f"| no server set up, first command of a fresh `PREFECT_HOME` (memrestore starts the shared server) | "
        f"{first_local.seconds:.2f} | {first_local.seconds / floor:.1f}x | {first_local.max_rss_bytes / 2**20:.0f} |",
        f"| no server set up, first command of a fresh `PREFECT_HOME`, before (temporary server) | "
        f"{first_before.seconds:.2f} | {first_before.seconds / floor:.1f}x | {first_before.max_rss_bytes / 2**20:.0f} |",
    ]
    for label, series in runs.items():
        secs = [r.seconds for r in series]
        lines.append(f"| {label} | {median_with_runs(secs)} | {statistics.median(secs) / floor:.1f}x | "
                     f"{statistics.median(r.max_rss_bytes for r in series) / 2**20:.0f} |")
    lines.append(END)
    publish_section(BENCHMARKS_MD, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
