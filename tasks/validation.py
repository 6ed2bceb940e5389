"""The operator's validation of a restored copy: their own command and/or Python callable, run
against the copy before a restore commits it (on the staged copy, after tasks/checks.py's
pre-commit check) and in a drill (on the scratch copy, after the drill's checks).

memrestore's checks prove the bytes (blake3, SQLite's own check, the manifest's tables); only the
service's own code can prove that the service can serve from them (Veeam's SureBackup and AWS
Backup's restore testing run such a check, with a time limit, before they call a backup good).
Two kinds of hook, either or both (the command first; the callable only when it passed), each
with the same time limit (:class:`Validation`):

- a **command**: a template, split as a shell splits it (``shlex``) and then each word filled in
  (:data:`PLACEHOLDERS`: ``{data_dir}``, ``{tenant_dir}``, ``{tenant_id}``, ``{snapshot_id}``,
  ``{sqlite_path}``; a path with spaces stays one argument), run with no shell, its stdin empty,
  the same facts in its environment (``MEMRESTORE_DATA_DIR``, ...). Exit status 0 passes.
- a **callable**, ``package.module:function``: called with one :class:`tasks.validators.RestoredCopy`;
  it passes by returning None or True, fails by returning False or a message, or by raising
  (the contract in full: tasks/validators.py).

Both run as a process of their own, in a new session (its own process group): at the time limit
the whole group gets SIGTERM, then SIGKILL 2 s later (:data:`KILL_GRACE_SECONDS`: a service the
validator started gets to stop cleanly), and whatever of the group outlives the validator is
killed too, so nothing of it goes on against a copy that is about to be committed or deleted.
The callable runs in ``python -c`` (this interpreter, so the packages installed beside
memrestore are importable), not in a thread of ours: a thread cannot be killed when it hangs, and
the operator's module, imported here, could change our process's state (signal handlers, logging,
the working directory, ``sys.modules``). Its verdict comes back on a pipe of its own, so a
validator that prints or exits oddly is never mistaken for one that passed. The output (stdout and
stderr together) is read as it comes, its last :data:`TAIL_BYTES` kept for the report: a
validator that prints without end costs no memory.

A validator cannot change what is committed (:func:`validate_copy`): while it runs, the copy's
files are read-only (a validator that writes gets "attempt to write a readonly database" and fails,
saying so, unless it runs as root); afterwards, every file is hashed again against the manifest's
blake3 (only when a validation is set), so a changed byte, a replaced or missing file refuses the
copy (:class:`ValidatorChangedCopyError`); and whatever it left beside the snapshot's files in the
tenant dir (a ``-wal``/``-shm`` from a plain SQLite open, a lock file, a new dir) is removed and
named in the result. Removed rather than refused: the snapshot's own bytes are proven unchanged, so
the tenant dir is then exactly the snapshot's, and a by-product the service never needs does not
block a restore. What this costs beyond the validator's own work (``python -m
benchmarks.validation_cost``, 2 shared cores): a local restore of 1 GiB took 0.56 s without a
validation and 0.81 s with ``--validate-command true`` (1.45x), the re-hash alone 0.19 s (1 GiB
from the page cache; ``cp`` + ``fsync`` of it takes 1.1 s here); a restore from a far store pays
the same 0.2-0.3 s a GiB against a download many times longer. Cheaper stand-ins were not taken: a
file's times change at a coarse tick and a validator's write can land in the same one, so only the
bytes prove the bytes. A hook that cannot run as given (a placeholder that is not one, a program
not found or not executable, a callable that does not import) is refused before anything is fetched
(:func:`check_hook`), as :class:`ValidationHookError`.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import shlex
import shutil
import signal
import stat
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Literal, Mapping

from pydantic import BaseModel, Field, model_serializer
from pydantic.json_schema import SkipJsonSchema

from memrestore.backends.hashing import hash_file
from memrestore.tasks import interrupt
from memrestore.tasks.errors import (
    ValidationFailedError,
    ValidationHookError,
    ValidationTimedOutError,
    ValidatorChangedCopyError,
)
from memrestore.tasks.marker import staging_dir
from memrestore.tasks.plan import RestorePlan, tenant_dir_name
from memrestore.tasks.validators import RestoredCopy

#: The placeholders of a command's template, each a fact of the copy.
PLACEHOLDERS = ("data_dir", "tenant_dir", "tenant_id", "snapshot_id", "sqlite_path")
#: Each hook's time limit unless told: a service's own self-check of one tenant takes seconds;
#: two minutes leave room for a large database, and bound a hung one in a nightly drill.
DEFAULT_TIMEOUT_SECONDS = 120.0
#: The longest time limit one may set: a day.
MAX_TIMEOUT_SECONDS = 86_400.0
#: After SIGTERM at the time limit, how long the group has before SIGKILL.
KILL_GRACE_SECONDS = 2.0
#: The output kept for the report: its last bytes, then at most its last lines.
TAIL_BYTES = 4096
TAIL_LINES = 20
#: Lines of the output a refusal's message quotes (the report keeps the whole tail).
MESSAGE_LINES = 5
_CALLABLE_SPELLING = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

_log = logging.getLogger(__name__)
_log.addHandler(logging.NullHandler())


def _no_schema_default(schema: dict) -> None:
    """An optional field of the UI's form: its type alone, no null default (as flows/restore.py's
    ``optional``): the form shows a plain input, not a type switch."""
    schema.pop("default", None)


class Validation(BaseModel):
    """The operator's own validation of a restored copy: a command, a Python callable, or both."""

    command: str | SkipJsonSchema[None] = Field(
        default=None, title="command", json_schema_extra=_no_schema_default,
        description="A command run on the restored copy; exit status 0 passes. Placeholders: {data_dir} (a data "
                    "dir holding only this tenant), {tenant_dir}, {tenant_id}, {snapshot_id}, {sqlite_path}. "
                    "Split as a shell would, run without one. Empty: none.")
    callable: str | SkipJsonSchema[None] = Field(
        default=None, title="callable", json_schema_extra=_no_schema_default,
        description="A Python function, package.module:function, given the restored copy; it passes by "
                    "returning None or True, fails by returning False or a reason, or by raising. Empty: none.")
    timeout_seconds: float = Field(
        default=DEFAULT_TIMEOUT_SECONDS, gt=0, le=MAX_TIMEOUT_SECONDS, title="timeout_seconds",
        description="Each one's time limit: past it, its process group is killed and the copy fails.")

    @model_serializer(mode="wrap")
    def _without_nones(self, handler):
        # The form's default holds no null for a field typed str.
        return {k: v for k, v in handler(self).items() if v is not None}

    @property
    def active(self) -> bool:
        """Whether there is anything to run."""
        return bool(self.command or self.callable)

    def describe(self) -> str:
        """What runs, for a log line: ``command `...` and callable pkg.mod:fn``."""
        parts = ([f"command `{self.command}`"] if self.command else []) + (
            [f"callable {self.callable}"] if self.callable else [])
        return " and ".join(parts)


