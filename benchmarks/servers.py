"""The real servers the benchmark measures against: a Prefect API and a SeaweedFS S3 gateway.

Prefect: one ``prefect server start`` on a free loopback port, started once per benchmark run
with its own ``PREFECT_HOME``, and every measured ``memrestore`` command pointed at it through
``PREFECT_API_URL``, as a deployment with a standing Prefect server runs. (Without it, each CLI
call would start Prefect's embedded server, 12-15 s of cold start per call here, which would
measure Prefect's start-up and not the restore.)

SeaweedFS: ``tests.seaweed.SeaweedS3`` (the test suite's own), on loopback, with its data kept in
the benchmark's cache so that uploaded snapshots are reused across runs.

The Prefect server is launched as the test suite launches its own (``tests.prefect_server.launch``);
ports and the stop are ``tests.procs``'.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from tests.prefect_server import launch
from tests.procs import Started, free_port, stop

#: A fresh Prefect server answers /api/health in ~12 s here (PREFECT_NOTES.md); allow for load.
PREFECT_STARTUP_SECONDS = 120

#: Prefect's settings for every process the benchmark starts (an explicit environment wins).
PREFECT_QUIET = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


class PrefectServer(Started):
    """``prefect server start`` on 127.0.0.1, its database under ``home``."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self._process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    def env(self) -> dict[str, str]:
        return {"PREFECT_HOME": str(self.home), "PREFECT_API_URL": self.api_url, **PREFECT_QUIET}

    def start(self) -> "PrefectServer":
        self.home.mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        self._process = launch(self.home, self.port, self.home / "server.log", {**os.environ, **PREFECT_QUIET},
                               timeout=PREFECT_STARTUP_SECONDS, append=True)
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            stop(process, timeout=15)
