"""Helpers for the crash, concurrency and disk-full tests.

- Layouts: what a data dir holds before a restore, per mode, and what it must hold after.
- Forked restores: ``fork_call`` runs a function in a child forked from the (already imported)
  test process, so a kill costs a fork, not a Python start; ``Child`` waits for it or kills it.
- ``GatedBackend``: a local folder backend whose download of one object stops at given byte
  offsets until the test lets it go on, like a stalling remote store: the test then knows the
  restore is past its preflight and mid-download, with no hook in the restore's code.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from memrestore.backends import Backend, LocalBackend
from memrestore.backends.local import READ_CHUNK
from memrestore.backends.stream_control import DEFAULT_CEILING
from memrestore.backends.streams import DEFAULT_STREAMS, parse_rate
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.tasks.marker import OURS_PREFIX
from memrestore.tasks.modes import CheckLevel
from memrestore.tasks.outcome import RestoreOutcome
from memrestore.tasks.plan import DestinationState, RestoreMode, RestorePlan
from memrestore.tasks.restore import RestoreRequest, restore
from memrestore.tasks.validate import validate
from memrestore.tasks.validation import Validation
from tests.conftest import REPORT_KEY, tree

TENANT = 1
SNAPSHOT = "snap-1"
MODEL = "minilm"

#: Other tenants' data: single_tenant must leave it alone, wipe_and_restore must remove it.
OTHERS: dict[str, bytes] = {
    "tenant_2/data.sqlite": b"tenant 2 checkpoint " * 50,
    "tenant_2/hnsw/minilm.bin": bytes(range(256)) * 64,
    "tenant_3/data.sqlite": b"tenant 3 checkpoint",
}
#: An older copy of the restored tenant itself (wipe_and_restore replaces it).
OLD_TENANT: dict[str, bytes] = {
    "tenant_1/data.sqlite": b"tenant 1, last week's checkpoint",
    "tenant_1/hnsw/minilm.bin": b"old index" * 100,
    "tenant_1/hnsw/retired-model.bin": b"an index of a model no longer served",
}
#: Service entries of other kinds: a loose file, an empty dir, a symlink (in ``tree`` notation).
EXTRAS: dict[str, bytes] = {
    "service.toml": b"[service]\nport = 7000\n",
    "lost+found/": b"",
    "current": b"-> tenant_2",
}


def build(root: Path, spec: dict[str, bytes]) -> None:
    """Create ``spec`` (``tree`` notation: ``x/`` an empty dir, ``b"-> t"`` a symlink) under root."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in spec.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if data.startswith(b"-> "):
            os.symlink(data[3:].decode(), path)
        else:
            path.write_bytes(data)


def service_tree(root: Path) -> dict[str, bytes]:
    """``tree(root)`` without memrestore's own top-level ``.restore*`` entries."""
    return {rel: data for rel, data in tree(root).items() if not rel.startswith(OURS_PREFIX)}


def ours(root: Path) -> list[str]:
    """memrestore's own top-level entries in ``root``."""
    return sorted(n for n in os.listdir(root) if n.startswith(OURS_PREFIX)) if root.is_dir() else []


@dataclass(frozen=True)
class Layout:
    """A data dir before a restore of tenant 1 in ``mode``; ``old`` is None for an absent dir."""

    name: str
    mode: RestoreMode
    old: dict[str, bytes] | None

    def __str__(self) -> str:
        return f"{self.mode.value}/{self.name}"

    @property
    def old_tree(self) -> dict[str, bytes]:
        return dict(self.old or {})

    def seed(self, data_dir: Path) -> None:
        if self.old is not None:
            build(data_dir, self.old)

    def expected(self, new: dict[str, bytes]) -> dict[str, bytes]:
        """The data dir's exact tree after the restore."""
        if self.mode in (RestoreMode.SINGLE_TENANT, RestoreMode.REPLACE_TENANT):
            kept = {k: v for k, v in self.old_tree.items() if not k.startswith(f"tenant_{TENANT}/")}
            return kept | new
        return dict(new)

    @property
    def moved_aside(self) -> int:
        """How many entries the commit sets aside (passes through the moved-aside crash point)."""
        tops = {rel.split("/")[0] for rel in self.old_tree}
        if self.mode is RestoreMode.WIPE_AND_RESTORE:
            return len(tops)
        if self.mode in (RestoreMode.SINGLE_TENANT, RestoreMode.REPLACE_TENANT):
            return int(f"tenant_{TENANT}" in tops)
        return 0


