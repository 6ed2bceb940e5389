"""How ``--streams`` was chosen: ``memrestore restore`` of the benchmark's 2 GiB snapshot with each
given number of streams, through the far-store proxy of rows 7 and 8 and from SeaweedFS on
loopback, one after the other per round (BENCHMARKS.md, "Choosing --streams")::

    python -m benchmarks.streams_sweep FAR_STREAMS [LOOPBACK_STREAMS [ROUNDS]]
    python -m benchmarks.streams_sweep 8,16,32,48 4,16,32 1

Each line: whole-command and in-flow seconds, throughput, the GETs in flight at the proxy
(median of its 10 ms samples), the command's CPU (user + system) and peak RSS, the proxy's CPU.
Uses the benchmark's cache (benchmarks/.data/) and starts its own Prefect server and SeaweedFS.
"""
import json, shutil, subprocess, sys, time, statistics
from benchmarks.run import Bench, FULL, DEFAULT_WORKDIR, BUCKET, _remove
from benchmarks.servers import PrefectServer
from benchmarks.farstore import ProxyProcess
from tests.seaweed import SeaweedS3
if len(sys.argv) < 2:
    sys.exit(__doc__)
far_n = [int(x) for x in sys.argv[1].split(",") if x]
loop_n = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 and sys.argv[2] else []
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 1
log = lambda m: print(m, file=sys.stderr, flush=True)
bench = Bench(FULL, DEFAULT_WORKDIR, log)
shutil.rmtree(bench.scratch, ignore_errors=True); bench.scratch.mkdir(parents=True)
ps = PrefectServer(bench.scratch / "prefect-home").start(); bench.env = ps.env()
sw = SeaweedS3(DEFAULT_WORKDIR / "seaweed", volume_size_limit_mb=1024).start(); bench.s3_env = sw.env()
try:
    import boto3
    from botocore.config import Config
    c = boto3.session.Session().client("s3", endpoint_url=bench.s3_env["AWS_ENDPOINT_URL"], aws_access_key_id=bench.s3_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=bench.s3_env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
    try: c.create_bucket(Bucket=BUCKET)
    except Exception: pass
    bench.s3_client = c; bench.upload_big(c); bench.warm_s3(FULL.big)
    proxy = ProxyProcess(bench.s3_env["AWS_ENDPOINT_URL"], FULL.far, bench.scratch)
    def run(n, far):
        env = bench.child_env(bench.s3_env, {"AWS_ENDPOINT_URL": proxy.endpoint_url} if far else {})
        out = bench.scratch / "sweep"
        cmd = bench.restore_cmd(f"s3://{BUCKET}", FULL.big, out, "x", env=env)
        _remove(out)(); time.sleep(4); proxy.counters()
        t = time.monotonic()
        p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(bench.scratch / "t.txt"), *cmd.argv, "--streams", str(n)], env=env, capture_output=True, text=True)
        secs = time.monotonic() - t
        st = proxy.counters()
        rss, u, s = (bench.scratch / "t.txt").read_text().split()[-3:]
        assert p.returncode == 0, p.stderr[-2000:]
        j = json.loads(p.stdout)
        tl = st["timeline"]
        log(f"{'far ' if far else 'loop'} streams {n:2d}: whole {secs:6.2f} s, in flow {j['seconds']:6.2f} s = {j['total_bytes']/j['seconds']/1e6:6.1f} MB/s, in flight median {statistics.median(tl) if tl else 0}, CPU {float(u)+float(s):.2f} s (user {u} sys {s}), RSS {int(rss)//1024} MiB, proxy CPU {st['cpu_seconds']:.2f} s")
        _remove(out)()
    for r in range(rounds):
        for n in far_n: run(n, True)
        for n in loop_n: run(n, False)
    proxy.stop()
finally:
    sw.stop(); ps.stop()
