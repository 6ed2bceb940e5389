"""The rows of the benchmark's table: each times memrestore (through the ``memrestore`` CLI and
its Prefect flows) against a peer that does the same job, A B A B, and gives one report Row."""

from __future__ import annotations

import json
import sys
from typing import Callable

from benchmarks.bench import BUCKET, Bench, remove, warm
from benchmarks.data import content_paths
from benchmarks.farstore import far_rows
from benchmarks.links import LINKS, link_row
from benchmarks.measure import Command, CommandFailed
from benchmarks.report import Row
from benchmarks.sizes import ALL_ROWS, FAR_ROWS, LINK_ROWS, size_text, spec_size


def row0_fixed_cost(bench: Bench) -> Row:
    """What every memrestore command pays whatever it restores: a 64 KiB restore, against
    importing Prefect alone (the floor of any command that runs a flow)."""
    spec = bench.sizes.tiny
    a = bench.restore_cmd(str(bench.local_root), spec, bench.scratch / "r0", f"memrestore restore {spec_size(spec)}")
    b = Command("python -c 'import prefect'", [sys.executable, "-c", "import prefect"], env=bench.child_env())
    sa, sb = bench.interleave(a, b)
    bench.fixed_cost_seconds = sa.median_seconds
    return Row.fixed_cost(f"fixed cost: `memrestore restore` of a {spec_size(spec)} snapshot (local folder)",
                          "`python -c 'import prefect'`", sa, sb, allowance=0.5)


def row1_local_vs_cp(bench: Bench) -> Row:
    """The issue's target holds at 4 GiB and up: the row restores row 4's large snapshot."""
    spec = bench.sizes.rss_large
    files = content_paths(bench.local_root, spec.snapshot_id)
    warm(files)
    out_mr, out_cp = bench.scratch / "r1-memrestore", bench.scratch / "r1-cp"
    a = bench.restore_cmd(str(bench.local_root), spec, out_mr, "memrestore restore (local)")
    b = bench.writing("cp + sync", ["sh", "-c", 'mkdir -p "$0" && cp "$@" "$0"/ && sync', str(out_cp),
                                    *map(str, files)], out_cp)
    sa, sb = bench.interleave(a, b)
    return Row.time_ratio("1", f"restore of a {spec_size(spec)} snapshot from a local folder, new_cluster",
                          "`cp` of the same files + `sync`", sa, sb, limit=1.25, flow_limit=1.1)


def _s3_against(bench: Bench, number: str, peer: Command, peer_what: str) -> Row:
    """Row ``number``: memrestore's restore of the big snapshot from the loopback S3 server
    against ``peer`` fetching the same objects, in throughput."""
    spec = bench.sizes.big
    a = bench.restore_cmd(f"s3://{BUCKET}", spec, bench.scratch / f"r{number}-memrestore",
                          "memrestore restore (S3)", env=bench.child_env(bench.s3_env))
    sa, sb = bench.interleave(a, peer)
    return Row.throughput_ratio(number, f"the same {spec_size(spec)} snapshot from SeaweedFS on loopback",
                                peer_what, sa, sb, floor=1.0)


def row2_s3_vs_boto3(bench: Bench) -> Row:
    keys = bench.warm_s3(bench.sizes.big)
    out = bench.scratch / "r2-boto3"
    peer = bench.writing("boto3 download_file",
                         [sys.executable, "-m", "benchmarks.peers", "boto3-download", BUCKET, str(out), *keys],
                         out, env=bench.child_env(bench.s3_env))
    return _s3_against(bench, "2", peer, "boto3's own `download_file` of the same objects, one after the "
                       "other, default TransferConfig (no hashing, no fsync)")


def row3_s3_vs_rclone(bench: Bench) -> Row:
    spec = bench.sizes.big
    bench.warm_s3(spec)
    out = bench.scratch / "r3-rclone"
    rclone_env = bench.child_env({
        "RCLONE_CONFIG": str(bench.workdir / "rclone.conf"),  # absent: the remote is all env
        "RCLONE_CONFIG_BENCHS3_TYPE": "s3",
        "RCLONE_CONFIG_BENCHS3_PROVIDER": "SeaweedFS",
        "RCLONE_CONFIG_BENCHS3_ENDPOINT": bench.s3_env["AWS_ENDPOINT_URL"],
        "RCLONE_CONFIG_BENCHS3_ACCESS_KEY_ID": bench.s3_env["AWS_ACCESS_KEY_ID"],
        "RCLONE_CONFIG_BENCHS3_SECRET_ACCESS_KEY": bench.s3_env["AWS_SECRET_ACCESS_KEY"],
        "RCLONE_CONFIG_BENCHS3_REGION": bench.s3_env.get("AWS_DEFAULT_REGION", "us-east-1"),
    })
    peer = bench.writing("rclone copy --transfers 4",
                         ["rclone", "copy", f"benchs3:{BUCKET}/{spec.snapshot_id}", str(out),
                          "--transfers", "4", "--exclude", "manifest.json"],
                         out, env=rclone_env)
    return _s3_against(bench, "3", peer, "`rclone copy --transfers 4` of the same objects (Debian's rclone; "
                       "its default multi-thread download; no fsync)")


