"""Where an S3 restore's time goes on a fast link (issue 20, rows 9 and 10): the plain functions of
a restore (``tasks.restore.restore``, no Prefect) of a 1 GiB snapshot from SeaweedFS, with and
without the two things a restore does that ``s5cmd cp`` does not, beside s5cmd itself and s5cmd
followed by that same work (``sync`` and ``b3sum`` of the files)::

    python -m benchmarks.s3_profile [--rounds 3] [--link loopback|near] [--no-write]

The cases, interleaved round by round, each after the previous one's output is deleted and synced:

- **restore**: the restore as it runs in the flow (blake3 of every byte against the manifest,
  the staged files' writeback started as they fill, fsync before the commit);
- **restore, no hashing**: the same with a hasher that does nothing (and the check against the
  manifest skipped): what verifying the bytes costs;
- **restore, no fsync**: the same with no writeback started and no fsync: what durability costs;
- **restore, neither**: both taken out, left with what s5cmd does: GETs and writes;
- **s5cmd cp**, and **s5cmd cp + sync + b3sum**: the peer, and the peer made to do the same
  work (its files on disk, and hashed).

A case with something taken out is a measurement, never a restore to trust. Every case reports its
wall seconds, its CPU seconds (the restore's in this process; s5cmd's and b3sum's as children)
and SeaweedFS's (and the proxy's, on the near link). The table replaces the section between this
module's markers for that link in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.data import GiB, SERVED_MODEL, content_paths, ensure_snapshot, even_snapshot
from benchmarks.report import median_with_runs, publish_section

#: Each link's section has markers of its own: ``<!-- s3-profile-loopback:begin -->`` ...
MARKERS = "<!-- s3-profile-{link}:begin -->", "<!-- s3-profile-{link}:end -->"
BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
BUCKET = "memrestore-s3-profile"
SPEC = even_snapshot("snap-1g", 4, 1 * GiB)
#: The near link of row 10: 200 MB/s a connection, 0.5 ms a request (benchmarks/links.py).
NEAR = (200e6, 0.0005)


def _process_cpu(pid: int) -> float:
    """User + system seconds of process ``pid`` and its waited-for children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _own_cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Case:
    name: str
    run: Callable[[Path], None]
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)


class _NoHash:
    def update(self, _data) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


