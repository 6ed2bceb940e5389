"""Listing at scale (issues 6 and 11): the latest snapshot of every tenant of a 300,000-snapshot backend.

    python -m benchmarks.listing            # 10,000 tenants x 30 on a local folder, 1,000 x 30 on SeaweedFS
    python -m benchmarks.listing --quick    # tiny backends, one round: proves the benchmark still runs

The task timed is the drill's first step and ``memrestore snapshots``'s: list the backend and pick
every tenant's latest snapshot (by ``created_at_unix_micros``), in four ways:

- naive: list the ids, then read and parse every manifest one after another (the baseline);
- uncached: :func:`backends.list_snapshots` with the cache off (concurrent reads only);
- first run: :func:`backends.list_snapshots` with an empty cache file (concurrent reads, cache filled);
- warm run: the same again, the cache filled by the first run (no manifest read);

and, as the floor any way that asks the backend must pay, ``list only`` (the listing of keys and
versions alone). On S3, ``first run`` and ``list only`` are measured twice in every round: with the
keys listed by several ListObjectsV2 requests in flight over disjoint key ranges (the default), and
in one sequential pass (``, one pass``: ``S3Backend.list_ranges = 1``), their order swapped on every
other round; and again with a round trip added to every S3 request (``--latency-ms``, a botocore
hook that sleeps before each request is sent: a far store's wait for the first byte, at no CPU cost). Each run is a fresh child process (``--measure``), as a CLI call or a drill is:
the time is taken inside it around the listing and the pick (not the interpreter's start-up);
its peak RSS is the child's own ``VmHWM``; it counts the manifests it read, and reports a digest
of its picks, which must equal the generator's own answer. Rounds are interleaved (first, warm,
uncached, naive, list only; again), so that a burst of load from other users of the machine hits
every mode alike; medians are reported. A concurrency sweep (uncached, with 1 to 64 threads) is
measured too, to choose ``LIST_CONCURRENCY``.

The backends are generated once and kept under ``benchmarks/.data/listing/`` (SeaweedFS keeps its
data there too): manifest JSON written directly, with zero-byte content objects (a SQLite
checkpoint and an HNSW blob, whose blake3 the manifest carries). Generation is finished by a
rename (folder) or a completion object (S3), so an interrupted one is redone.

The results replace the text between :data:`START` and :data:`END` in ``BENCHMARKS.md`` and nothing
else (the section is appended after the issue-5 benchmark's notes marker the first time), so that
neither benchmark overwrites the other.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import blake3

from benchmarks.bench import running_s3_env
from benchmarks.report import write_section

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = REPO / "benchmarks" / ".data" / "listing"
START = "<!-- listing:begin -->"
END = "<!-- listing:end -->"
BUCKET = "memrestore-listing"

#: Snapshot times: one an hour from here, in an order that is not the ids' order.
BASE_MICROS = 1_700_000_000_000_000
HOUR_MICROS = 3_600_000_000
#: blake3 of zero bytes: the checksum of every (empty) content object.
EMPTY_BLAKE3 = blake3.blake3(b"").hexdigest()
#: Concurrent PUTs while generating on S3 (SeaweedFS on 2 cores stops gaining past this).
PUT_CONCURRENCY = 32
#: The local backend's racy window (backends.local): files younger than this are never cached.
RACY_WAIT_SECONDS = 2.5

MODES = ("first run", "warm run", "uncached", "naive", "list only")
#: On S3, the cold listing's key listing done as one sequential pass of ListObjectsV2 (what it was
#: before the concurrent listing), interleaved with the others in every round.
ONE_PASS = ("first run, one pass", "list only, one pass")
#: Every mode a child may be asked to measure.
ALL_MODES = MODES + ONE_PASS
DESCRIPTIONS = {
    "naive": "naive: list ids, read every manifest one after another",
    "uncached": "uncached: concurrent reads ({concurrency} threads), no cache",
    "first run": "first run: concurrent reads, cache filled",
    "warm run": "warm run: cache hit",
    "list only": "list only (keys and versions, no manifest): the floor",
    "first run, one pass": "first run, keys listed in one sequential pass",
    "list only, one pass": "list only, one sequential pass",
}
#: A round trip added to every S3 request of a child (``--latency-ms``): a botocore hook sleeps that
#: long before each request is sent, as a far store keeps each request waiting for its first byte.
#: It costs no CPU, so this 2-core machine is not the limit of what it models.
ENV_LATENCY = "MEMRESTORE_BENCH_S3_LATENCY_MS"


@dataclass(frozen=True)
class Fleet:
    """A generated backend: ``tenants`` x ``snapshots`` manifests."""

    tenants: int
    snapshots: int

    @property
    def total(self) -> int:
        return self.tenants * self.snapshots

    @property
    def name(self) -> str:
        return f"fleet-{self.tenants}x{self.snapshots}"

    def spec(self) -> dict:
        return {"tenants": self.tenants, "snapshots": self.snapshots, "format": 1}

    def _step(self) -> int:
        return next(k for k in range(7, 7 + self.snapshots + 1) if math.gcd(k, self.snapshots) == 1)

    def hour(self, tenant: int, n: int) -> int:
        """Snapshot ``n``'s hour among the tenant's: a permutation, so the newest is not the last id."""
        return (n * self._step() + tenant) % self.snapshots

    @staticmethod
    def snapshot_id(tenant: int, n: int) -> str:
        return f"tenant{tenant:05d}-snap{n:02d}"

    def manifest(self, tenant: int, n: int) -> bytes:
        """The manifest as the service writes it (serde_json's compact form)."""
        sid = self.snapshot_id(tenant, n)
        return json.dumps({
            "manifest_version": 1, "tenant_id": tenant, "snapshot_id": sid,
            "created_at_unix_micros": BASE_MICROS + self.hour(tenant, n) * HOUR_MICROS,
            "wire_version": {"major": 1, "minor": 0},
            "table_schema_versions": {"memory_commit_log": 1, "memories": 1},
            "oplog_watermark": 100, "oplog_floor": 1, "forget_floor": 50,
            "sqlite_checkpoint_key": f"{sid}/sqlite.db", "sqlite_checkpoint_checksum": EMPTY_BLAKE3,
            "hnsw_snapshots": [{
                "embedding_model": "minilm", "vector_dim": 384, "distance_metric": "cosine",
                "source_log_watermark": 100, "content_key": f"{sid}/hnsw-0.bin", "checksum": EMPTY_BLAKE3,
                "deleted_count_pending": 0,
            }],
            "encryption": {"algorithm": "aes-256-gcm", "dek_id": f"dek-{tenant}", "iv_b64": "AAAAAAAAAAAAAAAA"},
            "label": None,
        }, separators=(",", ":")).encode()

    def expected_picks(self) -> dict[int, str]:
        """The generator's own answer: each tenant's snapshot of the last hour."""
        return {t: next(self.snapshot_id(t, n) for n in range(self.snapshots)
                        if self.hour(t, n) == self.snapshots - 1) for t in range(self.tenants)}


def picks_digest(picks: dict[int, str]) -> str:
    return blake3.blake3("\n".join(f"{t} {sid}" for t, sid in sorted(picks.items())).encode()).hexdigest()[:16]


# -- generating the backends ------------------------------------------------------------------------


def ensure_local(root: Path, fleet: Fleet, log) -> None:
    """The fleet in the folder ``root``, generated unless a finished one of the same spec is there."""
    stamp = root.with_name(root.name + ".json")
    if root.is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == fleet.spec():
        return
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    tmp.mkdir(parents=True)
    log(f"generating {fleet.total:,} snapshots in {root}")
    began = time.monotonic()

    def tenant(t: int) -> None:
        for n in range(fleet.snapshots):
            folder = tmp / fleet.snapshot_id(t, n)
            folder.mkdir()
            (folder / "sqlite.db").touch()
            (folder / "hnsw-0.bin").touch()
            (folder / "manifest.json").write_bytes(fleet.manifest(t, n))  # last, as the service does

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(tenant, range(fleet.tenants)))
    os.rename(tmp, root)
    stamp.write_text(json.dumps(fleet.spec()))
    log(f"generated in {time.monotonic() - began:.0f} s")