class ValidationResult(BaseModel):
    """How the copy fared: ``passed``, ``failed`` or ``timed_out`` (AWS Backup's words), in how
    many seconds (every hook that ran), why it failed, the last lines of the output, and what
    the validator left beside the copy's files that was removed (paths within the copy)."""

    status: Literal["passed", "failed", "timed_out"]
    #: What ran (:meth:`Validation.describe`): ``command `...` and callable pkg.mod:fn``.
    hooks: str = ""
    seconds: float
    reason: str | None = None
    output: str = ""
    removed: list[str] = []

    def short(self) -> str:
        """``passed in 0.12 s``, ``failed in 0.30 s``, ``timed out after 5.00 s``: the table's cell."""
        from memrestore.tasks import units

        if self.status == "timed_out":
            return f"timed out after {units.duration(self.seconds)}"
        return f"{self.status} in {units.duration(self.seconds)}"


# -- the template ------------------------------------------------------------------------------


def command_words(template: str) -> list[str]:
    """The template split into its words (a shell's quoting), each placeholder checked; raises
    ValidationHookError naming what is wrong."""
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise ValidationHookError(
            f"--validate-command {template!r} cannot be split into words: {exc}. Quote as a shell does "
            "(a path with spaces in '...')."
        ) from None
    if not words:
        raise ValidationHookError("--validate-command is empty: give the program to run and its arguments, "
                                  "or leave the option out.")
    for word in words:
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(word) if field is not None]
        except ValueError as exc:
            raise ValidationHookError(
                f"--validate-command {template!r}: {exc} in {word!r}; write {{{{ and }}}} for a literal brace."
            ) from None
        for field in fields:
            if field not in PLACEHOLDERS:
                raise ValidationHookError(
                    f"--validate-command {template!r} names {{{field}}}, which is not a placeholder; a "
                    f"template may use {', '.join('{' + p + '}' for p in PLACEHOLDERS)} (write {{{{ and "
                    "}} for a literal brace)."
                )
    return words