LAYOUTS: list[Layout] = [
    Layout("absent data dir", RestoreMode.NEW_CLUSTER, None),
    Layout("empty data dir", RestoreMode.NEW_CLUSTER, {}),
    Layout("other tenants", RestoreMode.SINGLE_TENANT, OTHERS),
    Layout("other tenants, empty tenant dir, extras", RestoreMode.SINGLE_TENANT,
           OTHERS | {f"tenant_{TENANT}/": b""} | EXTRAS),
    Layout("other tenants, no tenant dir", RestoreMode.REPLACE_TENANT, OTHERS),
    Layout("other tenants, old tenant, extras", RestoreMode.REPLACE_TENANT, OTHERS | OLD_TENANT | EXTRAS),
    Layout("other tenants, old tenant", RestoreMode.WIPE_AND_RESTORE, OTHERS | OLD_TENANT),
    Layout("other tenants, old tenant, extras", RestoreMode.WIPE_AND_RESTORE, OTHERS | OLD_TENANT | EXTRAS),
]


@dataclass
class Snapshot:
    backend: LocalBackend
    plan: RestorePlan
    #: The restored tenant's files, exactly (from the backend's objects, not from a restore).
    new: dict[str, bytes]


def make_snapshot(root: Path, hnsw_bytes: int) -> Snapshot:
    """Tenant 1's ``snap-1`` (a SQLite checkpoint, two HNSW blobs) in a local backend at root."""
    backend = LocalBackend(root)
    manifest = write_sample_snapshot(
        backend, tenant_id=TENANT, snapshot_id=SNAPSHOT,
        created_at_unix_micros=1_700_000_000_000_000, hnsw_bytes=hnsw_bytes,
    )
    plan = validate(manifest, DestinationState(embedding_model=MODEL), backend.url)
    new = {item.destination: (backend.root / item.content_key).read_bytes() for item in plan.items}
    return Snapshot(backend, plan, new)


class GatedBackend:
    """A local folder backend whose download of one object stops at gates, like a remote store
    that stalls: once ``hold_at[i]`` bytes of ``key`` are written to the restore's sink, it
    tells the test (:meth:`wait_arrived`) and waits until the test lets it go on
    (:meth:`release`). The test then knows exactly where the restore is, with no hook in the
    restore's code. Works across ``fork`` (the gates are pipes): create it before forking.
    """

    def __init__(self, inner: LocalBackend, key: str, hold_at: list[int]) -> None:
        self.inner, self.key, self.hold_at = inner, key, sorted(hold_at)
        self.url, self.identity = inner.url, inner.identity
        self._arrived_r, self._arrived_w = os.pipe()
        self._gate_r, self._gate_w = os.pipe()

    # The protocol, by delegation; only ``download`` of ``key`` differs.
    def read_manifest_bytes(self, snapshot_id: str) -> bytes:
        return self.inner.read_manifest_bytes(snapshot_id)

    def list_snapshot_ids(self) -> list[str]:
        return self.inner.list_snapshot_ids()

    def list_manifests(self):
        return self.inner.list_manifests()

    def object_size(self, key: str) -> int:
        return self.inner.object_size(key)

    def put_object(self, key: str, source) -> None:
        self.inner.put_object(key, source)

    def download(self, key: str, sink, on_bytes=None, limit=None) -> int:
        if key != self.key:
            return self.inner.download(key, sink, on_bytes, limit)
        gates = list(self.hold_at)
        written = 0

        class _Held:
            def write(_, data: bytes) -> None:
                nonlocal written
                view = memoryview(data)
                for start in range(0, len(view), READ_CHUNK):  # as a store streams it, a chunk at a time
                    piece = view[start:start + READ_CHUNK]
                    sink.write(piece)
                    written += len(piece)
                    while gates and written >= gates[0]:
                        gates.pop(0)
                        os.write(self._arrived_w, b"h")
                        if os.read(self._gate_r, 1) != b"g":
                            raise OSError(errno.ECONNRESET, "the test closed the gate")

        return self.inner.download(key, _Held(), on_bytes, limit)

    # The test's side.
    def wait_arrived(self, alive: Callable[[], bool], timeout: float = 60) -> None:
        """Wait until a restore is held at the next gate (``alive``: is it still running?)."""
        deadline = time.monotonic() + timeout
        while not select.select([self._arrived_r], [], [], 0.01)[0]:
            if not alive():
                raise AssertionError(f"the restore ended before it reached a gate in {self.key}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no restore reached a gate in {self.key} in {timeout}s")
        assert os.read(self._arrived_r, 1) == b"h"

    def release(self) -> None:
        os.write(self._gate_w, b"g")

    def close(self) -> None:
        for fd in (self._arrived_r, self._arrived_w, self._gate_r, self._gate_w):
            os.close(fd)