def ensure_s3(client, prefix: str, fleet: Fleet, log) -> None:
    """The fleet under ``s3://BUCKET/prefix/``, generated unless its completion object says it is."""
    done_key = f".generated/{prefix}.json"
    try:
        client.create_bucket(Bucket=BUCKET)
    except client.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    try:
        if json.loads(client.get_object(Bucket=BUCKET, Key=done_key)["Body"].read()) == fleet.spec():
            return
    except client.exceptions.ClientError:
        pass
    log(f"generating {fleet.total:,} snapshots in s3://{BUCKET}/{prefix} ({PUT_CONCURRENCY} PUTs at a time)")
    began = time.monotonic()

    def snapshot(job: tuple[int, int]) -> None:
        t, n = job
        sid = fleet.snapshot_id(t, n)
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{sid}/sqlite.db", Body=b"")
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{sid}/hnsw-0.bin", Body=b"")
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{sid}/manifest.json", Body=fleet.manifest(t, n))

    jobs = [(t, n) for t in range(fleet.tenants) for n in range(fleet.snapshots)]
    with concurrent.futures.ThreadPoolExecutor(PUT_CONCURRENCY) as pool:
        for i, _ in enumerate(pool.map(snapshot, jobs), 1):
            if i % 5000 == 0:
                log(f"  {i:,} of {len(jobs):,} ({time.monotonic() - began:.0f} s)")
    client.put_object(Bucket=BUCKET, Key=done_key, Body=json.dumps(fleet.spec()).encode())
    log(f"generated in {time.monotonic() - began:.0f} s")


