"""How ``memrestore serve`` stops: promptly, even when the Prefect API is gone.

Prefect's runner stops by asking the API about each flow run in flight before it kills the run's
process, then flushes its events and closes its streams to the API. Against an API that does not
answer (the server frozen, a network gone), each of those waits out a timeout: measured with the
server under SIGSTOP, ``serve`` took 20.5 s to exit after Ctrl-C with nothing running, and had
still not exited 120 s after SIGTERM with a restore in flight, which went on meanwhile. A service
manager kills it then (systemd after 90 s), and the restore with it, mid-step.

So the first SIGINT or SIGTERM starts Prefect's own stop and a watch on it:

* with the API answering, Prefect has :data:`STOP_GRACE_SECONDS` to finish (0.4 s idle and 3.6 s
  with a restore in flight, measured);
* once the API has not answered for :data:`API_SILENCE_SECONDS`, or the grace is spent, ``serve``
  stops without it: each restore still running gets SIGTERM (a restore stopped so keeps its
  marker and says how to resume or abort, tasks/interrupt.py), SIGKILL if it outlives
  :data:`RUN_STOP_SECONDS` (crash-safe too: the next command finds the marker), and ``serve``
  exits 1 saying what it did.

A second signal stops the restores in flight with SIGTERM and exits at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from prefect.runner import Runner

#: How long Prefect's own stop may take while its API answers.
STOP_GRACE_SECONDS = 30.0
#: How long the API may be silent (no answer to /health) before serve stops without it.
API_SILENCE_SECONDS = 3.0
#: How long a restore has, after SIGTERM, to stop by itself before SIGKILL.
RUN_STOP_SECONDS = 10.0
#: serve's exit status when it had to stop without Prefect.
FORCED_EXIT = 1

_POLL_SECONDS = 0.25


def flow_run_pids(runner: Runner) -> list[int]:
    """The processes of the flow runs ``runner`` started and still tracks.

    Prefect has no public way to ask; its process manager is read directly (Prefect is pinned to
    3.9 in pyproject.toml, and test_serve's dead-API test fails if this stops finding the run)."""
    manager = getattr(runner, "_process_manager", None)
    if manager is None:
        return []
    pids = []
    for flow_run_id in manager.flow_run_ids():
        handle = manager.get(flow_run_id)
        if handle is not None and handle.pid:
            pids.append(handle.pid)
    return pids


def answers(api_url: str, timeout: float = 1.0) -> bool:
    """Whether anything answers at ``api_url`` (http or https, a path prefix kept, as for Prefect
    Cloud's workspaces): any HTTP status counts, a refusal, a reset or silence does not."""

    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):  # URLError, a timeout, a reset; a URL urllib cannot open
        return False


def _running(pid: int) -> bool:
    """Whether our child ``pid`` is still running (reaping it if it has exited)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # reaped already (by Prefect's own watcher)
        return False
    return done == 0


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


class ServeStop:
    """Signal handling and a bounded stop for one ``serve`` (see the module docstring)."""

    def __init__(self, api_url: str, log: Callable[[str], None], *,
                 grace: float = STOP_GRACE_SECONDS, silence: float = API_SILENCE_SECONDS,
                 run_stop: float = RUN_STOP_SECONDS) -> None:
        self.api_url = api_url
        self.log = log
        self.grace, self.silence, self.run_stop = grace, silence, run_stop
        self.runner: Runner | None = None
        self.finished = threading.Event()  # set once Prefect's stop has returned
        self._signalled: str | None = None
        self._lock = threading.Lock()

    # -- signals (main thread) ------------------------------------------------------------------

    def on_signal(self, signum: int, frame: object = None) -> None:
        name = signal.Signals(signum).name
        with self._lock:
            first = self._signalled is None
            self._signalled = self._signalled or name
        runner = self.runner
        if not first:
            self.log(f"{name} again: stopping now, without waiting for Prefect")
            self._stop_runs(wait=0.0)
            self._exit()
        if runner is None or not runner.started:
            raise SystemExit(0)  # not serving yet: unwind (a local server hold is let go)
        self.log(f"{name}: stopping (a restore in flight is stopped, and can be resumed); "
                 f"{name} again stops at once")
        threading.Thread(target=self._watch, name="serve-stop-watch", daemon=True).start()
        runner.handle_sigterm()  # Prefect's own stop, scheduled on the runner's loop

    # -- the watch (its own thread) -------------------------------------------------------------

    def _watch(self) -> None:
        began = time.monotonic()
        answered = began
        while not self.finished.wait(_POLL_SECONDS):
            up = answers(self.api_url)
            now = time.monotonic()
            if up:
                answered = now
                if now - began < self.grace:
                    continue
                why = f"Prefect's stop did not finish within {self.grace:.0f} s"
            elif now - answered < self.silence:
                continue
            else:
                why = (f"the Prefect API at {self.api_url} has not answered for {self.silence:.0f} s, so "
                       "Prefect cannot stop its runs or send what it holds")
            if self.finished.is_set():
                return
            stopped, killed = self._stop_runs(wait=self.run_stop)
            runs = ""
            if stopped:
                runs = (f"; {stopped} flow run(s) in flight stopped by SIGTERM"
                        + (f", {killed} of them killed after {self.run_stop:.0f} s" if killed else "")
                        + ": a restore's data dir keeps its marker (`memrestore restore ... --resume` "
                          "finishes it, `memrestore abort --data-dir DIR` rolls it back); a drill killed so "
                          "may leave its scratch copy (tenant-<id>-...) in its scratch dir")
            self.log(f"{why}: serve stopped without it{runs}. The deployments and their schedules on "
                     "the server are as they were")
            self._exit()

    def _stop_runs(self, wait: float) -> tuple[int, int]:
        """SIGTERM the flow runs' processes; SIGKILL those still running after ``wait`` seconds.
        Returns (signalled, killed)."""
        pids = flow_run_pids(self.runner) if self.runner is not None else []
        for pid in pids:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        alive = list(pids)
        while wait and alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if _running(pid)]
        killed = 0
        if wait:
            for pid in alive:
                _signal(pid, signal.SIGKILL)
                killed += 1
        return len(pids), killed

    @staticmethod
    def _exit() -> None:
        # Prefect's threads and loop are still waiting on the API: no orderly interpreter exit
        # can finish. Our own state needs none: the local server hold is a lock the kernel drops.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(FORCED_EXIT)
