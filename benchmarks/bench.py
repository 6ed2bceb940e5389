"""The benchmark's workbench: where its data and scratch live, the environment its child
processes run in, the commands it times, and its inputs built, uploaded and warmed.

Between any two timed runs, outputs are deleted and dirty pages synced, untimed (``remove``), so
that no run pays for another's writeback; page-cache state is the same for both sides of a row
(``warm``, ``Bench.warm_s3``: each input read once before the row starts).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.data import MiB, SERVED_MODEL, SnapshotSpec, content_paths, ensure_snapshot, even_snapshot
from benchmarks.measure import Command, Series, interleave
from benchmarks.servers import PREFECT_QUIET
from benchmarks.sizes import FAR_ROWS, LINK_ROWS, Sizes

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = REPO / "benchmarks" / ".data"
BUCKET = "memrestore-bench"


def _bin(name: str) -> str:
    """A program of this venv (memrestore, prefect), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def remove(path: Path) -> Callable[..., None]:
    """A command's ``before``/``after``: delete ``path`` and sync, so the next run starts clean."""
    def clean(*_: object) -> None:
        shutil.rmtree(path, ignore_errors=True)
        os.sync()

    return clean


def warm(paths: list[Path]) -> None:
    """Read inputs once so that both sides of a row start from the same (warm) page cache."""
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.read(8 * MiB):
                pass


def running_s3_env(endpoint_url: str) -> dict[str, str]:
    """The AWS_* environment of an S3 server already running at ``endpoint_url``
    (``--s3-endpoint-url``), its keys taken from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."""
    return {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@dataclass
class Bench:
    sizes: Sizes
    workdir: Path
    log: Callable[[str], None] = print
    env: dict[str, str] = field(default_factory=dict)  # for memrestore (Prefect)
    s3_env: dict[str, str] = field(default_factory=dict)  # AWS_* of the S3 server
    s3_client: object = None  # a boto3 client of that server (uploads, warming)
    notes: list[str] = field(default_factory=list)
    #: Row 0's median (a whole command's fixed cost), once row 0 has run: row 6 allows it.
    fixed_cost_seconds: float | None = None

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
            before=remove(data_dir),
            after=remove(data_dir),
        )

    def writing(self, label: str, argv: list[str], out: Path, env: dict[str, str] | None = None) -> Command:
        """A command that writes ``out``, deleted before and after each run."""
        return Command(label, argv, env=env, before=remove(out), after=remove(out))

    def interleave(self, a: Command, b: Command) -> tuple[Series, Series]:
        """``a`` and ``b`` timed A B A B, this run's pairs, each after this run's settle time."""
        return interleave(a, b, self.sizes.pairs, self.log, self.sizes.settle)

    # -- inputs ----------------------------------------------------------------------------

    def build_inputs(self, rows: set[str]) -> None:
        s = self.sizes
        specs = []
        if "0" in rows:
            specs.append(s.tiny)
        if rows & {"2", "3", "6"} | (rows & FAR_ROWS):
            specs.append(s.big)
        if "4" in rows:
            specs.append(s.rss_small)
        if rows & {"1", "4"}:
            specs.append(s.rss_large)
        if rows & LINK_ROWS:
            specs.append(s.links)
        for spec in specs:
            ensure_snapshot(self.local_root, spec, self.log)
        if "5" in rows:
            built = 0
            for i in range(s.drill_tenants):
                spec = even_snapshot(f"drill-{i:04d}", 1000 + i, s.drill_bytes)
                built += ensure_snapshot(self.drill_root, spec, log=lambda _m: None)
            if built:
                self.log(f"built {built} drill snapshots in {self.drill_root}")

    def connect_s3(self, s3_env: dict[str, str]) -> None:
        """Talk to the S3 server of ``s3_env``: a client, the bucket, the big snapshot in it (when
        this run's rows built it)."""
        import boto3
        from botocore.config import Config

        self.s3_env = s3_env
        client = boto3.session.Session().client(
            "s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"],
            aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
            region_name=s3_env.get("AWS_DEFAULT_REGION", "us-east-1"),
            config=Config(s3={"addressing_style": "path"}))
        try:
            client.create_bucket(Bucket=BUCKET)
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        self.s3_client = client
        if (self.local_root / self.sizes.big.snapshot_id / "manifest.json").exists():  # built for these rows
            self.upload_big(client)

    def upload_big(self, client, spec: SnapshotSpec | None = None) -> None:
        """Put the big snapshot (or ``spec``'s) in the bucket, content first and manifest last,
        unless the same objects are already there (SeaweedFS keeps its data in the cache dir
        across runs)."""
        from memrestore.backends.s3 import S3Backend

        backend = S3Backend(BUCKET, "", client=client)
        spec = spec or self.sizes.big
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