def _facts(copy: RestoredCopy) -> dict[str, str]:
    return {"data_dir": str(copy.data_dir), "tenant_dir": str(copy.tenant_dir), "tenant_id": str(copy.tenant_id),
            "snapshot_id": copy.snapshot_id, "sqlite_path": str(copy.sqlite_path)}


def _program(template: str, word: str) -> str:
    """The program a command runs, as a path that exists and is executable; raises
    ValidationHookError saying what is wrong with it."""
    if "/" in word:
        path = Path(word)
        if not path.exists():
            raise ValidationHookError(
                f"--validate-command {template!r} runs {word}, which does not exist (relative to "
                f"{Path.cwd()} when relative). Give the program's absolute path on the machine that restores."
            )
    else:
        found = shutil.which(word)
        if found is None:
            raise ValidationHookError(
                f"--validate-command {template!r} runs {word!r}, which is not a command on PATH "
                f"({os.environ.get('PATH', '')}). Give its absolute path, or install it where restores "
                "and drills run (the serve host, or the worker)."
            )
        path = Path(found)
    if path.is_dir():
        raise ValidationHookError(f"--validate-command {template!r} runs {path}, which is a directory, not a program.")
    if not os.access(path, os.X_OK):
        mode = stat.filemode(path.stat().st_mode)
        raise ValidationHookError(
            f"--validate-command {template!r} runs {path}, which is not executable ({mode}): `chmod +x` it, "
            f"or run it through its interpreter (sh {word} ...)."
        )
    return str(path)


def _callable_spelling(spec: str) -> None:
    if not _CALLABLE_SPELLING.match(spec):
        raise ValidationHookError(
            f"--validate-callable {spec!r} is not package.module:function (for example "
            "memrestore.tasks.validators:commit_log_readable)."
        )


# -- running one hook ----------------------------------------------------------------------------


class _Tail:
    """The last :data:`TAIL_BYTES` of a pipe, read by a thread of its own as the process writes."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="memrestore-validation-output", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with self._pipe:
            while chunk := self._pipe.read1(65536):
                with self._lock:
                    self._chunks.append(chunk)
                    self._size += len(chunk)
                    while self._size - len(self._chunks[0]) >= TAIL_BYTES:
                        self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        """The tail, once the pipe is at its end. A process that left the validator's group
        (``setsid``) may hold the pipe open: then the tail so far, after a moment, and the thread
        goes on reading (and closes the pipe) until that process ends."""
        self._thread.join(1.0)
        with self._lock:
            data = b"".join(self._chunks)[-TAIL_BYTES:]
        lines = data.decode("utf-8", errors="replace").rstrip("\n").splitlines()
        return "\n".join(lines[-TAIL_LINES:])


def _kill_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process's group, SIGKILL it ``grace`` seconds later if the process is still
    there (0: SIGKILL at once); then the group's stragglers are SIGKILLed either way."""
    if grace > 0:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class _Ran(BaseModel):
    status: Literal["passed", "failed", "timed_out"]
    #: What ran (:meth:`Validation.describe`): ``command `...` and callable pkg.mod:fn``.
    hooks: str = ""
    seconds: float
    reason: str | None = None
    output: str = ""
    verdict: dict | None = None


