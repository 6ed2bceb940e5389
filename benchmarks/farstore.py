"""Rows 7 and 8 of the benchmark (issue 11): the big snapshot from SeaweedFS as from a far store.

A far store is modelled by ``tests.farproxy`` run as a process of its own in front of SeaweedFS:
each TCP connection gets at most ``rate`` bytes a second and every request waits ``delay`` before it
is forwarded, as a real S3 gives one connection ~80-100 MB/s and makes each request wait 20-100 ms
for its first byte. The rate is scaled down (this machine has two cores, and SeaweedFS, the proxy
and the client share them): what is compared is how well each client fills a link whose
connections are each slow, which is what a far store asks of it.

Interleaved in one run, A B C D E A B C D E ...:

- ``memrestore restore`` (the restore-snapshot flow through the CLI, its default streams);
- ``aws s3 cp --recursive`` (the AWS CLI from PyPI, its defaults: 10 concurrent requests of
  8 MiB), installed in a venv of its own under ``benchmarks/.data/awscli-venv`` (it pins botocore
  exactly, so it cannot share ours);
- ``rclone copy --transfers 4`` (Debian's rclone, its defaults: 4 streams a file above 256 MiB);
- boto3's ``download_file`` of each object, one after the other (default TransferConfig: 10);
- ``memrestore restore --limit-rate`` (row 8: is the cap held?).

For every run the proxy reports the GETs it had in flight (sampled every 10 ms) and the CPU it
used, so that the table shows what each client kept in flight, and that the proxy was not the limit.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.measure import Command, Run, Series, interleave_all
from benchmarks.report import MiB, Row, _in_flow

REPO = Path(__file__).resolve().parent.parent
#: The AWS CLI's version, pinned so that runs compare alike (the one PyPI had when this was written).
AWSCLI = "awscli==1.45.11"
#: Where the AWS CLI's venv lives: the repo's benchmark cache, whatever --workdir says, so that the
#: quick run (and its smoke test) reuses it.
AWSCLI_VENV = REPO / "benchmarks" / ".data" / "awscli-venv"


@dataclass(frozen=True)
class FarStore:
    """How far the store is: per-connection bytes a second, seconds each request waits."""

    rate: float
    delay: float
    #: Row 8's --limit-rate, and the same in bytes a second.
    limit: str
    limit_bytes: int

    def describe(self) -> str:
        return (f"each connection capped at {self.rate / 1e6:g} MB/s, each request delayed "
                f"{self.delay * 1000:g} ms")


def ensure_awscli(log: Callable[[str], None]) -> Path:
    """The ``aws`` program of the benchmark's own venv, installed first if missing."""
    aws = AWSCLI_VENV / "bin" / "aws"
    if aws.exists():
        return aws
    log(f"installing {AWSCLI} into {AWSCLI_VENV}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(AWSCLI_VENV)], check=True)
    subprocess.run([str(AWSCLI_VENV / "bin" / "pip"), "install", "-q", AWSCLI], check=True)
    return aws


class ProxyProcess:
    """``python -m tests.farproxy`` as a child process, with its counters read per measured run."""

    def __init__(self, upstream: str, far: FarStore, workdir: Path) -> None:
        self.workdir = workdir
        self.port_file = workdir / "farproxy.port"
        self.stats_file = workdir / "farproxy.stats.json"
        for f in (self.port_file, self.stats_file):
            f.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.farproxy", "--upstream", upstream, "--rate", str(far.rate),
             "--delay", str(far.delay), "--port-file", str(self.port_file), "--stats", str(self.stats_file)],
            cwd=REPO, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.port_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the far-store proxy did not start")
            time.sleep(0.05)
        self.endpoint_url = f"http://127.0.0.1:{self.port_file.read_text().strip()}"
        self._cpu_at = 0.0

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def counters(self) -> dict:
        """The proxy's counters since the last call (and its CPU seconds), started again."""
        before = self.stats_file.stat().st_mtime_ns if self.stats_file.exists() else None
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while (not self.stats_file.exists() or self.stats_file.stat().st_mtime_ns == before) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = json.loads(self.stats_file.read_text())
        cpu = self.cpu_seconds()
        stats["cpu_seconds"], self._cpu_at = cpu - self._cpu_at, cpu
        return stats

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Observed:
    """What the proxy saw during each run of one command."""

    runs: list[dict] = field(default_factory=list)

    def median_in_flight(self) -> float:
        return statistics.median(statistics.median(r["timeline"]) if r["timeline"] else 0 for r in self.runs)

    def cpu(self) -> float:
        return statistics.median(r["cpu_seconds"] for r in self.runs)


def _observed(proxy: ProxyProcess, command: Command, seen: Observed) -> Command:
    """``command`` with the proxy's counters started before each run and read after it."""

    def before() -> None:
        if command.before is not None:
            command.before()
        proxy.counters()

    def after(run: Run) -> None:
        seen.runs.append(proxy.counters())
        if command.after is not None:
            command.after(run)

    return Command(command.label, command.argv, command.env, command.cwd, before, after, command.ok_exit_codes)


def _mb_s(total_bytes: float, seconds: float) -> str:
    return f"{total_bytes / seconds / 1e6:.0f} MB/s"


def _bytes_restored(series: Series) -> float:
    values = []
    for run in series.runs:
        try:
            values.append(float(json.loads(run.stdout)["total_bytes"]))
        except (ValueError, KeyError, TypeError):
            pass
    return statistics.median(values) if values else float("nan")


