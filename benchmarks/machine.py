"""The machine a benchmark ran on, as the report's table of it says: cores, memory, CPU, kernel,
free disk, and the versions of Python, Prefect, boto3, blake3, rclone and b3sum."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from benchmarks.bench import DEFAULT_WORKDIR
from benchmarks.data import GiB


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