#: Sets the validator's process to be killed when ours dies (Linux's PR_SET_PDEATHSIG; it lives
#: in a session of its own, so a SIGKILL of memrestore, or a closed terminal, would not reach it),
#: then becomes the command (exec keeps the setting). argv: our pid, the program, its arguments.
#: The setting follows the thread that started it: :func:`_run` waits in that thread.
DIE_WITH_PARENT = r"""
import ctypes, os, signal
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass  # not Linux: the validator outlives a memrestore killed mid-validation
if os.getppid() != int(PARENT):
    os._exit(1)  # memrestore died before the setting took
"""
_LAUNCHER = "import os, sys\nPARENT = sys.argv[1]\n" + DIE_WITH_PARENT + "os.execv(sys.argv[2], sys.argv[2:])\n"
#: How often a wait on the validator looks whether the restore was told to stop (Ctrl-C, SIGTERM).
STOP_POLL_SECONDS = 0.1


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait for ``proc`` at most ``timeout`` seconds (False when it is still running then);
    raise StopRequested (tasks/interrupt.py) once the process is told to stop."""
    deadline = time.monotonic() + timeout
    while True:
        interrupt.check()
        try:
            proc.wait(max(0.0, min(STOP_POLL_SECONDS, deadline - time.monotonic())))
            return True
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                return False


def _run(argv: list[str], timeout: float, env: Mapping[str, str] | None = None, pass_fds: tuple[int, ...] = (),
         verdict_fd: int | None = None) -> _Ran:
    """Run ``argv`` in a session of its own, its output's tail kept, killed (with its group) at
    ``timeout``, or at once when the restore is told to stop; for a callable, its verdict read
    from ``verdict_fd`` (our end of its pipe)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, env=None if env is None else dict(env), pass_fds=pass_fds)
    for fd in pass_fds:
        os.close(fd)  # the child's end: the verdict pipe reads EOF once the child is gone
    tail = _Tail(proc.stdout)
    timed_out = False
    try:
        if not _wait(proc, timeout):
            timed_out = True
            _kill_group(proc, KILL_GRACE_SECONDS)
    finally:
        _kill_group(proc, 0)  # what it left running; and on a stop, the validator itself
    seconds = time.monotonic() - started
    output = tail.text()
    verdict = None
    if verdict_fd is not None:
        # The verdict was written whole before the process ended (it is short: see _CHILD), so
        # this reads it without waiting, even if a process the validator forked holds the pipe.
        os.set_blocking(verdict_fd, False)
        with os.fdopen(verdict_fd, "rb") as f:
            raw = f.read() or b""
        try:
            verdict = json.loads(raw) if raw else None
        except ValueError:
            verdict = None
    if timed_out:
        return _Ran(status="timed_out", seconds=seconds, output=output, verdict=verdict,
                    reason=f"ran past its {timeout:g} s limit (--validate-timeout) and was killed with its "
                           "process group")
    if verdict_fd is None:
        ok = proc.returncode == 0
        return _Ran(status="passed" if ok else "failed", seconds=seconds, output=output,
                    reason=None if ok else _exit_reason(proc.returncode))
    return _Ran(status="failed", seconds=seconds, output=output, verdict=verdict,
                reason=None if verdict is None else verdict.get("message"))


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def run_command(template: str, copy: RestoredCopy, timeout: float) -> _Ran:
    """The command of ``template`` on ``copy``; raises ValidationHookError when it cannot start."""
    facts = _facts(copy)
    words = [word.format_map(facts) for word in command_words(template)]
    words[0] = _program(template, words[0])
    env = {**os.environ, **{f"MEMRESTORE_{k.upper()}": v for k, v in facts.items()}}
    ran = _run([sys.executable, "-S", "-c", _LAUNCHER, str(os.getpid()), *words], timeout, env)
    if ran.reason:
        ran.reason = f"command `{template}` {ran.reason}"
    return ran


