"""The wheel, installed into a fresh venv beside another team's packages named ``flows`` and
``tasks`` (the most common folder names in Prefect projects): each import name finds its own
package, and memrestore works from that venv (its CLI, a restore from a local folder)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from tests.conftest import tree

REPO = Path(__file__).resolve().parent.parent
#: A fresh venv installs Prefect and the rest from the registry (or pip's cache).
INSTALL_SECONDS = 900


def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stderr[-3000:]}\n{proc.stdout[-2000:]}"
    return proc


def _other_team(root: Path) -> Path:
    """A project of its own with top-level packages ``flows`` and ``tasks``."""
    for name in ("flows", "tasks"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"OWNER = 'other-team/{name}'\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=68"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "other-team-flows"\nversion = "1.0"\n'
        '[tool.setuptools]\npackages = ["flows", "tasks"]\n')
    return root


def test_the_wheel_installs_beside_other_flows_and_tasks_packages(tmp_path, prefect_api):
    # Built from a copy of what a source distribution holds, so the checkout gets no build/ dir.
    source = tmp_path / "source"
    for name in ("flows", "tasks", "backends"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    dist = tmp_path / "dist"
    for project in (source, _other_team(tmp_path / "other")):
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, project], timeout=INSTALL_SECONDS)
    wheels = sorted(dist.glob("*.whl"))
    assert [w.name.split("-")[0] for w in wheels] == ["memrestore", "other_team_flows"]
    # One top-level name in our wheel: memrestore (and its metadata).
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheels[0]).namelist()}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"memrestore"}

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    py, memrestore = venv / "bin" / "python", venv / "bin" / "memrestore"
    # No .pyc compiled ahead (--no-compile): imports compile what they use; 10-15% of the CPU here.
    _run([py, "-m", "pip", "install", "-q", "--no-compile", *wheels], timeout=INSTALL_SECONDS)

    # Run from a directory of neither project, so only site-packages can answer.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = _run([py, "-c", "import flows, tasks, memrestore.flows.cli as cli, memrestore.tasks.plan as plan; "
                  "print(flows.OWNER, tasks.OWNER, cli.__file__, plan.__file__, sep='\\n')"], cwd=elsewhere)
    other_flows, other_tasks, cli_file, plan_file = probe.stdout.split()
    assert (other_flows, other_tasks) == ("other-team/flows", "other-team/tasks")
    site = str(venv)
    assert cli_file.startswith(site) and cli_file.endswith("memrestore/flows/cli/__init__.py")
    assert plan_file.startswith(site) and plan_file.endswith("memrestore/tasks/plan.py")

    assert "restore" in _run([memrestore, "--help"], cwd=elsewhere).stdout

    backend = LocalBackend(tmp_path / "backend")
    write_sample_snapshot(backend, tenant_id=3, snapshot_id="snap-w", created_at_unix_micros=1_700_000_000_000_000)
    data_dir = tmp_path / "data"
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "ph"),
           "PREFECT_API_URL": prefect_api, "MEMRESTORE_NO_CACHE": "1"}
    _run([memrestore, "restore", "--backend", backend.url, "--tenant", "3", "--snapshot", "latest",
          "--data-dir", data_dir, "--mode", "new_cluster", "--embedding-model", "minilm", "--json",
          # The example validator, imported from the installed package by the validation's process.
          "--validate-callable", "memrestore.tasks.validators:commit_log_readable"],
         cwd=elsewhere, env=env, timeout=300)
    restored = tree(data_dir)
    assert "tenant_3/data.sqlite" in restored and "tenant_3/hnsw/minilm.bin" in restored
