"""memrestore's modules have one import name each: ``memrestore.flows``, ``memrestore.tasks``,
``memrestore.backends``. From the repo root the bare folders ``flows``, ``tasks`` and
``backends`` are importable too, and a module imported under both names is two modules: two
``RestoreError`` classes, so that ``except RestoreError`` silently stops matching. This test
refuses any old-style name in the code (imports, and module paths in strings such as
``python -m flows.cli``), and checks that the deployments' entrypoints import."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
OLD_NAMES = ("flows", "tasks", "backends")
#: A module path used as a string: "flows.cli", "tasks.stage._StagedFile" ...
MODULE_STRING = re.compile(rf"^({'|'.join(OLD_NAMES)})(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def python_files() -> list[Path]:
    """Our code: not what lives in a hidden folder, such as the benchmark's cache benchmarks/.data
    (the AWS CLI's venv, which the quick benchmark may be writing while this reads)."""
    return sorted(p for d in (*OLD_NAMES, "tests", "benchmarks") for p in (REPO / d).rglob("*.py")
                  if not any(part.startswith(".") for part in p.relative_to(REPO).parts))


def old_style(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            names = [node.value]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {name}" for name in names
                  if name.split(".")[0] in OLD_NAMES]
    return found


def test_no_module_is_imported_by_its_old_top_level_name():
    offenders = [line for path in python_files() for line in old_style(path)]
    assert not offenders, (
        "import these as memrestore.flows / memrestore.tasks / memrestore.backends; the bare "
        "name loads a second copy of the module:\n" + "\n".join(offenders))


def test_the_lint_sees_each_kind_of_old_name(tmp_path):
    """The check itself: each form it must refuse is refused, the new names pass."""
    bad = tmp_path / "bad.py"
    bad.write_text("import flows.cli\nfrom tasks.plan import RestoreMode\nimport backends\n"
                   "CMD = ['python', '-m', 'flows.cli']\n")
    good = tmp_path / "good.py"
    good.write_text("import memrestore.flows.cli\nfrom memrestore.tasks.plan import RestoreMode\n"
                    "CMD = ['python', '-m', 'memrestore.flows.cli']\nDOC = 'see tasks/drill.py'\n")
    global REPO
    saved, REPO = REPO, tmp_path
    try:
        assert len(old_style(bad)) == 4
        assert old_style(good) == []
    finally:
        REPO = saved


def test_every_deployment_entrypoint_imports():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    entrypoints = [d["entrypoint"] for d in config["deployments"]]
    assert entrypoints
    for entrypoint in entrypoints:
        module, _, name = entrypoint.rpartition(".")
        assert module.startswith("memrestore."), entrypoint
        assert callable(getattr(importlib.import_module(module), name)), entrypoint


def test_every_memrestore_import_of_the_benchmarks_resolves():
    """`make bench` is not run by the suite; a benchmark that imports a module since moved or
    removed, or a name since renamed, would be found only by the next person to run it. (Some
    benchmarks are scripts: they are read, not run.)"""
    missing = []
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("memrestore."):
                module = importlib.import_module(node.module)
                missing += [f"{path.name}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name)
                            and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("memrestore."):
                        importlib.import_module(alias.name)
    assert not missing, missing