#: The callable's process: import, call, and say the verdict on its own pipe (stdlib only, and
#: tasks/validators.py, itself stdlib only). argv: spec, verdict fd, the facts (JSON), the mode
#: ("import": only import it, for check_hook; "call").
_CHILD = r"""
import importlib, json, os, sys, traceback
spec, fd, facts, mode, PARENT = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4], sys.argv[5]
""" + DIE_WITH_PARENT + r"""
def say(verdict, message=None):
    if message is not None and len(message) > 2000:  # within a pipe's buffer: written without a reader
        message = message[:2000] + "..."
    with os.fdopen(fd, "w") as f:
        json.dump({"verdict": verdict, "message": message}, f)
    sys.exit(0)
module_name, _, name = spec.partition(":")
try:
    target = importlib.import_module(module_name)
except BaseException as exc:
    traceback.print_exc()
    say("not_importable", f"importing {module_name} raised {type(exc).__name__}: {exc}")
where = getattr(target, "__file__", None) or module_name
for part in name.split("."):
    target = getattr(target, part, None)
if not callable(target):
    say("not_importable", f"module {module_name} ({where}) has no function {name}"
        + ("" if target is None else f" (it is a {type(target).__name__})"))
if mode == "import":
    say("importable")
from pathlib import Path
from memrestore.tasks.validators import RestoredCopy
copy = RestoredCopy(Path(facts["data_dir"]), Path(facts["tenant_dir"]), int(facts["tenant_id"]),
                    facts["snapshot_id"])
try:
    returned = target(copy)
except SystemExit as exc:
    say("failed", f"called sys.exit({exc.code!r}) instead of returning: a validator returns None or True "
        "to pass, False or a reason to fail")
except BaseException as exc:
    traceback.print_exc()
    say("failed", f"raised {type(exc).__name__}: {exc}")
if returned is None or returned is True:
    say("passed")
if returned is False:
    say("failed", "returned False")
if isinstance(returned, str):
    say("failed", returned)
say("failed", f"returned {returned!r}: a validator returns None or True to pass, False or a reason to fail")
"""


def _run_callable(spec: str, copy: RestoredCopy | None, timeout: float) -> _Ran:
    read_end, write_end = os.pipe()
    facts = json.dumps(_facts(copy) if copy is not None else {})
    argv = [sys.executable, "-c", _CHILD, spec, str(write_end), facts, "call" if copy is not None else "import",
            str(os.getpid())]
    try:
        return _run(argv, timeout, pass_fds=(write_end,), verdict_fd=read_end)
    except BaseException:
        os.close(read_end)
        raise


def _not_importable(spec: str, message: str, output: str) -> ValidationHookError:
    last = output.strip().splitlines()[-1] if output.strip() else ""
    traceback = f" Its traceback ends: {last}" if last and last not in message else ""
    return ValidationHookError(
        f"--validate-callable {spec} cannot be used by this Python ({sys.executable}): {message}.{traceback} "
        "Install its package into memrestore's environment (where restores and drills run: the serve host, "
        "or the worker), or put its folder on PYTHONPATH there."
    )


