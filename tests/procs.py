"""Real processes for the tests (and the benchmarks): free ports, readiness waits, starting a
process with its output in a log file, stopping it (its process group, when it has one of its
own) with a timeout then SIGKILL, the log's tail for a failure message, and the ``memrestore``
command line run as a subprocess.

Every process is started and stopped here by its own PID or process group, never by name::

    proc = start([str(VENV_BIN / "prefect"), "server", "start", ...], log, env=env)
    try:
        wait_until(lambda: healthy(url), 120, lambda: f"the server on {url}:\\n{tail(log)}")
    finally:
        stop(proc)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

HOST = "127.0.0.1"
POLL_SECONDS = 0.25
STOP_SECONDS = 30
#: The longest one ``memrestore`` command may take here (Prefect's import, a loaded machine).
CLI_SECONDS = 300

VENV_BIN = Path(sys.executable).parent
#: ``memrestore`` as the tests run it: this interpreter, the module (no entry point needed).
MEMRESTORE = (sys.executable, "-m", "memrestore.flows.cli")

T = TypeVar("T")


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` (all bound at once, then released)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port(host: str = HOST) -> int:
    return free_ports(1, host)[0]


def wait_until(condition: Callable[[], T], timeout: float, what: str | Callable[[], str],
               poll: float = POLL_SECONDS, error: type[Exception] | None = None, or_none: bool = False) -> T:
    """Poll ``condition`` until it returns something truthy, and return that. After ``timeout``
    fail naming ``what`` (a text, or a function giving one then, such as a log's tail): with
    ``pytest.fail``, or by raising ``error``; with ``or_none``, return None instead."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            if or_none:
                return None  # type: ignore[return-value]
            message = f"gave up after {timeout:.0f} s waiting for {what() if callable(what) else what}"
            if error is not None:
                raise error(message)
            import pytest

            pytest.fail(message)
        time.sleep(poll)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a log, for a failure message."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(argv: Sequence[Any], log: Path, *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
          group: bool = True, append: bool = False, errors: Path | None = None,
          preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen:
    """Start ``argv`` with no stdin and its output in ``log`` (stderr too, unless ``errors`` names a
    file of its own); with ``group``, in a session and process group of its own (its pgid is its
    pid), which ``stop`` signals as a whole."""
    mode = "ab" if append else "wb"
    with ExitStack() as files:
        out = files.enter_context(open(log, mode))
        err = files.enter_context(open(errors, mode)) if errors is not None else subprocess.STDOUT
        proc = subprocess.Popen(
            [str(a) for a in argv], cwd=cwd, env=None if env is None else dict(env), stdin=subprocess.DEVNULL,
            stdout=out, stderr=err, start_new_session=group, preexec_fn=preexec_fn,
        )
    proc.own_group = group  # type: ignore[attr-defined]
    return proc


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = STOP_SECONDS,
         group: bool | None = None, slow_is_news: bool = True) -> int:
    """Signal a process we started (its process group if ``start`` gave it one, else its PID); if it
    outlives ``timeout``, SIGKILL it the same way. Returns its exit status. Safe to call again.

    A Python process that outlives its signal has its stacks printed first (``slow_is_news``); a
    caller whose process routinely needs the SIGKILL (weed) passes False."""
    if group is None:
        group = getattr(proc, "own_group", False)
    if proc.poll() is None:
        _signal(proc, sig, group)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if slow_is_news:
                _dump_stacks(proc, sig, timeout)
            _signal(proc, signal.SIGKILL, group)
            proc.wait()
    return proc.returncode


def _dump_stacks(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Where a process that outlived its stop signal is waiting, on stderr (shown with the failing
    test): the Python stacks of all its threads, from py-spy (the ``bench`` extra) when present."""
    header = f"pid {proc.pid} ({' '.join(map(str, proc.args))[:200]}) outlived {signal.Signals(sig).name} by {timeout:.0f} s"
    py_spy = VENV_BIN / "py-spy"
    if not py_spy.exists():
        print(f"{header}; no py-spy in {VENV_BIN} to show its stacks", file=sys.stderr)
        return
    try:
        dump = subprocess.run([str(py_spy), "dump", "--pid", str(proc.pid)], capture_output=True, text=True,
                              timeout=30)
        print(f"{header}; its stacks:\n{dump.stdout}{dump.stderr}", file=sys.stderr)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"{header}; py-spy dump failed: {exc}", file=sys.stderr)


class Started:
    """``with thing:`` for a helper with ``start()`` (returning itself) and ``stop()``."""

    def start(self):  # pragma: no cover - defined by each helper
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - defined by each helper
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def environment(extra: Mapping[str, str] | None = None, *, base: Mapping[str, str] | None = None,
                drop: Sequence[str] = ()) -> dict[str, str]:
    """``base`` (this process's environment by default) without ``drop``, with ``extra`` added."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in drop}
    env.update(extra or {})
    return env


def memrestore(*args: Any, env: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None,
               cwd: Path | None = None, timeout: float = CLI_SECONDS) -> subprocess.CompletedProcess:
    """``memrestore *args`` run to its end, its output captured as text; its environment is ``base``
    (this process's by default) with ``env`` added."""
    return subprocess.run([*MEMRESTORE, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=environment(env, base=base), timeout=timeout)


def start_memrestore(args: Sequence[Any], log: Path, **options: Any) -> subprocess.Popen:
    """``memrestore *args`` started with ``start`` (the same options), left running."""
    return start([*MEMRESTORE, *args], log, **options)
