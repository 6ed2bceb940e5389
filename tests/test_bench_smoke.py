"""The benchmark (``python -m benchmarks``, issue 5) still runs: every row, on tiny data.

No timing is asserted: this only keeps the benchmark from rotting. It runs the real command as a
subprocess, ``--quick`` (snapshots of a few MiB, one A/B pair a row), against the session's
Prefect API and SeaweedFS server, and writes its report to a temp dir, never to the repo's
BENCHMARKS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.seaweed import s3_environment

REPO = Path(__file__).resolve().parent.parent


def test_quick_benchmark_runs_every_row_and_writes_its_table(tmp_path, prefect_api, seaweedfs):
    repo_report = REPO / "BENCHMARKS.md"
    before = repo_report.read_bytes() if repo_report.exists() else None
    output = tmp_path / "BENCHMARKS.md"
    env = s3_environment(seaweedfs.env())

    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--workdir", str(tmp_path / "work"),
         "--output", str(output), "--prefect-api-url", prefect_api,
         "--s3-endpoint-url", seaweedfs.endpoint_url],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=420,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    report = output.read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and line[2].isdigit()]
    table = rows[:9]  # then the "every run" lines
    assert [r.split(" | ")[0] for r in table] == ["| 0", "| 1", "| 2", "| 3", "| 4", "| 5", "| 6", "| 7", "| 8"]
    for name in ("import prefect", "cp + sync", "boto3 download_file", "rclone copy --transfers 4", "b3sum",
                 "memrestore verify", "aws s3 cp --recursive", "far-store proxy", "--limit-rate",
                 "very far link", "boto3 + AWS CRT", "s5cmd cp", "streams peak/final per run"):
        assert name in report
    assert "## Machine" in report and "cores: " in report and "python -m benchmarks --quick" in report
    # Scratch outputs are gone; cached inputs stay for the next run.
    assert not (tmp_path / "work" / "scratch").exists()
    assert (tmp_path / "work" / "local").is_dir()
    assert (repo_report.read_bytes() if repo_report.exists() else None) == before