def run_callable(spec: str, copy: RestoredCopy, timeout: float) -> _Ran:
    """The callable ``spec`` called on ``copy`` in a process of its own; raises
    ValidationHookError when it cannot be imported."""
    _callable_spelling(spec)
    ran = _run_callable(spec, copy, timeout)
    verdict = ran.verdict or {}
    if verdict.get("verdict") == "not_importable":
        raise _not_importable(spec, verdict.get("message") or "not importable", ran.output)
    if ran.status == "timed_out":
        ran.reason = f"callable {spec} {ran.reason}"
    elif verdict.get("verdict") == "passed":
        ran.status, ran.reason = "passed", None
    elif not verdict:
        ran.reason = (f"callable {spec}: its process ended without a verdict "
                      f"(it exited or crashed before the function returned)")
    else:
        ran.reason = f"callable {spec} {ran.reason}" if ran.reason and ran.reason.startswith(
            ("raised", "returned", "called")) else f"callable {spec} failed: {ran.reason}"
    return ran


# -- the whole validation ------------------------------------------------------------------------


def check_hook(validation: Validation, here: bool = True) -> None:
    """Refuse, before anything is fetched, a hook that cannot run as given: a template whose
    placeholders are not ours, a callable misspelled; and, when it will run ``here`` (not on a
    fleet's workers), a program not found or not executable, a callable not importable (imported
    in a process of its own, within the time limit). Raises ValidationHookError."""
    if validation.command:
        words = command_words(validation.command)
        if here and "{" not in words[0]:
            _program(validation.command, words[0])
    if validation.callable:
        _callable_spelling(validation.callable)
        if not here:
            return
        ran = _run_callable(validation.callable, None, validation.timeout_seconds)
        verdict = (ran.verdict or {}).get("verdict")
        if ran.status == "timed_out":
            raise ValidationHookError(
                f"--validate-callable {validation.callable}: importing it did not finish within "
                f"{validation.timeout_seconds:g} s (--validate-timeout); its module hangs as it is imported."
            )
        if verdict != "importable":
            message = (ran.verdict or {}).get("message") or "its process ended before saying"
            raise _not_importable(validation.callable, message, ran.output)


def run_validation(validation: Validation, copy: RestoredCopy) -> ValidationResult:
    """Run the hooks on ``copy`` (the command first; the callable only when it passed), unguarded
    (:func:`validate_copy` guards the copy). Raises ValidationHookError when a hook cannot run."""
    runs: list[tuple[str, _Ran]] = []
    if validation.command:
        runs.append((f"$ {validation.command}", run_command(validation.command, copy, validation.timeout_seconds)))
    if validation.callable and all(r.status == "passed" for _, r in runs):
        runs.append((f"callable {validation.callable}",
                     run_callable(validation.callable, copy, validation.timeout_seconds)))
    failed = next((r for _, r in runs if r.status != "passed"), None)
    output = runs[0][1].output if len(runs) == 1 else "\n".join(
        f"--- {label}\n{r.output}" if r.output else f"--- {label}" for label, r in runs)
    return ValidationResult(status=failed.status if failed else "passed", hooks=validation.describe(),
                            seconds=round(sum(r.seconds for _, r in runs), 3),
                            reason=failed.reason if failed else None, output=output)


# -- the copy, kept as it was ---------------------------------------------------------------------


def _read_only(root: Path, files: list[str]) -> dict[str, int]:
    """Make each file read-only; the modes they had, to put back."""
    modes = {}
    for rel in files:
        path = root / rel
        mode = path.stat().st_mode
        modes[rel] = mode
        path.chmod(stat.S_IMODE(mode) & ~0o222)
    return modes


def _writable_again(root: Path, modes: dict[str, int]) -> None:
    """The modes back, with the owner's write bit (a staged file always has it: a copy left
    read-only by a kill mid-validation is then put right when it is validated again)."""
    for rel, mode in modes.items():
        path = root / rel
        if path.is_symlink():
            continue  # the validator put a link in its place (the check after says so): never chmod its target
        try:
            path.chmod(stat.S_IMODE(mode) | stat.S_IWUSR)
        except FileNotFoundError:
            pass  # the validator removed it: the check after says so


