"""The benchmark of issue 5: memrestore against real peers, interleaved, written to BENCHMARKS.md.

    python -m benchmarks                 # the full run (make bench): ~2 GiB snapshots, 3 pairs a row
    python -m benchmarks --quick         # tiny data, 1 pair: proves the benchmark still runs
    python -m benchmarks --rows 2,3      # only some rows (the table says which ran)

Every row times whole commands in child processes, A B A B: memrestore through its real product
path (the ``memrestore`` CLI, which runs the Prefect flows against a ``prefect server start`` this
benchmark starts once on a loopback port) against a peer that does the same job. Between any two
runs, outputs are deleted and dirty pages synced, untimed, so that no run pays for another's
writeback. Inputs are built once and cached (``benchmarks/.data/``); page-cache state is the same
for both sides (each input is read once before a row starts).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.data import (
    GiB,
    MiB,
    SERVED_MODEL,
    SnapshotSpec,
    content_paths,
    ensure_snapshot,
    even_snapshot,
)
from benchmarks.farstore import FarStore, far_rows
from benchmarks.measure import Command, CommandFailed, interleave
from benchmarks.report import Row, write_report
from benchmarks.servers import PREFECT_QUIET, PrefectServer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = REPO / "benchmarks" / ".data"
BUCKET = "memrestore-bench"
ALL_ROWS = ("0", "1", "2", "3", "4", "5", "6", "7", "8")
#: Rows that read the big snapshot from S3 (SeaweedFS), and those that read it from a far store.
S3_ROWS = {"2", "3", "7", "8"}
FAR_ROWS = {"7", "8"}


@dataclass(frozen=True)
class Sizes:
    """What one run builds and measures."""

    tiny: SnapshotSpec  # row 0
    big: SnapshotSpec  # rows 1, 2, 3, 6
    rss_small: SnapshotSpec  # row 4
    rss_large: SnapshotSpec  # row 4
    drill_tenants: int  # row 5
    drill_bytes: int  # row 5, per tenant
    pairs: int
    #: Seconds of quiet before each timed run (benchmarks/measure.py says why).
    settle: float
    #: Rows 7 and 8: how far the far store is, and row 8's cap.
    far: FarStore


FULL = Sizes(
    tiny=even_snapshot("tiny-64k", 4, 64 * 1024),
    big=even_snapshot("snap-2g", 1, 2 * GiB),
    rss_small=even_snapshot("snap-256m", 2, 256 * MiB),
    rss_large=even_snapshot("snap-4g", 3, 4 * GiB),
    drill_tenants=200,
    drill_bytes=1 * MiB,
    pairs=3,
    settle=4.0,
    # 6 MB/s a connection: the AWS CLI's 10 connections take ~36 s for 2 GiB, and 32 streams
    # (~190 MB/s) leave this machine's two cores room (BENCHMARKS.md: the proxy's CPU per run).
    far=FarStore(rate=6_000_000, delay=0.02, limit="64M", limit_bytes=64 * MiB),
)
QUICK = Sizes(
    tiny=even_snapshot("tiny-64k", 4, 64 * 1024),
    big=even_snapshot("quick-big", 1, 4 * MiB),
    rss_small=even_snapshot("quick-small", 2, 1 * MiB),
    rss_large=even_snapshot("quick-large", 3, 8 * MiB),
    drill_tenants=2,
    drill_bytes=64 * 1024,
    pairs=1,
    settle=0.0,
    far=FarStore(rate=4_000_000, delay=0.02, limit="2M", limit_bytes=2 * MiB),
)


def _bin(name: str) -> str:
    """A program of this venv (memrestore, prefect), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def _sync() -> None:
    os.sync()


def _remove(path: Path) -> Callable[..., None]:
    def clean(*_: object) -> None:
        shutil.rmtree(path, ignore_errors=True)
        _sync()

    return clean


