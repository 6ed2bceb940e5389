"""The `memrestore restore` progress bar as an operator sees it: the real command on a terminal (a
pty), capped with ``--limit-rate`` so that the bar has seconds to show its sizes, rate and time
left, all in tasks/units.py's units (MiB, MiB/s, as ``--limit-rate`` is spelled), never MB."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

import pytest

from memrestore.backends.demo_snapshots import write_sample_snapshot
from tests.procs import CLI_SECONDS, MEMRESTORE, environment

pytestmark = pytest.mark.usefixtures("prefect_api")

#: A terminal's escape sequences (colours, cursor moves), stripped to read what it shows.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def on_a_terminal(*args: object, columns: int = 160) -> tuple[int, str]:
    """``memrestore *args`` run to its end with stdin, stdout and stderr on a pty ``columns`` wide;
    its exit status and all it wrote, escape sequences stripped, each redrawn line on a line."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    proc = subprocess.Popen([*MEMRESTORE, *map(str, args)], stdin=slave, stdout=slave, stderr=slave,
                            env=environment({"TERM": "xterm-256color"}), start_new_session=True)
    os.close(slave)
    written = bytearray()
    deadline = time.monotonic() + CLI_SECONDS
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 1.0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the command closed the terminal's last end
                    break
                if not chunk:
                    break
                written += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, _ESCAPES.sub("", written.decode(errors="replace")).replace("\r", "\n")


def test_the_bar_shows_mib_the_rate_and_the_time_left(backend, tmp_path):
    # 8 MiB under a 2 MiB/s cap: seconds of bar.
    write_sample_snapshot(backend, tenant_id=5, snapshot_id="snap-5", models=(("m", 16),), hnsw_bytes=8 * 2**20)
    code, shown = on_a_terminal("restore", "--backend", backend.url, "--tenant", 5, "--snapshot", "latest",
                                "--data-dir", tmp_path / "data", "--mode", "new_cluster", "--limit-rate", "2M")
    assert code == 0, shown
    frames = [line.strip() for line in shown.splitlines() if line.strip().startswith("restoring")]
    assert frames, shown
    # Bytes of the total, the rate and the time left, in MiB and MiB/s, as the summary writes them.
    moving = [f for f in frames if re.search(r"[\d.]+ (B|KiB|MiB)/8\.\d MiB [\d.]+ (B|KiB|MiB)/s ETA \d", f)]
    assert moving, "\n".join(frames)
    assert not re.search(r"\b[kMG]B\b", shown), shown  # no decimal units anywhere
    assert re.search(r"total 8\.\d MiB in [\d.]+ s, [\d.]+ (KiB|MiB)/s", shown), shown
