"""One local Prefect server per ``PREFECT_HOME``, shared by the memrestore commands run with no
Prefect API set up (no ``PREFECT_API_URL``), and stopped by itself once idle.

Without it, every command would start Prefect's temporary server of its own (a ``uvicorn``
child, 3-12 s before the first request) and a command killed with SIGKILL would leave that child
running for ever. Instead the first command starts this server in a session of its own and later
commands find it through files in ``PREFECT_HOME``::

    memrestore-server.json    the server: pid, port, API URL, idle limit (written at its start)
    memrestore-server.lock    flock'd by whoever checks, starts or stops the server
    memrestore-server.users   flock'd shared by every command using it, for its lifetime
    memrestore-server.log     the server's output

The server stops itself once no command has held ``.users`` for ``idle_seconds`` (default
:data:`IDLE_SECONDS`; ``MEMRESTORE_SERVER_IDLE_SECONDS``), or as soon as ``.json`` no longer
names it (``memrestore server stop``, or ``PREFECT_HOME`` removed). A command killed however it
dies drops its ``flock``, so it never keeps the server up, and the next command reuses the same
server: they never pile up. ``python -m memrestore.flows.ops.local_server`` is the server process itself.

The commands import this module before Prefect is (:func:`flows.cli.run_flow.connect_prefect`), so
Prefect's server app and uvicorn are imported only in the server's own process (:func:`_serve`).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import fcntl
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from memrestore.flows.ops.prefect_config import prefect_home
from memrestore.flows.errors import LocalServerError

#: Default idle time before the server stops itself: an operator's incident is a run of commands
#: minutes apart, each of which would otherwise pay the server's start again (3-12 s); ten idle
#: minutes of a ~200 MB process are cheap beside that.
IDLE_SECONDS = 600
IDLE_ENV = "MEMRESTORE_SERVER_IDLE_SECONDS"
#: How long a command waits for a server to answer /api/health after starting it.
START_TIMEOUT_SECONDS = 90
#: How often the server checks whether it is idle or disowned.
CHECK_SECONDS = 2.0
STATE_NAME = "memrestore-server.json"
LOCK_NAME = "memrestore-server.lock"
USERS_NAME = "memrestore-server.users"
LOG_NAME = "memrestore-server.log"
#: What the server process's command line holds, to tell it from a process that took over its pid.
COMMAND_TAG = "memrestore.flows.ops.local_server"


@dataclass
class ServerInfo:
    pid: int
    port: int
    api_url: str
    started_at: str
    idle_seconds: float
    log: str

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")


def _state_path(home: Path) -> Path:
    return home / STATE_NAME


def read_state(home: Path | None = None) -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads(_state_path(home or prefect_home()).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(home: Path, info: ServerInfo) -> None:
    tmp = home / (STATE_NAME + ".tmp")
    tmp.write_text(json.dumps(asdict(info)))
    os.replace(tmp, _state_path(home))


@contextmanager
def _flocked(path: Path, how: int) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how)
        yield fd
    finally:
        os.close(fd)


def _is_our_server(pid: int) -> bool:
    """True if ``pid`` is alive and is a memrestore local server (not a process that reused it)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return COMMAND_TAG.encode() in f.read()
    except OSError:
        return False