# -- one measured run (in a child process) ------------------------------------------------------------


class _Counting:
    """The backend under test, counting the manifests read through it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.url, self.identity = inner.url, inner.identity
        self.reads = 0

    def read_manifest_bytes(self, snapshot_id: str) -> bytes:
        self.reads += 1
        return self.inner.read_manifest_bytes(snapshot_id)

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def measure(mode: str, backend_url: str, cache_path: str | None, concurrency: int) -> dict:
    """List ``backend_url`` and pick every tenant's latest, the way ``mode`` says; what it took."""
    from memrestore.backends import ManifestCache, list_snapshots, open_backend, read_manifest

    inner = open_backend(backend_url)
    if mode.endswith(", one pass"):
        inner.list_ranges = 1
        mode = mode.removesuffix(", one pass")
    latency = float(os.environ.get(ENV_LATENCY) or 0) / 1000
    if latency and hasattr(inner, "client"):
        inner.client.meta.events.register("before-send.s3", lambda **_: time.sleep(latency))
    backend = _Counting(inner)
    began = time.perf_counter()
    if mode == "naive":
        best: dict[int, tuple[tuple[int, str], str]] = {}
        for sid in backend.list_snapshot_ids():
            m = read_manifest(backend, sid)
            key = (m.created_at_unix_micros, m.snapshot_id)
            if m.tenant_id not in best or key > best[m.tenant_id][0]:
                best[m.tenant_id] = (key, m.snapshot_id)
        picks = {t: sid for t, (_, sid) in best.items()}
    elif mode == "list only":
        backend.list_manifests()
        picks = {}
    else:
        cache = False if mode == "uncached" else ManifestCache(cache_path)
        listing = list_snapshots(backend, cache=cache, concurrency=concurrency)
        picks = {t: m.snapshot_id for t, m in listing.latest_by_tenant().items()}
    seconds = time.perf_counter() - began
    with open("/proc/self/status") as status:
        hwm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    listing = getattr(inner, "last_listing", {})
    return {"seconds": seconds, "reads": backend.reads, "tenants": len(picks), "digest": picks_digest(picks),
            "peak_rss_mib": hwm_kib / 1024, "list_requests": listing.get("requests"),
            "list_ranges": getattr(inner, "list_ranges", None)}