def _remove_beside(root: Path, tenant_id: int, files: list[str]) -> list[str]:
    """Remove what is in the tenant dir beside ``files`` (and their dirs); what was removed."""
    tenant = root / tenant_dir_name(tenant_id)
    keep_files = set(files)
    keep_dirs = {tenant_dir_name(tenant_id)} | {str(Path(rel).parent) for rel in files}
    removed = []
    for folder, dirs, names in os.walk(tenant, topdown=True):
        here = Path(folder)
        for name in sorted(names):
            rel = (here / name).relative_to(root).as_posix()
            if rel not in keep_files:
                (here / name).unlink()
                removed.append(rel)
        for name in sorted(dirs):
            rel = (here / name).relative_to(root).as_posix()
            path = here / name
            if path.is_symlink():
                path.unlink()
                removed.append(rel)
            elif rel not in keep_dirs:
                path.chmod(0o700)  # a dir the validator made read-only
                shutil.rmtree(path)
                removed.append(rel + "/")
        dirs[:] = [d for d in dirs if (here / d).exists()]
    return removed


def validate_copy(validation: Validation, root: Path, tenant_id: int, snapshot_id: str,
                  files: Mapping[str, str | None], what: str = "staged",
                  logger: logging.Logger | logging.LoggerAdapter | None = None) -> ValidationResult:
    """Run ``validation`` on the copy under ``root`` (which holds ``tenant_<id>/``) and keep the
    copy as it was: its ``files`` (paths relative to ``root``, each with the blake3 it must have,
    or None: hashed here first) read-only while it runs, hashed again after; anything left
    beside them removed (and named in the result). Returns the result when the copy passed;
    raises ValidationFailedError (or ValidationTimedOutError) when it did not,
    ValidatorChangedCopyError when the validator changed the files, both carrying the result;
    ValidationHookError when a hook cannot run. Its lines go to ``logger`` (by default, this
    module's, silent unless the application configures logging)."""
    logger = logger if logger is not None else _log
    expected = {rel: digest if digest is not None else hash_file(root / rel)[1] for rel, digest in files.items()}
    copy = RestoredCopy(data_dir=root, tenant_dir=root / tenant_dir_name(tenant_id), tenant_id=tenant_id,
                        snapshot_id=snapshot_id)
    modes = _read_only(root, list(expected))
    try:
        result = run_validation(validation, copy)
    finally:
        _writable_again(root, modes)
    if copy.tenant_dir.is_symlink() or not copy.tenant_dir.is_dir():  # nothing to tidy in: refused below
        raise ValidatorChangedCopyError(validation, result, root, snapshot_id,
                                        [f"{tenant_dir_name(tenant_id)} is no longer a directory"], what)
    result.removed = _remove_beside(root, tenant_id, list(expected))
    if result.removed:
        logger.warning("the validation left %s beside the %s copy's files in %s: removed",
                       ", ".join(result.removed), what, root)
    changed = []
    for rel, digest in expected.items():
        path = root / rel
        if path.is_symlink() or not path.is_file():
            changed.append(f"{rel} is gone" if not path.exists() else f"{rel} is no longer a file")
        elif hash_file(path)[1] != digest:
            changed.append(f"{rel} no longer has the snapshot's blake3")
    if changed:
        raise ValidatorChangedCopyError(validation, result, root, snapshot_id, changed, what)
    if result.status == "timed_out":
        raise ValidationTimedOutError(validation, result, root, snapshot_id, what)
    if result.status == "failed":
        raise ValidationFailedError(validation, result, root, snapshot_id, what)
    logger.info("the %s copy of snapshot %s passed the validation (%s) in %.2f s", what, snapshot_id,
                validation.describe(), result.seconds)
    return result


def validate_staged(plan: RestorePlan, data_dir: Path, validation: Validation) -> ValidationResult:
    """A restore's validation step: :func:`validate_copy` on its staged copy (in ``data_dir``'s
    staging dir), held to the plan's blake3s, before the commit moves anything."""
    return validate_copy(validation, staging_dir(data_dir), plan.tenant_id, plan.snapshot_id,
                         {item.destination: item.expected_checksum for item in plan.items}, "staged")