def far_rows(bench, far: FarStore, remove: Callable[[Path], Callable[..., None]]) -> list[Row]:
    """Rows 7 (memrestore against the best of the AWS CLI, rclone and boto3) and 8 (the cap)."""
    from benchmarks.run import BUCKET, _size

    spec = bench.sizes.big
    keys = bench.warm_s3(spec)
    aws = ensure_awscli(bench.log)
    proxy = ProxyProcess(bench.s3_env["AWS_ENDPOINT_URL"], far, bench.scratch)
    try:
        env = bench.child_env(bench.s3_env, {"AWS_ENDPOINT_URL": proxy.endpoint_url})
        out = {name: bench.scratch / f"r7-{name}" for name in ("memrestore", "aws", "rclone", "boto3", "capped")}
        rclone_env = bench.child_env({
            "RCLONE_CONFIG": str(bench.workdir / "rclone.conf"),  # absent: the remote is all env
            "RCLONE_CONFIG_FAR_TYPE": "s3",
            "RCLONE_CONFIG_FAR_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_FAR_ENDPOINT": proxy.endpoint_url,
            "RCLONE_CONFIG_FAR_ACCESS_KEY_ID": bench.s3_env["AWS_ACCESS_KEY_ID"],
            "RCLONE_CONFIG_FAR_SECRET_ACCESS_KEY": bench.s3_env["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_CONFIG_FAR_REGION": bench.s3_env.get("AWS_DEFAULT_REGION", "us-east-1"),
        })
        ours = bench.restore_cmd(f"s3://{BUCKET}", spec, out["memrestore"], "memrestore restore (far S3)", env=env)
        capped = bench.restore_cmd(f"s3://{BUCKET}", spec, out["capped"],
                                   f"memrestore restore --limit-rate {far.limit} (far S3)", env=env)
        capped = Command(capped.label, [*capped.argv, "--limit-rate", far.limit], capped.env, capped.cwd,
                         capped.before, capped.after)
        peers = [
            Command("aws s3 cp --recursive",
                    [str(aws), "s3", "cp", "--recursive", "--only-show-errors", "--exclude", "manifest.json",
                     "--endpoint-url", proxy.endpoint_url, f"s3://{BUCKET}/{spec.snapshot_id}/", str(out["aws"])],
                    env=env, before=remove(out["aws"]), after=remove(out["aws"])),
            Command("rclone copy --transfers 4 (far)",
                    ["rclone", "copy", f"far:{BUCKET}/{spec.snapshot_id}", str(out["rclone"]),
                     "--transfers", "4", "--exclude", "manifest.json"],
                    env=rclone_env, before=remove(out["rclone"]), after=remove(out["rclone"])),
            Command("boto3 download_file (far)",
                    [sys.executable, "-m", "benchmarks.peers", "boto3-download", BUCKET, str(out["boto3"]), *keys],
                    env=env, before=remove(out["boto3"]), after=remove(out["boto3"])),
        ]
        commands = [ours, *peers, capped]
        seen = [Observed() for _ in commands]
        series = interleave_all([_observed(proxy, c, s) for c, s in zip(commands, seen)],
                                bench.sizes.pairs, bench.log, bench.sizes.settle)
    finally:
        proxy.stop()
    ours_s, peer_s, capped_s = series[0], series[1:-1], series[-1]
    total = _bytes_restored(ours_s)
    best = min(peer_s, key=lambda s: s.median_seconds)
    flow = _in_flow(ours_s)
    whole_ratio = best.median_seconds / ours_s.median_seconds
    flow_ratio = best.median_seconds / flow if flow else float("nan")
    peers_text = "; ".join(
        f"{s.label} {s.median_seconds:.1f} s ({_mb_s(total, s.median_seconds)}, {o.median_in_flight():g} GETs "
        f"in flight)" for s, o in zip(peer_s, seen[1:-1]))
    row7 = Row(
        "7", f"the same {_size(spec)} snapshot from SeaweedFS through a far-store proxy ({far.describe()})",
        f"the best of the AWS CLI, rclone and boto3 (this run: {best.label})",
        f"{ours_s.median_seconds:.2f} s", f"{best.median_seconds:.2f} s",
        f"{whole_ratio:.2f}x throughput (in the flow {flow_ratio:.2f}x)",
        "throughput ratio >= 1.0, whole command and in the flow", whole_ratio >= 1.0 and flow_ratio >= 1.0,
        f"memrestore {_mb_s(total, ours_s.median_seconds)} whole, {_mb_s(total, flow) if flow else '?'} in the "
        f"flow ({flow or 0:.2f} s), {seen[0].median_in_flight():g} GETs in flight (median), peak RSS "
        f"{ours_s.max_rss_bytes / MiB:.0f} MiB; {peers_text}; proxy CPU per run (median) "
        + ", ".join(f"{o.cpu():.1f} s" for o in seen[:-1]),
        [ours_s, *peer_s])
    capped_flow = _in_flow(capped_s)
    rate = _bytes_restored(capped_s) / capped_flow if capped_flow else float("nan")
    off = rate / far.limit_bytes - 1
    row8 = Row(
        "8", f"row 7's restore with `--limit-rate {far.limit}` ({far.limit_bytes / 1e6:.1f} MB/s)",
        "the limit", f"{rate / 1e6:.1f} MB/s in the flow", f"{far.limit_bytes / 1e6:.1f} MB/s",
        f"{rate / far.limit_bytes:.3f}x the limit", "within 10% of the limit", abs(off) <= 0.10,
        f"in the flow {capped_flow or 0:.2f} s (median) for {total / MiB:.0f} MiB; whole command "
        f"{capped_s.median_seconds:.2f} s; {seen[-1].median_in_flight():g} GETs in flight (median); proxy CPU "
        f"{seen[-1].cpu():.1f} s", [capped_s])
    return [row7, row8]