def report(request, lines: list[str]) -> None:
    """Write ``lines`` to the terminal, past pytest's output capture (no ``-s`` needed). An xdist
    worker has no terminal of its own: it hands them to the controller, which writes them when the
    worker is done (tests/conftest.py)."""
    worker_output = getattr(request.config, "workeroutput", None)
    if worker_output is not None:
        worker_output.setdefault(REPORT_KEY, []).append(list(lines))
        return
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)


def in_item_order(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn``, run with a restore's items staged one at a time, in the plan's order, so that the n-th
    pass through the crash point ``item-staged`` is the n-th item and the ones after it are not
    staged yet. For a forked child only (:func:`fork_call`): it sets the composer's
    ``ITEM_CONCURRENCY`` for the rest of that process."""
    from memrestore.tasks import restore as restore_module

    def run() -> object:
        restore_module.ITEM_CONCURRENCY = 1
        return fn()

    return run


def fork_call(fn: Callable[[], object], env: dict[str, str] | None = None) -> "Child":
    """Run ``fn()`` in a forked child with ``env`` added to its environment.

    The child exits 0 if ``fn`` returns and 3 if it raises (the traceback goes to fd 2); it never
    returns into the test process. It is forked from the test process itself, so it starts with
    every module already imported: a kill costs a fork, not a Python start.
    """
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.environ.update(env or {})
            fn()
        except BaseException:  # noqa: BLE001 - reported to the parent by the exit status
            os.write(2, traceback.format_exc().encode())
            code = 3
        os._exit(code)
    return Child(pid)


class Child:
    """A forked child: poll, wait (with a deadline) or kill it, once reaped its status stays."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.status: int | None = None

    def poll(self) -> int | None:
        if self.status is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = status
        return self.status

    def alive(self) -> bool:
        return self.poll() is None

    def kill(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)  # a zombie takes it too: no race with its exit

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                os.waitpid(self.pid, 0)
                raise AssertionError(f"child {self.pid} still running after {timeout}s: killed")
            time.sleep(0.001)
        assert self.status is not None
        return self.status

    @property
    def killed(self) -> bool:
        return self.status is not None and os.WIFSIGNALED(self.status) and os.WTERMSIG(self.status) == signal.SIGKILL

    @property
    def succeeded(self) -> bool:
        return self.status is not None and os.WIFEXITED(self.status) and os.WEXITSTATUS(self.status) == 0

    def describe(self) -> str:
        s = self.status
        if s is None:
            return "running"
        if os.WIFSIGNALED(s):
            return f"killed by signal {os.WTERMSIG(s)}"
        return f"exited {os.WEXITSTATUS(s)}"


# -- the plain path, as the tests call it ---------------------------------------------------------


def execute(backend: Backend, plan: RestorePlan, data_dir: Path, mode: RestoreMode, resume: bool = False, *,
            streams: int | None = DEFAULT_STREAMS, max_streams: int = DEFAULT_CEILING, limit_rate: int | str | None = None,
            check: CheckLevel = CheckLevel.NONE, validation: Validation | None = None) -> RestoreOutcome:
    """Restore ``plan``'s snapshot (one that ``validate`` made of a manifest in ``backend``) with
    the composer's plain steps, as a drill's tenant does: the request made of the plan's snapshot
    and destination, so the restore reads and validates the manifest again itself."""
    request = RestoreRequest(
        backend=backend.url, tenant_id=plan.tenant_id, snapshot=plan.snapshot_id, data_dir=Path(data_dir),
        mode=mode, destination=plan.destination_state, resume=resume, streams=streams, max_streams=max_streams,
        limit_rate=parse_rate(limit_rate) if limit_rate is not None else None, check=check, validation=validation)
    return restore(request, backend=backend)


@contextmanager
def stop_request_cleared():
    """Around a test that makes its restore stop (a KeyboardInterrupt in this process): the
    process-wide stop request (tasks/interrupt.py) it sets is cleared again at the end, as a new
    process would start. In the product a stop request is never undone: the process is ending."""
    from memrestore.tasks import interrupt

    try:
        yield
    finally:
        interrupt._stop.clear()
