"""Timing and peak memory of a command, measured from outside it, and A/B interleaving.

A command runs as a child process under ``/usr/bin/time``; its wall time is taken around it, and
its peak resident set is what ``time`` reports ("Maximum resident set size" of ``time -v``: the
kernel's ``ru_maxrss`` of the command and the descendants it waited for). Going through ``time``
matters: a child forked straight from this (large) Python process inherits its parent's memory
image until it execs, and the kernel counts that image in the child's own ``ru_maxrss``, so a
small command like ``cp`` would appear to need as much memory as the benchmark itself. Compared commands run interleaved, A B A B ..., so that a burst of
load from the other users of a shared machine hits both sides alike; medians and ratios are
reported, never a single time.

Before each timed run, the machine is left alone for a few seconds (``settle``), after the
previous run's outputs were deleted. On these VMs, memory the guest frees is handed back to the
host after ~2 s (virtio-balloon free page reporting), and writing into it again costs several
times more: 2 GiB of ``pwrite`` + fsync took 0.5 s of system time right after the previous 2 GiB
were deleted, 2.8-3.5 s when 5 s had passed (three rounds each, BENCHMARKS.md). A command that
starts writing at once (``cp``, rclone) got the freed memory while it was still backed, one that
first spends 1-2 s starting up (memrestore importing Prefect) got it after it was handed back.
Settling first gives every command the same start.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence


class CommandFailed(RuntimeError):
    """A measured command exited non-zero: its result would mean nothing."""


@dataclass(frozen=True)
class Run:
    """One run of a command: wall seconds, peak RSS of the process tree, its stdout, and the CPU
    seconds (user + system) of the command and the children it waited for."""

    seconds: float
    max_rss_bytes: int
    stdout: str
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class Command:
    """A command to measure, with what to do (untimed) before and after each run."""

    label: str
    argv: Sequence[str]
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    before: Callable[[], None] | None = None
    after: Callable[[Run], None] | None = None
    #: Exit codes that still make a measurement (``memrestore drill`` exits 1 when a tenant
    #: failed, and its report says which and why).
    ok_exit_codes: tuple[int, ...] = (0,)


#: Debian's ``time`` package; ``%M`` is the maximum resident set size in KiB, ``%U`` and ``%S``
#: the user and system CPU seconds.
TIME = "/usr/bin/time"


def run_measured(argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 ok_exit_codes: tuple[int, ...] = (0,)) -> Run:
    """Run ``argv`` to completion; raise CommandFailed (with its stderr) if it exits non-zero."""
    if not os.access(TIME, os.X_OK):
        raise CommandFailed(f"{TIME} is missing: install Debian's `time` package (make system-deps)")
    with tempfile.NamedTemporaryFile(prefix="bench-rss-", suffix=".txt") as rss_file:
        started = time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%M %U %S", "-o", rss_file.name, *argv],
                              env=dict(env) if env is not None else None, cwd=cwd,
                              stdin=subprocess.DEVNULL, capture_output=True)
        seconds = time.perf_counter() - started
        report = Path(rss_file.name).read_text().strip().splitlines()
    if proc.returncode not in ok_exit_codes:
        raise CommandFailed(
            f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')[-3000:]}{proc.stdout.decode(errors='replace')[-3000:]}"
        )
    rss_kib, user, system = report[-1].split()
    return Run(seconds=seconds, max_rss_bytes=int(rss_kib) * 1024, stdout=proc.stdout.decode(errors="replace"),
               cpu_seconds=float(user) + float(system))


def run_command(command: Command, settle: float = 0.0) -> Run:
    if command.before is not None:
        command.before()
    time.sleep(settle)
    run = run_measured(command.argv, command.env, command.cwd, command.ok_exit_codes)
    if command.after is not None:
        command.after(run)
    return run


@dataclass
class Series:
    """Every run of one command in an interleaved comparison."""

    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def median_rss_bytes(self) -> float:
        return statistics.median(r.max_rss_bytes for r in self.runs)

    @property
    def max_rss_bytes(self) -> int:
        return max(r.max_rss_bytes for r in self.runs)

    @property
    def median_cpu_seconds(self) -> float:
        return statistics.median(r.cpu_seconds for r in self.runs)


def interleave(a: Command, b: Command, pairs: int, log: Callable[[str], None] = print,
               settle: float = 0.0) -> tuple[Series, Series]:
    """Run A B A B ... (``pairs`` runs of each). Each command's ``after`` leaves the machine as it
    found it (outputs deleted, dirty pages synced), so neither inherits the other's work; each
    run starts after ``settle`` seconds of quiet (see the module's docstring)."""
    series_a, series_b = interleave_all([a, b], pairs, log, settle)
    return series_a, series_b


def interleave_all(commands: Sequence[Command], pairs: int, log: Callable[[str], None] = print,
                   settle: float = 0.0) -> list[Series]:
    """:func:`interleave` of any number of commands: A B C A B C ..., ``pairs`` rounds."""
    series = [Series(c.label) for c in commands]
    for _ in range(pairs):
        for command, s in zip(commands, series):
            run = run_command(command, settle)
            s.runs.append(run)
            log(f"    {command.label}: {run.seconds:.2f} s, peak RSS {run.max_rss_bytes / 2**20:.0f} MiB")
    return series