def _knocked_out(hashing: bool, durability: bool) -> Callable[[], None]:
    """Take hashing and/or durability out of tasks/stage.py and tasks/marker.py for one case;
    returns what puts them back."""
    from memrestore.tasks import marker, stage

    saved = (stage.new_hasher, stage._verify_against_manifest, stage._sync_file_range, stage.os.fsync,
             marker.os.fsync)
    if hashing:
        stage.new_hasher = _NoHash
        stage._verify_against_manifest = lambda _item, _actual: True
    if durability:
        stage._sync_file_range = None
        stage.os.fsync = marker.os.fsync = lambda _fd: None  # the same os module: every fsync

    def restore() -> None:
        (stage.new_hasher, stage._verify_against_manifest, stage._sync_file_range, stage.os.fsync,
         marker.os.fsync) = saved

    return restore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.s3_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--link", choices=("loopback", "near"), default="loopback")
    parser.add_argument("--no-write", action="store_true", help="Print the table; leave BENCHMARKS.md alone.")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".data")
    args = parser.parse_args(argv)

    from benchmarks.farstore import FarStore, ProxyProcess
    from benchmarks.links import _s5cmd
    from tests.seaweed import SeaweedS3, s3_client

    local = args.workdir / "local"
    ensure_snapshot(local, SPEC)
    files = content_paths(local, SPEC.snapshot_id)
    work = Path(tempfile.mkdtemp(prefix="memrestore-s3-profile-"))
    server = SeaweedS3(work / "seaweed", volume_size_limit_mb=1024, stop_timeout=2.0).start()
    proxy = None
    try:
        env = server.env()
        client = s3_client(env["AWS_ENDPOINT_URL"], server)
        client.create_bucket(Bucket=BUCKET)
        for path in files + [local / SPEC.snapshot_id / "manifest.json"]:
            client.upload_file(str(path), BUCKET, str(path.relative_to(local)))
        if args.link == "near":
            proxy = ProxyProcess(env["AWS_ENDPOINT_URL"], FarStore(rate=NEAR[0], delay=NEAR[1], limit="64M",
                                                                   limit_bytes=64 * 2**20), work)
            env["AWS_ENDPOINT_URL"] = proxy.endpoint_url
        os.environ.update(env)  # boto3's chain, in this process and in s5cmd

        from memrestore.backends import open_backend
        from memrestore.tasks.checks import CheckLevel
        from memrestore.tasks.choose import fetch_manifest
        from memrestore.tasks.plan import DestinationState, RestoreMode
        from memrestore.tasks.restore import RestoreRequest, restore
        from memrestore.tasks.validate import validate

        url = f"s3://{BUCKET}"
        backend = open_backend(url)
        plan = validate(fetch_manifest(backend, None, SPEC.snapshot_id), DestinationState(embedding_model=SERVED_MODEL), url)

        def restoring(hashing: bool, durability: bool) -> Callable[[Path], None]:
            def run(out: Path) -> None:
                put_back = _knocked_out(hashing, durability)
                try:
                    restore(RestoreRequest(backend=url, tenant_id=plan.tenant_id, snapshot=SPEC.snapshot_id,
                                           data_dir=out / "data", mode=RestoreMode.NEW_CLUSTER, destination=plan.destination_state,
                                           check=CheckLevel.QUICK), backend=backend)
                finally:
                    put_back()
            return run

        s5cmd = [_s5cmd(), "--endpoint-url", env["AWS_ENDPOINT_URL"], "cp", "--exclude", "manifest.json", f"s3://{BUCKET}/{SPEC.snapshot_id}/*"]

        def s5(out: Path) -> None:
            subprocess.run([*s5cmd, f"{out}/"], check=True, stdout=subprocess.DEVNULL)

        def s5_same_work(out: Path) -> None:
            s5(out)
            subprocess.run(["sync"], check=True)
            subprocess.run(["b3sum", *sorted(map(str, out.iterdir()))], check=True, stdout=subprocess.DEVNULL)

        cases = [
            Case("restore (plain functions, as in the flow)", restoring(False, False)),
            Case("restore, no hashing", restoring(True, False)),
            Case("restore, no writeback or fsync", restoring(False, True)),
            Case("restore, neither (GETs and writes)", restoring(True, True)),
            Case("s5cmd cp", s5),
            Case("s5cmd cp + sync + b3sum (the same work)", s5_same_work),
        ]
        out = work / "out"
        for r in range(args.rounds):
            for case in cases:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                os.sync()
                time.sleep(3)  # the freed pages go back to the host first (benchmarks/measure.py)
                cpu = _own_cpu(resource.RUSAGE_SELF) + _own_cpu(resource.RUSAGE_CHILDREN)
                seaweed = _process_cpu(server._process.pid) + (proxy.cpu_seconds() if proxy else 0.0)
                started = time.perf_counter()
                case.run(out)
                case.seconds.append(time.perf_counter() - started)
                case.cpu.append(_own_cpu(resource.RUSAGE_SELF) + _own_cpu(resource.RUSAGE_CHILDREN) - cpu)
                case.server_cpu.append(_process_cpu(server._process.pid) + (proxy.cpu_seconds() if proxy else 0.0)
                                       - seaweed)
                print(f"  round {r + 1}: {case.name}: {case.seconds[-1]:.2f} s, CPU {case.cpu[-1]:.2f} s, "
                      f"server {case.server_cpu[-1]:.2f} s", flush=True)
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    s5_median = statistics.median(cases[4].seconds)
    where = "SeaweedFS on loopback" if args.link == "loopback" else \
        f"SeaweedFS behind the near-link proxy ({NEAR[0] / 1e6:g} MB/s a connection, {NEAR[1] * 1000:g} ms a request)"
    begin, end = (marker.format(link=args.link) for marker in MARKERS)
    lines = [
        begin,
        f"### Where an S3 restore's time goes on a fast link ({args.link})",
        "",
        f"`python -m benchmarks.s3_profile --link {args.link} --rounds {args.rounds}`, "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: the {SPEC.total_bytes // 2**20} MiB "
        f"snapshot of rows 9-12 from {where}, in this process with the plain functions (no Prefect, no "
        "command start-up), interleaved rounds; medians (all runs in parentheses). CPU: the case's own "
        "(s5cmd's and b3sum's as children); server: SeaweedFS's" + (" and the proxy's" if proxy else "") + ".",
        "",
        "| case | seconds | x s5cmd | CPU s | server CPU s |",
        "| --- | --- | --- | --- | --- |",
    ]
    for case in cases:
        lines.append(f"| {case.name} | {median_with_runs(case.seconds)} | "
                     f"{statistics.median(case.seconds) / s5_median:.2f}x | {statistics.median(case.cpu):.2f} | "
                     f"{statistics.median(case.server_cpu):.2f} |")
    lines.append(end)
    publish_section(BENCHMARKS_MD, lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