def _warm(paths: list[Path]) -> None:
    """Read inputs once so that both sides of a row start from the same (warm) page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(8 * MiB):
                pass


@dataclass
class Bench:
    sizes: Sizes
    workdir: Path
    log: Callable[[str], None] = print
    env: dict[str, str] = field(default_factory=dict)  # for memrestore (Prefect)
    s3_env: dict[str, str] = field(default_factory=dict)  # AWS_* of the S3 server
    s3_client: object = None  # a boto3 client of that server (uploads, warming)
    notes: list[str] = field(default_factory=list)

    @property
    def local_root(self) -> Path:
        return self.workdir / "local"

    @property
    def drill_root(self) -> Path:
        return self.workdir / "local-drill"

    @property
    def scratch(self) -> Path:
        return self.workdir / "scratch"

    def child_env(self, *extra: dict[str, str]) -> dict[str, str]:
        # AWS_PROFILE and a session token would override the S3 server's keys; a custom CA bundle
        # means nothing to a plain-http loopback endpoint and rclone refuses its http transport.
        dropped = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE")
        env = {k: v for k, v in os.environ.items() if k not in dropped}
        env.update(PREFECT_QUIET)
        env.update(self.env)
        for e in extra:
            env.update(e)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        return env

    def memrestore(self, *args: str) -> list[str]:
        return [_bin("memrestore"), *args]

    def restore_cmd(self, backend: str, spec: SnapshotSpec, data_dir: Path, label: str, env=None) -> Command:
        return Command(
            label,
            self.memrestore("restore", "--backend", backend, "--tenant", str(spec.tenant_id),
                            "--snapshot", spec.snapshot_id, "--data-dir", str(data_dir),
                            "--mode", "new_cluster", "--embedding-model", SERVED_MODEL, "--json"),
            env=env or self.child_env(),
            before=_remove(data_dir),
            after=_remove(data_dir),
        )

    # -- inputs ----------------------------------------------------------------------------

    def build_inputs(self, rows: set[str]) -> None:
        s = self.sizes
        specs = []
        if "0" in rows:
            specs.append(s.tiny)
        if rows & {"1", "2", "3", "6"} | (rows & FAR_ROWS):
            specs.append(s.big)
        if "4" in rows:
            specs += [s.rss_small, s.rss_large]
        for spec in specs:
            ensure_snapshot(self.local_root, spec, self.log)
        if "5" in rows:
            built = 0
            for i in range(s.drill_tenants):
                spec = even_snapshot(f"drill-{i:04d}", 1000 + i, s.drill_bytes)
                built += ensure_snapshot(self.drill_root, spec, log=lambda _m: None)
            if built:
                self.log(f"built {built} drill snapshots in {self.drill_root}")

    def upload_big(self, client) -> None:
        """Put the big snapshot in the bucket, content first and manifest last, unless the same
        objects are already there (SeaweedFS keeps its data in the cache dir across runs)."""
        from memrestore.backends.s3 import S3Backend

        backend = S3Backend(BUCKET, "", client=client)
        spec = self.sizes.big
        manifest = (self.local_root / spec.snapshot_id / "manifest.json").read_bytes()
        try:
            same = client.get_object(Bucket=BUCKET, Key=f"{spec.snapshot_id}/manifest.json")["Body"].read() == manifest
        except Exception:  # noqa: BLE001 - absent or unreadable: upload
            same = False
        if same:
            for path in content_paths(self.local_root, spec.snapshot_id):
                key = str(path.relative_to(self.local_root))
                try:
                    same = same and client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == path.stat().st_size
                except Exception:  # noqa: BLE001
                    same = False
        if same:
            return
        self.log(f"uploading {spec.snapshot_id} to s3://{BUCKET}")
        for path in content_paths(self.local_root, spec.snapshot_id):
            backend.put_object(str(path.relative_to(self.local_root)), path)
        backend.put_object(f"{spec.snapshot_id}/manifest.json", manifest)

    # -- rows ----------------------------------------------------------------------------

    def row0_fixed_cost(self) -> Row:
        """What every memrestore command pays whatever it restores: a 64 KiB restore, against
        importing Prefect alone (the floor of any command that runs a flow)."""
        spec = self.sizes.tiny
        a = self.restore_cmd(str(self.local_root), spec, self.scratch / "r0", f"memrestore restore {_size(spec)}")
        b = Command("python -c 'import prefect'", [sys.executable, "-c", "import prefect"], env=self.child_env())
        sa, sb = interleave(a, b, self.sizes.pairs, self.log, self.sizes.settle)
        return Row.fixed_cost(f"fixed cost: `memrestore restore` of a {_size(spec)} snapshot (local folder)",
                              "`python -c 'import prefect'`", sa, sb)

    def row1_local_vs_cp(self) -> Row:
        spec = self.sizes.big
        files = content_paths(self.local_root, spec.snapshot_id)
        _warm(files)
        out_mr, out_cp = self.scratch / "r1-memrestore", self.scratch / "r1-cp"
        a = self.restore_cmd(str(self.local_root), spec, out_mr, "memrestore restore (local)")
        b = Command(
            "cp + sync",
            ["sh", "-c", 'mkdir -p "$0" && cp "$@" "$0"/ && sync', str(out_cp), *map(str, files)],
            before=_remove(out_cp), after=_remove(out_cp),
        )
        sa, sb = interleave(a, b, self.sizes.pairs, self.log, self.sizes.settle)
        return Row.time_ratio("1", f"restore of a {_size(spec)} snapshot from a local folder, new_cluster",
                              "`cp` of the same files + `sync`", sa, sb, limit=1.25, in_flow=True)

    def warm_s3(self, spec: SnapshotSpec) -> list[str]:
        """Read the snapshot's objects from S3 once, bytes discarded, so that both sides of a row
        find the server's volumes in the page cache (the first read after SeaweedFS starts took
        10.8 s against 3.7-4.1 s, and went to whichever side ran first); returns their keys."""
        keys = [str(p.relative_to(self.local_root)) for p in content_paths(self.local_root, spec.snapshot_id)]
        for key in keys:
            body = self.s3_client.get_object(Bucket=BUCKET, Key=key)["Body"]
            while body.read(8 * MiB):
                pass
        return keys

    def row2_s3_vs_boto3(self) -> Row:
        spec = self.sizes.big
        keys = self.warm_s3(spec)
        out_mr, out_b = self.scratch / "r2-memrestore", self.scratch / "r2-boto3"
        env = self.child_env(self.s3_env)
        a = self.restore_cmd(f"s3://{BUCKET}", spec, out_mr, "memrestore restore (S3)", env=env)
        b = Command("boto3 download_file",
                    [sys.executable, "-m", "benchmarks.peers", "boto3-download", BUCKET, str(out_b), *keys],
                    env=env, before=_remove(out_b), after=_remove(out_b))
        sa, sb = interleave(a, b, self.sizes.pairs, self.log, self.sizes.settle)
        return Row.throughput_ratio("2", f"the same {_size(spec)} snapshot from SeaweedFS on loopback",
                                    "boto3's own `download_file` of the same objects, one after the other, "
                                    "default TransferConfig (no hashing, no fsync)", sa, sb, floor=1.0)

    def row3_s3_vs_rclone(self) -> Row:
        spec = self.sizes.big
        self.warm_s3(spec)
        out_mr, out_r = self.scratch / "r3-memrestore", self.scratch / "r3-rclone"
        env = self.child_env(self.s3_env)
        rclone_env = self.child_env({
            "RCLONE_CONFIG": str(self.workdir / "rclone.conf"),  # absent: the remote is all env
            "RCLONE_CONFIG_BENCHS3_TYPE": "s3",
            "RCLONE_CONFIG_BENCHS3_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_BENCHS3_ENDPOINT": self.s3_env["AWS_ENDPOINT_URL"],
            "RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID": self.s3_env["AWS_ACCESS_KEY_ID"],
            "RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY": self.s3_env["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_CONFIG_BENCHS3_REGION": self.s3_env.get("AWS_DEFAULT_REGION", "us-east-1"),
        })
        a = self.restore_cmd(f"s3://{BUCKET}", spec, out_mr, "memrestore restore (S3)", env=env)
        b = Command("rclone copy --transfers 4",
                    ["rclone", "copy", f"benchs3:{BUCKET}/{spec.snapshot_id}", str(out_r),
                     "--transfers", "4", "--exclude", "manifest.json"],
                    env=rclone_env, before=_remove(out_r), after=_remove(out_r))
        sa, sb = interleave(a, b, self.sizes.pairs, self.log, self.sizes.settle)
        return Row.throughput_ratio("3", f"the same {_size(spec)} snapshot from SeaweedFS on loopback",
                                    "`rclone copy --transfers 4` of the same objects (Debian's rclone; "
                                    "its default multi-thread download; no fsync)", sa, sb, floor=1.0)

    def row4_rss(self) -> Row:
        small, large = self.sizes.rss_small, self.sizes.rss_large
        for spec in (small, large):
            _warm(content_paths(self.local_root, spec.snapshot_id))
        a = self.restore_cmd(str(self.local_root), small, self.scratch / "r4-small", f"memrestore restore {_size(small)}")
        b = self.restore_cmd(str(self.local_root), large, self.scratch / "r4-large", f"memrestore restore {_size(large)}")
        sa, sb = interleave(a, b, self.sizes.pairs, self.log, self.sizes.settle)
        return Row.rss(f"peak RSS restoring a {_size(small)} and a {_size(large)} snapshot (local folder)",
                       sa, sb, limit_mib=200, growth=1.2)

    def row5_drill(self) -> Row:
        n = self.sizes.drill_tenants
        ids = [f"drill-{i:04d}" for i in range(n)]
        out_d, out_p = self.scratch / "r5-drill", self.scratch / "r5-plain"
        has_drill = subprocess.run(
            [sys.executable, "-c", "import flows.drill, flows.cli as c; "
             "assert 'drill' in [x.name or x.callback.__name__ for x in c.app.registered_commands]"],
            env=self.child_env(), capture_output=True).returncode == 0
        if has_drill:
            a = Command("memrestore drill",
                        self.memrestore("drill", "--backend", str(self.drill_root), "--scratch-dir", str(out_d),
                                        "--json"),
                        env=self.child_env(), before=lambda: (_remove(out_d)(), out_d.mkdir(parents=True)),
                        after=_remove(out_d), ok_exit_codes=(0, 1))
            what = f"`memrestore drill` (the restore-drill flow) over {n} tenants, {_size_b(self.sizes.drill_bytes)} each"
        else:
            self.notes.append("Row 5: `memrestore drill` was not available, so the drill side is "
                              f"{n} restore-snapshot flow runs in one process.")
            a = Command("restore-snapshot flow x N",
                        [sys.executable, "-m", "benchmarks.peers", "flow-many", str(self.drill_root), str(out_d),
                         *ids, "--embedding-model", SERVED_MODEL],
                        env=self.child_env(), before=_remove(out_d), after=_remove(out_d))
            what = f"{n} restore-snapshot flow runs, {_size_b(self.sizes.drill_bytes)} snapshots"
        b = Command("plain execute x N",
                    [sys.executable, "-m", "benchmarks.peers", "execute-many", str(self.drill_root), str(out_p),
                     *ids, "--embedding-model", SERVED_MODEL],
                    env=self.child_env(), before=_remove(out_p), after=_remove(out_p))
        sa, sb = interleave(a, b, self.sizes.pairs, self.log, self.sizes.settle)
        if has_drill:
            self.notes.append("Row 5, the drills' own reports: " + "; ".join(
                _drill_summary(run.stdout) for run in sa.runs))
        return Row.rate(f"{what} (local folder)", f"the same {n} restores one by one with the plain functions "
                        "(`tasks.execute.execute`), no Prefect", sa, sb, n)

    def row6_verify(self) -> Row:
        spec = self.sizes.big
        files = content_paths(self.local_root, spec.snapshot_id)
        _warm(files)
        a = Command("memrestore verify",
                    self.memrestore("verify", "--backend", str(self.local_root), "--snapshot", spec.snapshot_id,
                                    "--json"), env=self.child_env())
        b = Command("b3sum", ["b3sum", *map(str, files)])
        sa, sb = interleave(a, b, self.sizes.pairs, self.log, self.sizes.settle)
        return Row.time_ratio("6", f"`memrestore verify` of the {_size(spec)} snapshot (local folder)",
                              "`b3sum` of the same files (Debian's b3sum)", sa, sb, limit=1.3, in_flow=True)


def _drill_summary(stdout: str) -> str:
    """How many tenants a drill run restored, and why any failed (from its --json report)."""
    try:
        tenants = json.loads(stdout)["tenants"]
    except (ValueError, KeyError, TypeError):
        return "no report"
    failed = [t for t in tenants if t.get("status") != "ok"]
    text = f"{len(tenants) - len(failed)} ok, {len(failed)} failed"
    reasons = sorted({" ".join(str(t.get("reason")).split())[:200] for t in failed})
    return text + (f" ({' / '.join(reasons)})" if reasons else "")


def _size_b(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB:
        return f"{n / MiB:.0f} MiB"
    return f"{n // 1024} KiB"


def _size(spec: SnapshotSpec) -> str:
    return _size_b(spec.total_bytes)


def machine() -> dict[str, str]:
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
            return out.splitlines()[0] if out else "?"
        except (OSError, subprocess.SubprocessError):
            return "missing"

    import blake3
    import boto3
    import prefect

    disk = shutil.disk_usage(DEFAULT_WORKDIR.parent)
    return {
        "cores": str(os.cpu_count()),
        "memory": mem,
        "cpu": cpu,
        "kernel": platform.release(),
        "disk free": f"{disk.free / GiB:.0f} GiB",
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "boto3": boto3.__version__,
        "blake3 (Python)": blake3.__version__ if hasattr(blake3, "__version__") else "?",
        "rclone": version(["rclone", "version"]),
        "b3sum": version(["b3sum", "--version"]),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, 1 pair a row (the smoke test's run)")
    parser.add_argument("--pairs", type=int, help="A/B pairs a row (default 3; --quick: 1)")
    parser.add_argument("--rows", default=",".join(ALL_ROWS), help="rows to run, e.g. 1,2,6 (default: all)")
    parser.add_argument("--workdir", type=Path, help="cache and scratch (default benchmarks/.data; "
                        "--quick: benchmarks/.data/quick)")
    parser.add_argument("--output", type=Path, help="the markdown report (default BENCHMARKS.md at the repo root; "
                        "--quick: <workdir>/BENCHMARKS.md)")
    parser.add_argument("--prefect-api-url", help="use this running Prefect API instead of starting one")
    parser.add_argument("--s3-endpoint-url", help="use this running S3 server (credentials from AWS_ACCESS_KEY_ID "
                        "and AWS_SECRET_ACCESS_KEY) instead of starting SeaweedFS")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.pairs:
        sizes = Sizes(**{**sizes.__dict__, "pairs": args.pairs})
    rows = {r.strip() for r in args.rows.split(",") if r.strip()}
    unknown = rows - set(ALL_ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; rows are {', '.join(ALL_ROWS)}")
    workdir = (args.workdir or (DEFAULT_WORKDIR / "quick" if args.quick else DEFAULT_WORKDIR)).absolute()
    output = (args.output or (workdir / "BENCHMARKS.md" if args.quick else REPO / "BENCHMARKS.md")).absolute()
    command = "python -m benchmarks" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    for tool, rows_needing in (("rclone", {"3", "7"}), ("b3sum", {"6"})):
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
    results: list[Row] = []
    failed = False
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
                bench.s3_env = {
                    "AWS_ENDPOINT_URL": args.s3_endpoint_url,
                    "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                    "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
                    "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
                    "AWS_EC2_METADATA_DISABLED": "true",
                }
            else:
                from tests.seaweed import SeaweedS3

                log("starting SeaweedFS on loopback")
                seaweed = SeaweedS3(workdir / "seaweed", volume_size_limit_mb=1024).start()
                bench.s3_env = seaweed.env()
            import boto3
            from botocore.config import Config

            client = boto3.session.Session().client(
                "s3", endpoint_url=bench.s3_env["AWS_ENDPOINT_URL"],
                aws_access_key_id=bench.s3_env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=bench.s3_env["AWS_SECRET_ACCESS_KEY"],
                region_name=bench.s3_env.get("AWS_DEFAULT_REGION", "us-east-1"),
                config=Config(s3={"addressing_style": "path"}))
            try:
                client.create_bucket(Bucket=BUCKET)
            except client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise
            bench.s3_client = client
            bench.upload_big(client)

        steps = {"0": bench.row0_fixed_cost, "1": bench.row1_local_vs_cp, "2": bench.row2_s3_vs_boto3, "3": bench.row3_s3_vs_rclone,
                 "4": bench.row4_rss, "5": bench.row5_drill, "6": bench.row6_verify}
        for number in ALL_ROWS:
            if number in FAR_ROWS and number in rows and number == min(rows & FAR_ROWS):
                log("rows 7 and 8 (far store)")
                try:  # one interleaved run gives both rows
                    results += [r for r in far_rows(bench, sizes.far, _remove) if r.number in rows]
                except CommandFailed as exc:
                    log(f"rows 7 and 8 failed: {exc}")
                    results += [Row.failed(n, str(exc)) for n in sorted(rows & FAR_ROWS)]
                    failed = True
            if number in rows and number in steps:
                log(f"row {number}")
                try:
                    results.append(steps[number]())
                except CommandFailed as exc:  # one broken row must not cost the others
                    log(f"row {number} failed: {exc}")
                    results.append(Row.failed(number, str(exc)))
                    failed = True
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
