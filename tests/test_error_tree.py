"""The drawing of the error tree in tasks/errors.py is the tree the code has.

Every module of memrestore.flows, memrestore.tasks and memrestore.backends is imported, and every
RestoreError subclass they define must be drawn once, under the parent it derives from, beside the
module it lives in; a name drawn that the code does not define fails too.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

import memrestore.backends
import memrestore.flows
import memrestore.tasks
from memrestore.backends.errors import RestoreError
from memrestore.tasks import errors as tasks_errors

#: One row of the drawing: the tree's prefix, the class name, the module it lives in.
_ROW = re.compile(r"^(?P<prefix>(?:[│ ] {3})*(?:[├└]── )?)(?P<name>[A-Z]\w*Error)\s+(?P<module>[a-z_.]+)\b")


def _drawing() -> dict[str, tuple[str | None, str]]:
    """name -> (drawn parent, drawn module), read from tasks/errors.py's docstring."""
    text = tasks_errors.__doc__ or ""
    start = text.index("::\n") + 3
    rows: dict[str, tuple[str | None, str]] = {}
    parents: list[str] = []  # parents[d] is the last class drawn at depth d
    for line in text[start:].splitlines():
        if not line.strip():
            if rows:
                break  # the drawing ends at its first blank line
            continue
        match = _ROW.match(line.removeprefix("    "))
        assert match, f"a row of the drawing does not parse: {line!r}"
        depth = len(match["prefix"]) // 4
        name = match["name"]
        assert name not in rows, f"{name} is drawn twice"
        del parents[depth:]
        assert len(parents) == depth, f"{name} is drawn below nothing: {line!r}"
        rows[name] = (parents[-1] if parents else None, match["module"])
        parents.append(name)
    return rows


def _defined() -> dict[str, type]:
    """Every RestoreError subclass (and RestoreError) the three packages define."""
    for package in (memrestore.backends, memrestore.tasks, memrestore.flows):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
    found: dict[str, type] = {}
    todo = [RestoreError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("memrestore."):
            found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def test_every_restore_error_is_drawn_under_its_parent_in_its_module():
    drawn, defined = _drawing(), _defined()
    assert sorted(defined) == sorted(drawn), (
        f"in the code, not drawn: {sorted(set(defined) - set(drawn))}; "
        f"drawn, not in the code: {sorted(set(drawn) - set(defined))}"
    )
    for name, (parent, module) in drawn.items():
        cls = defined[name]
        assert cls.__module__ == f"memrestore.{module}", f"{name} lives in {cls.__module__}, drawn in {module}"
        if parent is None:
            assert cls is RestoreError
        else:
            bases = [b.__name__ for b in cls.__bases__]
            assert parent in bases, f"{name} derives from {bases}, drawn under {parent}"


def test_the_drawing_reader_sees_a_misdrawn_tree():
    """The reader itself: a row moved under another parent, or a row dropped, is caught."""
    original = tasks_errors.__doc__
    try:
        tasks_errors.__doc__ = original.replace(
            "│   │   └── ChecksumsRequiredError", "│   ├── ChecksumsRequiredError   "
        )
        assert _drawing()["ChecksumsRequiredError"][0] == "RestoreRefusedError"
        tasks_errors.__doc__ = "\n".join(
            line for line in original.splitlines() if "ServeError  " not in line
        )
        assert "ServeError" not in _drawing()
    finally:
        tasks_errors.__doc__ = original