def running_server(home: Path | None = None) -> ServerInfo | None:
    """The server ``home``'s state file names, if that process is alive and is one of ours."""
    info = read_state(home)
    return info if info is not None and _is_our_server(info.pid) else None


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    host_port = api_url.split("//", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    conn = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        conn.request("GET", "/api/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


#: The port a local server takes when it is free: Prefect's own default (a bookmarkable UI at
#: http://127.0.0.1:4200), or ``PREFECT_SERVER_API_PORT``; any free port otherwise.
PREFERRED_PORT = 4200


def _port(preferred: int | None) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if preferred:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _preferred_port() -> int:
    raw = os.environ.get("PREFECT_SERVER_API_PORT")
    return int(raw) if raw and raw.isdigit() else PREFERRED_PORT


def _idle_seconds() -> float:
    raw = os.environ.get(IDLE_ENV)
    if not raw:
        return IDLE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise LocalServerError(f"{IDLE_ENV}={raw!r} is not a number of seconds; set it to e.g. 600") from None
    if value <= 0:
        raise LocalServerError(f"{IDLE_ENV}={raw!r} must be above 0 seconds")
    return value


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(home: Path) -> ServerInfo:
    """Start a server in a session of its own (a Ctrl-C of the command that started it does not
    reach it), record it, and return once it answers."""
    port = _port(_preferred_port())
    log = home / LOG_NAME
    idle = _idle_seconds()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", COMMAND_TAG, "--port", str(port), "--idle", str(idle)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
            # The UI asks the server for its API's address, built from these two settings.
            env={**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": "127.0.0.1",
                 "PREFECT_SERVER_API_PORT": str(port)},
        )
    info = ServerInfo(
        pid=proc.pid, port=port, api_url=f"http://127.0.0.1:{port}/api",
        started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        idle_seconds=idle, log=str(log),
    )
    _write_state(home, info)  # before it answers: a command that waits on the lock finds it
    try:
        _wait_ready(info, START_TIMEOUT_SECONDS, proc)
    except LocalServerError:
        _state_path(home).unlink(missing_ok=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
    proc.returncode = 0  # never waited for: it outlives this command by design
    return info


def _wait_ready(info: ServerInfo, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait for the server to answer; ``proc`` when this process started it (right after its
    exec, its /proc entry is not yet the server's, so only the child's own status tells)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(info.api_url, timeout=1.0):
            return
        if (proc.poll() is not None) if proc is not None else not _is_our_server(info.pid):
            raise LocalServerError(
                f"the local Prefect server (pid {info.pid}) exited while starting; its log "
                f"{info.log} ends:\n{_log_tail(Path(info.log))}\nFix what it says, or set "
                "PREFECT_API_URL to a Prefect server of your own.")
        time.sleep(0.1)
    raise LocalServerError(
        f"the local Prefect server (pid {info.pid}) did not answer {info.api_url}/health within "
        f"{timeout:.0f} s; its log {info.log} ends:\n{_log_tail(Path(info.log))}\n"
        "Run `memrestore server stop` and try again, or set PREFECT_API_URL.")


_users_fd: int | None = None


def _hold_as_user(home: Path) -> None:
    """Hold the server as a user until this process exits (the kernel drops the lock however it
    exits); mark the use, so its idle time counts from now."""
    global _users_fd
    if _users_fd is not None:
        return
    path = home / USERS_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.utime(fd)
    _users_fd = fd
    atexit.register(_touch_on_exit, fd)


def _touch_on_exit(fd: int) -> None:
    try:
        os.utime(fd)  # idle from the end of the last use, not its start
    except OSError:
        pass


def ensure_server(home: Path | None = None) -> tuple[ServerInfo, bool]:
    """The running local server of ``home``, started if there is none (then True); this process
    is one of its users until it exits."""
    home = home or prefect_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalServerError(f"cannot create PREFECT_HOME {home}: {exc.strerror}; set PREFECT_HOME "
                               "to a writable directory, or PREFECT_API_URL to a Prefect server") from exc
    with _flocked(home / LOCK_NAME, fcntl.LOCK_EX):
        info = running_server(home)
        if info is not None:
            try:
                _wait_ready(info, START_TIMEOUT_SECONDS)  # may still be starting (its starter died)
            except LocalServerError:
                _terminate(info.pid)
                info = None
        started = info is None
        if info is None:
            info = _spawn(home)
        _hold_as_user(home)
    return info, started


def _terminate(pid: int, grace: float = 10.0) -> None:
    if not _is_our_server(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _is_our_server(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _is_our_server(pid):
        os.kill(pid, signal.SIGKILL)
        while _is_our_server(pid):
            time.sleep(0.05)


def in_use(home: Path) -> bool:
    """True if a command holds the server of ``home`` now."""
    try:
        with _flocked(home / USERS_NAME, fcntl.LOCK_EX | fcntl.LOCK_NB):
            return False
    except BlockingIOError:
        return True


@dataclass(frozen=True)
class User:
    """A process holding the server as a user: its pid and command line."""

    pid: int
    command: str


def users(home: Path) -> list[User]:
    """The processes that hold ``home``'s server now, from the kernel's table of file locks
    (``/proc/locks``: each ``flock`` on ``.users`` with its holder's pid), so a command killed
    however it died is never listed. Empty where the table cannot be read."""
    try:
        st = os.stat(home / USERS_NAME)
        with open("/proc/locks") as f:
            table = f.read().splitlines()
    except OSError:
        return []
    ours = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    found: dict[int, User] = {}
    for line in table:
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ  1234 fe:00:5678 0 EOF"; a waiter's line has "->" after the number
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[5] != ours or not fields[4].isdigit():
            continue
        pid = int(fields[4])
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        found[pid] = User(pid, " ".join(a.decode(errors="replace") for a in argv))
    return sorted(found.values(), key=lambda u: u.pid)


def describe_users(home: Path) -> str:
    """``a running memrestore command (pid 1234: memrestore restore --backend ...)``: who uses the
    server now, for a message."""
    listed = users(home)
    named = "; ".join(f"pid {u.pid}: {u.command}" for u in listed)
    if len(listed) > 1:
        return f"{len(listed)} running memrestore commands ({named})"
    return "a running memrestore command" + (f" ({named})" if named else "")


def last_used(home: Path) -> float | None:
    try:
        return os.stat(home / USERS_NAME).st_mtime
    except OSError:
        return None


def stop_server(home: Path | None = None, force: bool = False) -> ServerInfo | None:
    """Stop the local server of ``home``; the one stopped, or None if none was running. Refuses
    while a command uses it, unless ``force``."""
    home = home or prefect_home()
    if not home.is_dir():
        return None
    with _flocked(home / LOCK_NAME, fcntl.LOCK_EX):
        info = running_server(home)
        if info is None:
            _state_path(home).unlink(missing_ok=True)
            return None
        if not force and in_use(home):
            raise LocalServerError(
                f"the local Prefect server at {info.ui_url} (pid {info.pid}) is in use by "
                f"{describe_users(home)}; stopping it now would cut that command off from its flow "
                "run. Wait for the command to finish, or pass --force.")
        _state_path(home).unlink(missing_ok=True)
        _terminate(info.pid)
    return info


# --- the server process -----------------------------------------------------------------------

def _watch(server, home: Path, idle: float) -> None:
    """Stop ``server`` once it is idle (no user for ``idle`` seconds) or disowned."""
    me = os.getpid()
    while not server.should_exit:
        time.sleep(CHECK_SECONDS)
        info = read_state(home)
        if info is None or info.pid != me:
            server.should_exit = True  # stopped, replaced, or its PREFECT_HOME removed
            return
        try:
            with _flocked(home / LOCK_NAME, fcntl.LOCK_EX | fcntl.LOCK_NB):  # no command checking now
                used = last_used(home)
                if (used is not None and time.time() - used < idle) or in_use(home):
                    continue
                _state_path(home).unlink(missing_ok=True)  # from here, commands start a new one
                server.should_exit = True
                return
        except OSError:  # BlockingIOError: a command holds the lock; or PREFECT_HOME just went
            continue


def _serve(port: int, idle: float) -> None:
    home = prefect_home()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import uvicorn
    from prefect.server.api.server import create_app

    server = uvicorn.Server(uvicorn.Config(create_app(final=True), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    threading.Thread(target=_watch, args=(server, home, idle), name="memrestore-idle", daemon=True).start()
    server.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m memrestore.flows.ops.local_server",
                                     description="memrestore's shared local Prefect server (started by the CLI)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle", type=float, default=IDLE_SECONDS)
    args = parser.parse_args(argv)
    _serve(args.port, args.idle)


if __name__ == "__main__":
    main()