# -- the parent ------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One backend to measure."""

    label: str
    url: str
    fleet: Fleet
    env: dict[str, str]
    cache_path: Path
    runs: dict[str, list[dict]] = field(default_factory=dict)
    sweep: dict[int, dict] = field(default_factory=dict)
    cache_bytes: int = 0
    #: The modes measured each round, in this order on odd rounds; each pair of a mode and its
    #: one-pass twin swaps places on even rounds, so that neither side always runs first.
    modes: tuple[str, ...] = MODES


def run_child(target: Target, mode: str, concurrency: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("AWS_PROFILE", "AWS_SESSION_TOKEN")}
    env.update(target.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks.listing", "--measure", mode, "--backend", target.url,
               "--cache", str(target.cache_path), "--concurrency", str(concurrency)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check(target: Target, mode: str, result: dict) -> None:
    if mode.startswith("list only"):
        return
    expected = target.fleet.expected_picks()
    if result["digest"] != picks_digest(expected) or result["tenants"] != len(expected):
        raise RuntimeError(f"{target.label}, {mode}: picked a different latest for some tenant than the "
                           f"generator wrote ({result}); the benchmark's figures would mean nothing")


def round_order(modes: tuple[str, ...], r: int) -> list[str]:
    """``modes`` in the order of round ``r`` (0-based): on odd rounds a mode and its one-pass twin
    run the other way round."""
    order = list(modes)
    if r % 2:
        for twin in ONE_PASS:
            plain = twin.removesuffix(", one pass")
            if twin in order and plain in order:
                i, j = order.index(plain), order.index(twin)
                order[i], order[j] = order[j], order[i]
    return order


def measure_target(target: Target, rounds: int, concurrency: int, sweep: tuple[int, ...], log) -> None:
    for r in range(rounds):
        for mode in round_order(target.modes, r):
            if mode.startswith("first run"):
                for suffix in ("", "-journal", "-wal", "-shm"):
                    Path(f"{target.cache_path}{suffix}").unlink(missing_ok=True)
            result = run_child(target, mode, concurrency)
            check(target, mode, result)
            if mode == "first run":
                target.cache_bytes = target.cache_path.stat().st_size
            target.runs.setdefault(mode, []).append(result)
            log(f"  {target.label} round {r + 1}/{rounds}: {mode}: {result['seconds']:.2f} s, "
                f"{result['reads']:,} manifests read, {result['peak_rss_mib']:.0f} MiB, "
                f"{result.get('list_requests') or '-'} list requests")
    for threads in sweep:
        result = run_child(target, "uncached", threads)
        check(target, "uncached", result)
        target.sweep[threads] = result
        log(f"  {target.label} uncached with {threads} threads: {result['seconds']:.2f} s")


def secs(seconds: float) -> str:
    return f"{seconds:.3f} s" if seconds < 1 else f"{seconds:.2f} s"


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


#: Issue 6's cold listing on SeaweedFS, as its note gave it: the figures of that run never reached
#: BENCHMARKS.md's history (a rewrite of the file dropped the section before it was committed).
BEFORE = ("Before (issue 6's note): a cold listing of 30,000 snapshots on SeaweedFS took 85-94 s, one "
          "sequential pass; that run's table is not in git history (a rewrite of BENCHMARKS.md dropped it "
          "before it was committed), so the sequential pass is measured again below, in the same run.")


def render_concurrent(targets: list[Target], rounds: int, ranges: int) -> list[str]:
    """The concurrent cold listing against the one-pass listing of keys, measured in the same run."""
    lines = [
        "### The concurrent cold listing against the sequential pass (issue 11)",
        "",
        BEFORE,
        "",
        f"On S3 the keys are listed by {ranges} ListObjectsV2 requests in flight at once over disjoint key",
        "ranges (`backends/key_ranges.py`: split points found while listing, by work stealing), the",
        f"manifests read {LIST_CONCURRENCY_TEXT}. The sequential pass is the same code with one range:",
        "ListObjectsV2 one page of 1,000 keys after another, then the same concurrent reads. Both in",
        "every round, their order swapped from one round to the next; medians, and every run. `first run`:",
        "the cold listing (empty cache file, every manifest read and cached); `list only`: the keys alone.",
        "",
        "| backend | what | concurrent (median) | one pass (median) | one pass / concurrent | list requests "
        "(concurrent / one pass) | every run (s): concurrent; one pass |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in targets:
        if not any(m in t.runs for m in ONE_PASS):
            continue
        where = f"{t.label}, {t.fleet.total:,} snapshots"
        for mode in ("list only", "first run"):
            twin = f"{mode}, one pass"
            if mode not in t.runs or twin not in t.runs:
                continue
            a, b = t.runs[mode], t.runs[twin]
            ma, mb = median(a, "seconds"), median(b, "seconds")
            requests = f"{_median_of(a, 'list_requests')} / {_median_of(b, 'list_requests')}"
            every = (", ".join(f"{r['seconds']:.3g}" for r in a) + "; "
                     + ", ".join(f"{r['seconds']:.3g}" for r in b))
            lines.append(f"| {where} | {mode} | {secs(ma)} | {secs(mb)} | {mb / ma:.2f}x | {requests} | {every} |")
            where = ""
    return lines


def _median_of(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs if r.get(key) is not None]
    return f"{statistics.median(values):.0f}" if values else "-"


LIST_CONCURRENCY_TEXT = "concurrently as before (`LIST_CONCURRENCY` threads)"


def render(targets: list[Target], command: str, rounds: int, concurrency: int, info: dict[str, str], when: str) -> str:
    from memrestore.backends.s3 import LIST_RANGES

    lines = [
        START,
        "## Listing at scale (issues 6 and 11)",
        "",
        f"Generated by `{command}` on {when}. The machine has 2 cores and was shared: other engineers ran",
        "tests and benchmarks on it while this ran (load average below), and SeaweedFS shares those cores",
        "with its client, so timings are noisy: rounds are interleaved and medians reported.",
        "",
    ]
    lines += render_concurrent(targets, rounds, LIST_RANGES)
    targets = [t for t in targets if "naive" in t.runs]
    lines += [
        "",
        "### Naive, first run, warm run (issue 6)",
        "",
        "The task: list the backend and pick every tenant's latest snapshot (by `created_at_unix_micros`),",
        "as a drill's first step and `memrestore snapshots` do. Each run is a fresh process; its time is",
        f"the wall time around listing and picking (median of {rounds} interleaved round(s)), its peak RSS",
        "the process's own `VmHWM`. Every run's picks were checked against the generator's: the same",
        "latest for every tenant, whatever the mode.",
        "",
        "| backend | mode | time (median) | manifests read | peak RSS | speed-up vs naive | every run (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for t in targets:
        naive = median(t.runs["naive"], "seconds")
        where = f"{t.label}, {t.fleet.tenants:,} tenants x {t.fleet.snapshots} = {t.fleet.total:,} snapshots"
        for mode in ("naive", "uncached", "first run", "warm run", "list only"):
            runs = t.runs[mode]
            seconds = median(runs, "seconds")
            every = ", ".join(f"{r['seconds']:.3g}" for r in runs)
            lines.append(
                f"| {where} | {DESCRIPTIONS[mode].format(concurrency=concurrency)} | {secs(seconds)} "
                f"| {int(median(runs, 'reads')):,} | {median(runs, 'peak_rss_mib'):.0f} MiB "
                f"| {naive / seconds:.1f}x | {every} |")
            where = ""
    lines += ["", "Warm run against first run, and the cache file:", ""]
    for t in targets:
        first, warm = median(t.runs["first run"], "seconds"), median(t.runs["warm run"], "seconds")
        floor = median(t.runs["list only"], "seconds")
        lines.append(
            f"- {t.label}: warm {secs(warm)} vs first {secs(first)} = {first / warm:.1f}x faster; the listing "
            f"of the backend alone takes {secs(floor)} ({100 * floor / warm:.0f}% of the warm run); cache file "
            f"{t.cache_bytes / 2**20:.0f} MiB ({t.cache_bytes / t.fleet.total:.0f} bytes a snapshot).")
    lines += ["", "Reading the figures:", ""]
    for t in targets:
        uncached, first = median(t.runs["uncached"], "peak_rss_mib"), median(t.runs["first run"], "peak_rss_mib")
        lines.append(
            f"- {t.label}: without the cache every manifest is held parsed ({uncached:.0f} MiB at "
            f"{t.fleet.total:,}); with it, one small entry a snapshot ({first:.0f} MiB), and only the manifests "
            "asked for (here each tenant's latest) are parsed again from the cached bytes.")
    lines += [
        "- The runs that read manifests (naive, uncached, first run) are CPU-bound here: a local read is a",
        "  few system calls and a pydantic parse under the GIL, and SeaweedFS shares the same 2 cores with",
        "  its client (and with the other users of this machine: see the load average), so concurrent",
        "  reads gain far less than their number. Against a remote S3, where a GET is a round trip spent",
        "  waiting, the threads overlap those waits (not measured here).",
        "- A warm run reads no manifest: what is left is mostly the listing of the backend itself (a `stat`",
        "  of each manifest; S3's pages of 1,000 keys, content objects included), the floor of any way that",
        "  asks the backend what exists.",
    ]
    if any(t.sweep for t in targets):
        threads = sorted({n for t in targets for n in t.sweep})
        lines += ["", "Concurrency of the reads (uncached mode, one run each; `LIST_CONCURRENCY` is "
                  f"{concurrency}):", "",
                  "| threads | " + " | ".join(t.label for t in targets) + " |",
                  "| --- | " + " | ".join("---" for _ in targets) + " |"]
        for n in threads:
            cells = [secs(t.sweep[n]["seconds"]) if n in t.sweep else "-" for t in targets]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    lines += ["", "Machine (2 cores, shared with other engineers' work while this ran):", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [END]
    return "\n".join(lines) + "\n"


def machine() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"CPU": f"{cpu}, {os.cpu_count()} cores", "Python": platform.python_version(),
            "OS": platform.platform()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.listing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny backends, one round, a short sweep")
    parser.add_argument("--tenants", type=int, help="tenants on the local folder (default 10000; --quick 20)")
    parser.add_argument("--snapshots", type=int, help="snapshots a tenant (default 30; --quick 3)")
    parser.add_argument("--s3-tenants", type=int, help="tenants on SeaweedFS (default 1000; --quick 5; 0: no S3)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick 1)")
    parser.add_argument("--sweep", help="thread counts to sweep, e.g. 1,8,32 (default 1,4,8,16,32,64; --quick 1,4; "
                        "'none' to skip)")
    parser.add_argument("--workdir", type=Path, help=f"generated backends and cache (default {DEFAULT_WORKDIR}; "
                        "--quick: <default>/quick)")
    parser.add_argument("--output", type=Path, help="the markdown report (default BENCHMARKS.md at the repo root; "
                        "--quick: <workdir>/BENCHMARKS.md)")
    parser.add_argument("--s3-endpoint-url", help="use this running S3 server (credentials from AWS_ACCESS_KEY_ID "
                        "and AWS_SECRET_ACCESS_KEY) instead of starting SeaweedFS")
    parser.add_argument("--rerender", type=Path, help="write the section again from a results.json of an earlier run")
    # One measured run, in a child process.
    parser.add_argument("--latency-ms", type=float, default=None,
                        help="also measure SeaweedFS with this round trip added to every request (default 20; "
                        "--quick 5; 0: not)")
    parser.add_argument("--measure", choices=ALL_MODES, help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.backend, args.cache, args.concurrency)))
        return 0
    if args.rerender:
        saved = json.loads(args.rerender.read_text())
        targets = []
        for t in saved["targets"]:
            target = Target(t["label"], t["url"], Fleet(**t["fleet"]), t["env"], Path(t["cache_path"]),
                            t["runs"], {int(k): v for k, v in t["sweep"].items()}, t["cache_bytes"],
                            tuple(t.get("modes", MODES)))
            targets.append(target)
        output = (args.output or REPO / "BENCHMARKS.md").absolute()
        write_section(output, START, END, render(targets, saved["command"], saved["rounds"], saved["concurrency"], saved["info"],
                                     saved["when"]))
        return 0

    from memrestore.backends.listing import LIST_CONCURRENCY

    quick = args.quick
    snapshots = args.snapshots or (3 if quick else 30)
    local = Fleet(args.tenants or (20 if quick else 10_000), snapshots)
    s3_tenants = args.s3_tenants if args.s3_tenants is not None else (5 if quick else 1_000)
    rounds = args.rounds or (1 if quick else 3)
    sweep_arg = args.sweep or ("1,4" if quick else "1,4,8,16,32,64")
    sweep = () if sweep_arg == "none" else tuple(int(n) for n in sweep_arg.split(","))
    workdir = (args.workdir or (DEFAULT_WORKDIR / "quick" if quick else DEFAULT_WORKDIR)).absolute()
    output = (args.output or (workdir / "BENCHMARKS.md" if quick else REPO / "BENCHMARKS.md")).absolute()
    command = "python -m benchmarks.listing" + "".join(f" {a}" for a in (sys.argv[1:] if argv is None else argv))

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.monotonic()
    workdir.mkdir(parents=True, exist_ok=True)
    local_root = workdir / local.name
    ensure_local(local_root, local, log)
    targets = [Target("local folder", local_root.as_uri(), local, {}, workdir / "cache-local.sqlite3")]
    info = machine()
    load_before = os.getloadavg()
    seaweed = None
    try:
        if s3_tenants:
            s3 = Fleet(s3_tenants, snapshots)
            if args.s3_endpoint_url:
                s3_env = running_s3_env(args.s3_endpoint_url)
                info["S3"] = "an already running server (--s3-endpoint-url)"
            else:
                from tests.seaweed import SeaweedS3

                log("starting SeaweedFS on loopback")
                seaweed = SeaweedS3(workdir / "seaweed").start()
                s3_env = seaweed.env()
                version = subprocess.run([str(seaweed.weed), "version"], capture_output=True, text=True).stdout
                info["S3"] = f"SeaweedFS on loopback, started by the benchmark ({version.strip().splitlines()[0]})"
            import boto3
            from botocore.config import Config

            client = boto3.session.Session().client(
                "s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
                region_name=s3_env.get("AWS_DEFAULT_REGION", "us-east-1"),
                config=Config(s3={"addressing_style": "path"}, max_pool_connections=PUT_CONCURRENCY))
            ensure_s3(client, s3.name, s3, log)
            s3_modes = ("first run", "first run, one pass", "warm run", "uncached", "naive", "list only",
                        "list only, one pass")
            targets.append(Target("SeaweedFS (S3)", f"s3://{BUCKET}/{s3.name}", s3, s3_env,
                                  workdir / "cache-s3.sqlite3", modes=s3_modes))
            latency = args.latency_ms if args.latency_ms is not None else (5 if quick else 20)
            if latency:
                targets.append(Target(
                    f"SeaweedFS (S3) + {latency:g} ms a request", f"s3://{BUCKET}/{s3.name}", s3,
                    {**s3_env, ENV_LATENCY: str(latency)}, workdir / "cache-s3-far.sqlite3",
                    modes=("first run", "first run, one pass", "list only", "list only, one pass")))
        # Local files younger than the racy window are (rightly) never cached: let them age.
        time.sleep(RACY_WAIT_SECONDS)
        for target in targets:
            log(f"measuring {target.label} ({target.fleet.total:,} snapshots)")
            measure_target(target, rounds, LIST_CONCURRENCY, sweep if "naive" in target.modes else (), log)
    finally:
        if seaweed is not None:
            seaweed.stop()
    load_after = os.getloadavg()
    info["load average (1 min) before / after"] = f"{load_before[0]:.1f} / {load_after[0]:.1f}"
    info["page cache"] = "warm (the backends were generated or read before); no cache was dropped"
    info["wall time of this run"] = f"{(time.monotonic() - started) / 60:.1f} min"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    saved = {"command": command, "when": when, "rounds": rounds, "concurrency": LIST_CONCURRENCY, "info": info,
             "targets": [{**asdict(t), "fleet": asdict(t.fleet), "cache_path": str(t.cache_path)} for t in targets]}
    (workdir / "results.json").write_text(json.dumps(saved, indent=1))
    write_section(output, START, END, render(targets, command, rounds, LIST_CONCURRENCY, info, when))
    log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
