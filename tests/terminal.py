"""A command run on a terminal, as an operator runs it: a pseudo-terminal for its stdin, stdout
and stderr (so ``isatty()`` is true and rich draws as it does for a person), answers typed at
its prompts, and everything it showed, with the terminal's escape codes removed."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from tests.procs import CLI_SECONDS, MEMRESTORE, environment

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\r")


@dataclass
class Screen:
    returncode: int
    text: str  # everything shown, escape codes and carriage returns removed


def on_terminal(argv: Sequence[Any], answers: Sequence[tuple[str, str]] = (), *,
                env: Mapping[str, str] | None = None, timeout: float = CLI_SECONDS,
                columns: int = 160) -> Screen:
    """Run ``argv`` on a pseudo-terminal ``columns`` wide; when the screen shows each
    ``answers[i][0]`` (a regex), type ``answers[i][1]`` and Enter, in order."""
    main, side = pty.openpty()
    os.set_blocking(main, False)
    term = environment({"TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": "50", **(env or {})})
    proc = subprocess.Popen([str(a) for a in argv], stdin=side, stdout=side, stderr=side, env=term,
                            start_new_session=True)
    os.close(side)
    shown, pending = b"", list(answers)
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([main], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the command closed the terminal
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
            text = _ESCAPES.sub("", shown.decode(errors="replace"))
            if pending and re.search(pending[0][0], text):
                os.write(main, pending.pop(0)[1].encode() + b"\r")
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{argv} did not end in {timeout} s; it showed:\n{text[-3000:]}")
        proc.wait(timeout=30)
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()
    return Screen(proc.returncode, _ESCAPES.sub("", shown.decode(errors="replace")))


def memrestore_on_terminal(*args: Any, answers: Sequence[tuple[str, str]] = (), **options: Any) -> Screen:
    """``memrestore *args`` on a pseudo-terminal (see :func:`on_terminal`)."""
    return on_terminal([*MEMRESTORE, *args], answers, **options)