def row4_rss(bench: Bench) -> Row:
    small, large = bench.sizes.rss_small, bench.sizes.rss_large
    for spec in (small, large):
        warm(content_paths(bench.local_root, spec.snapshot_id))
    a = bench.restore_cmd(str(bench.local_root), small, bench.scratch / "r4-small",
                          f"memrestore restore {spec_size(small)}")
    b = bench.restore_cmd(str(bench.local_root), large, bench.scratch / "r4-large",
                          f"memrestore restore {spec_size(large)}")
    sa, sb = bench.interleave(a, b)
    return Row.rss(f"peak RSS restoring a {spec_size(small)} and a {spec_size(large)} snapshot (local folder)",
                   sa, sb, limit_mib=200, growth=1.2)


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


def row5_drill(bench: Bench) -> Row:
    """``memrestore drill`` over many small tenants against the same drill (restore into scratch,
    check, delete, each tenant) with the plain functions: what the drill's flow and its task runs
    cost a tenant. Until 2026-12-07 the baseline was the restores alone, with no check and no
    delete, which measured the drill's own work as Prefect's cost."""
    n = bench.sizes.drill_tenants
    out_d, out_p = bench.scratch / "r5-drill", bench.scratch / "r5-plain"
    a = Command("memrestore drill",
                bench.memrestore("drill", "--backend", str(bench.drill_root), "--scratch-dir", str(out_d), "--json"),
                env=bench.child_env(), before=lambda: (remove(out_d)(), out_d.mkdir(parents=True)),
                after=remove(out_d), ok_exit_codes=(0, 1))
    b = Command("plain drill (drill_plain)",
                [sys.executable, "-m", "benchmarks.peers", "drill-many", str(bench.drill_root), str(out_p)],
                env=bench.child_env(), before=lambda: (remove(out_p)(), out_p.mkdir(parents=True)),
                after=remove(out_p))
    sa, sb = bench.interleave(a, b)
    bench.notes.append("Row 5, the drills' own reports: " + "; ".join(_drill_summary(run.stdout) for run in sa.runs))
    what = f"`memrestore drill` (the restore-drill flow) over {n} tenants, {size_text(bench.sizes.drill_bytes)} each"
    return Row.rate(f"{what} (local folder)", f"the same drill of the {n} tenants (restore into scratch, "
                    "check, delete) one by one with the plain functions (`tasks.drill.drill_plain`), no Prefect",
                    sa, sb, n, floor=0.8)


def row6_verify(bench: Bench) -> Row:
    spec = bench.sizes.big
    files = content_paths(bench.local_root, spec.snapshot_id)
    warm(files)
    a = Command("memrestore verify",
                bench.memrestore("verify", "--backend", str(bench.local_root), "--snapshot", spec.snapshot_id,
                                 "--json"), env=bench.child_env())
    b = Command("b3sum", ["b3sum", *map(str, files)])
    sa, sb = bench.interleave(a, b)
    return Row.time_ratio("6", f"`memrestore verify` of the {spec_size(spec)} snapshot (local folder)",
                          "`b3sum` of the same files (Debian's b3sum)", sa, sb, flow_limit=1.3,
                          fixed_cost=bench.fixed_cost_seconds)


#: The rows one function gives; rows 7 and 8 come from one interleaved run (benchmarks/farstore.py).
SINGLE_ROWS: dict[str, Callable[[Bench], Row]] = {
    "0": row0_fixed_cost, "1": row1_local_vs_cp, "2": row2_s3_vs_boto3, "3": row3_s3_vs_rclone,
    "4": row4_rss, "5": row5_drill, "6": row6_verify,
}


def run_rows(bench: Bench, rows: set[str]) -> tuple[list[Row], bool]:
    """The chosen rows in table order, and whether any failed (a failed row is a row that says
    so: one broken row must not cost the others)."""
    results: list[Row] = []
    failed = False
    for number in ALL_ROWS:
        if number in FAR_ROWS and number in rows and number == min(rows & FAR_ROWS):
            bench.log("rows 7 and 8 (far store)")
            try:  # one interleaved run gives both rows
                results += [r for r in far_rows(bench, bench.sizes.far, remove) if r.number in rows]
            except CommandFailed as exc:
                bench.log(f"rows 7 and 8 failed: {exc}")
                results += [Row.failed(n, str(exc)) for n in sorted(rows & FAR_ROWS)]
                failed = True
        if number in rows and number in LINK_ROWS:
            link = next(link for link in LINKS if link.number == number)
            bench.log(f"row {number} ({link.name} link)")
            try:
                bench.upload_big(bench.s3_client, bench.sizes.links)
                results.append(link_row(bench, link, bench.sizes.links, remove))
            except CommandFailed as exc:
                bench.log(f"row {number} failed: {exc}")
                results.append(Row.failed(number, str(exc)))
                failed = True
        if number in rows and number in SINGLE_ROWS:
            bench.log(f"row {number}")
            try:
                results.append(SINGLE_ROWS[number](bench))
            except CommandFailed as exc:
                bench.log(f"row {number} failed: {exc}")
                results.append(Row.failed(number, str(exc)))
                failed = True
    return results, failed
