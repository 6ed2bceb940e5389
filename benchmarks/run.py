"""The benchmark of issue 5: memrestore against real peers, interleaved, written to BENCHMARKS.md.

    python -m benchmarks                 # the full run (make bench): ~2 GiB snapshots, 3 pairs a row
    python -m benchmarks --quick         # tiny data, 1 pair: proves the benchmark still runs
                                         # (of the link rows 9-12, only 12: the same code)
    python -m benchmarks --rows 2,3      # only some rows (the table says which ran)

Every row times whole commands in child processes, A B A B: memrestore through its real product
path (the ``memrestore`` CLI, which runs the Prefect flows against a ``prefect server start`` this
benchmark starts once on a loopback port) against a peer that does the same job. Between any two
runs, outputs are deleted and dirty pages synced, untimed, so that no run pays for another's
writeback. Inputs are built once and cached (``benchmarks/.data/``); page-cache state is the same
for both sides (each input is read once before a row starts).

This module is the command line and the order of a run (inputs, servers, rows, report); the
sizes are in benchmarks/sizes.py, the workbench in benchmarks/bench.py, the rows in
benchmarks/rows.py (7 and 8 in benchmarks/farstore.py), the machine's table in
benchmarks/machine.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from benchmarks.bench import BUCKET, DEFAULT_WORKDIR, REPO, Bench, remove, running_s3_env
from benchmarks.machine import machine
from benchmarks.report import write_report
from benchmarks.rows import run_rows
from benchmarks.servers import PrefectServer
from benchmarks.sizes import ALL_ROWS, FULL, QUICK, S3_ROWS, Sizes, spec_size

# Taken from here by benchmarks/farstore.py (BUCKET, _size) and benchmarks/streams_sweep.py (Bench, FULL,
# DEFAULT_WORKDIR, BUCKET, _remove).
_remove, _size = remove, spec_size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 pair a row (the smoke test's run)")
    parser.add_argument("--pairs", type=int, help="A/B pairs a row (default 3; --quick: 1)")
    parser.add_argument("--rows", default=parser_default_rows(), help="rows to run, e.g. 1,2,6 (default: all; "
                        "--quick: all but 9-11)")
    parser.add_argument("--workdir", type=Path, help="cache and scratch (default benchmarks/.data; "
                        "--quick: benchmarks/.data/quick)")
    parser.add_argument("--output", type=Path, help="the markdown report (default BENCHMARKS.md at the repo root; "
                        "--quick: <workdir>/BENCHMARKS.md)")
    parser.add_argument("--prefect-api-url", help="use this running Prefect API instead of starting one")
    parser.add_argument("--s3-endpoint-url", help="use this running S3 server (credentials from AWS_ACCESS_KEY_ID "
                        "and AWS_SECRET_ACCESS_KEY) instead of starting SeaweedFS")
    return parser.parse_args(argv)


#: Rows a --quick run of every row leaves out: the link rows run the same code as row 12 with
#: other proxy settings (and row 9 without the proxy), each ~20 s even on tiny data.
QUICK_SKIPS = {"9", "10", "11"}


def parser_default_rows() -> str:
    return ",".join(ALL_ROWS)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.pairs:
        sizes = Sizes(**{**sizes.__dict__, "pairs": args.pairs})
    rows = {r.strip() for r in args.rows.split(",") if r.strip()}
    if args.quick and args.rows == parser_default_rows():
        rows -= QUICK_SKIPS
    unknown = rows - set(ALL_ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; rows are {', '.join(ALL_ROWS)}")
    workdir = (args.workdir or (DEFAULT_WORKDIR / "quick" if args.quick else DEFAULT_WORKDIR)).absolute()
    output = (args.output or (workdir / "BENCHMARKS.md" if args.quick else REPO / "BENCHMARKS.md")).absolute()
    command = "python -m benchmarks" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    for tool, rows_needing in (("rclone", {"3", "7", "9", "10", "11", "12"}), ("b3sum", {"6"})):
        if rows & rows_needing and shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: run `make system-deps` (or apt-get install {tool})")

    # A SIGTERM (a CI timeout, kill PID) must still stop the servers this run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(sizes, workdir, log)
    if sizes.settle:
        bench.notes.append(f"Every timed run starts after {sizes.settle:g} s of quiet, once the previous run's "
                           "outputs are deleted: on this VM, freed memory goes back to the host after ~2 s and "
                           "costs several times more to write into again (benchmarks/measure.py).")
    started = time.monotonic()
    load_before = os.getloadavg()
    bench.build_inputs(rows)
    shutil.rmtree(bench.scratch, ignore_errors=True)
    bench.scratch.mkdir(parents=True)
    prefect_server = seaweed = None
    try:
        if args.prefect_api_url:
            bench.env = {"PREFECT_API_URL": args.prefect_api_url, "PREFECT_HOME": str(bench.scratch / "prefect-home")}
            bench.notes.append("Prefect: an already running API was used (--prefect-api-url).")
        else:
            log("starting a Prefect server on loopback")
            prefect_server = PrefectServer(bench.scratch / "prefect-home").start()
            bench.env = prefect_server.env()
            bench.notes.append(
                f"Prefect: one `prefect server start` on 127.0.0.1 (ready in {prefect_server.startup_seconds:.0f} s), "
                "started by the benchmark; every `memrestore` command talks to it through PREFECT_API_URL, as "
                "with a standing server in production. Prefect's embedded server would add its 12-15 s cold "
                "start to every single CLI call.")
        if rows & S3_ROWS:
            if args.s3_endpoint_url:
                s3_env = running_s3_env(args.s3_endpoint_url)
            else:
                from tests.seaweed import SeaweedS3

                log("starting SeaweedFS on loopback")
                seaweed = SeaweedS3(workdir / "seaweed", volume_size_limit_mb=1024).start()
                s3_env = seaweed.env()
            bench.connect_s3(s3_env)
        results, failed = run_rows(bench, rows)
    finally:
        if seaweed is not None:
            seaweed.stop()
        if prefect_server is not None:
            prefect_server.stop()
        shutil.rmtree(bench.scratch, ignore_errors=True)

    info = machine()
    load_after = os.getloadavg()
    info["load average (1 min) before / after"] = f"{load_before[0]:.1f} / {load_after[0]:.1f}"
    info["wall time of this run"] = f"{(time.monotonic() - started) / 60:.1f} min"
    write_report(output, results, info, command, sizes.pairs, bench.notes)
    log(f"wrote {output}")
    return 1 if failed else 0
