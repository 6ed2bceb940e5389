"""The operator's own validation of a restored copy (issue 21, "Validation of their own";
tasks/validation.py): a command and a Python callable, run as real processes, that pass, fail,
hang past their limit and are missing, in a restore (on the staged copy, before the commit: a
failure leaves the data dir exactly as it was, in every mode) and in a drill (the tenant fails and
the walk-back applies; the report has the result, seconds and output). A validator that writes
into the copy, or leaves files beside it, gets neither into the data dir.

Most restores and drills here take the plain path (tests/restorekit.py: tasks/restore.py and
tasks/drill.py as plain calls); one restore goes through the restore-snapshot flow on a real Prefect API, and the command line is
run as a subprocess for a restore, a drill and a usage error.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import time
from pathlib import Path

import pytest

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.tasks.drill_report import summary_markdown, table_rows
from memrestore.tasks.errors import (
    ValidationFailedError,
    ValidationHookError,
    ValidationTimedOutError,
    ValidatorChangedCopyError,
)
from memrestore.tasks.marker import MARKER_NAME
from memrestore.tasks.plan import DestinationState, RestoreMode
from memrestore.tasks.validate import validate
from memrestore.tasks.validation import Validation
from tests.conftest import tree
from tests.layout import assert_restored_layout, data_dir_for
from tests.procs import memrestore
from memrestore.tasks.drill import drill_plain
from tests.restorekit import execute

TENANT = 4
ONE_MODEL = (("minilm", 384),)
#: A hanging command's limit, and a hanging Python validator's: long enough for the process to
#: start and print on a loaded machine (a hang is a sleep of minutes, past any limit), short
#: enough to keep the tests quick.
HANG_LIMIT = 1.0
PYTHON_HANG_LIMIT = 3.0

#: The operator's Python validators, importable by the validation's own process (PYTHONPATH).
VALIDATORS = '''
import os, sqlite3, time
from memrestore.tasks.validators import open_read_only


def passes(copy):
    db = open_read_only(copy.sqlite_path)
    try:
        n = db.execute("SELECT count(*) FROM memories").fetchone()[0]
    finally:
        db.close()
    print(f"tenant {copy.tenant_id}: {n} memories served from {copy.data_dir}")


def fails(copy):
    print(f"looking at snapshot {copy.snapshot_id}")
    return f"snapshot {copy.snapshot_id} lacks the service's recall index"


def raises(copy):
    raise RuntimeError("the service's schema check found version 0")


def fails_for_newest(copy):
    print(f"checked {copy.snapshot_id}")
    if copy.snapshot_id == "newest":
        return "the newest snapshot is not servable"


def hangs(copy):
    print("opening the copy", flush=True)
    time.sleep(600)


def writes(copy):
    """A careless validator: it makes the file writable again and writes a row."""
    os.chmod(copy.sqlite_path, 0o644)
    db = sqlite3.connect(copy.sqlite_path)
    db.execute("INSERT INTO memories VALUES (999999, 'written by the validator', 1)")
    db.commit()
    db.close()


def links_away(copy):
    """A validator that swaps the tenant dir for a link to another dir, which holds a file."""
    elsewhere = copy.data_dir.parent.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    (elsewhere / "precious").write_text("not the validator's to lose")
    copy.tenant_dir.rename(copy.data_dir / "moved-aside")
    copy.tenant_dir.symlink_to(elsewhere)


def leaves_files(copy):
    """What a service's plain open and its runtime leave behind, while the copy's bytes stay."""
    (copy.tenant_dir / "data.sqlite-wal").write_bytes(b"wal frames")
    (copy.tenant_dir / "data.sqlite-shm").write_bytes(b"shm")
    (copy.tenant_dir / "service.lock").write_text(str(os.getpid()))
    (copy.tenant_dir / "hnsw" / "cache").mkdir()
    (copy.tenant_dir / "hnsw" / "cache" / "warm.bin").write_bytes(b"1" * 100)
'''


@pytest.fixture(scope="module")
def hooks(tmp_path_factory) -> Path:
    """A folder with the validators module and the command scripts."""
    folder = tmp_path_factory.mktemp("hooks")
    (folder / "validators_under_test.py").write_text(VALIDATORS)
    scripts = {
        "passes.sh": 'test -s "$1" && echo "checked $1 of tenant $2"',
        "fails.sh": 'echo "the service refuses tenant $2 ($MEMRESTORE_SNAPSHOT_ID)"; exit 3',
        # A grandchild in the validator's process group, to be killed with it.
        "hangs.sh": f'sleep 600 & echo $! > {folder}/grandchild.pid; echo "started the service"; wait',
        "mode.sh": 'stat -c %a "$1"',
    }
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/sh\n" + body + "\n")
        (folder / name).chmod(0o755)
    (folder / "not-executable.sh").write_text("#!/bin/sh\nexit 0\n")
    return folder


@pytest.fixture(autouse=True)
def importable(hooks, monkeypatch):
    """The validators module is importable by the validation's process (and by the CLI's)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")])))


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def command(hooks: Path, script: str, template: str = "{sqlite_path} {tenant_id}", **limit) -> Validation:
    return Validation(command=f"{hooks / script} {template}", **limit)


def callable_(name: str, **limit) -> Validation:
    return Validation(callable=f"validators_under_test:{name}", **limit)


@pytest.fixture
def snapshot(tmp_path):
    backend = LocalBackend(tmp_path / "backend")
    manifest = write_sample_snapshot(backend, tenant_id=TENANT, snapshot_id="snap-4", models=ONE_MODEL)
    return backend, manifest


def restore(backend, manifest, data_dir: Path, mode=RestoreMode.NEW_CLUSTER, validation=None):
    plan = validate(manifest, DestinationState(), backend.url)
    return execute(backend, plan, data_dir, mode, validation=validation)


# -- a restore --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["command", "callable", "both"])
def test_a_validation_that_passes_lets_the_restore_commit(tmp_path, hooks, snapshot, kind):
    backend, manifest = snapshot
    validation = {"command": command(hooks, "passes.sh"), "callable": callable_("passes"),
                  "both": Validation(command=command(hooks, "passes.sh").command,
                                     callable=callable_("passes").callable)}
    outcome = restore(backend, manifest, tmp_path / "data", validation=validation[kind])
    assert outcome.status == "restored"
    assert_restored_layout(tmp_path / "data", manifest)


def test_the_copy_is_read_only_while_the_validator_runs_and_writable_after(tmp_path, hooks, snapshot):
    backend, manifest = snapshot
    # A failing command shows what it saw in the refusal: the staged file's mode then.
    shows_mode = Validation(command=f"sh -c '{hooks / 'mode.sh'} \"$0\"; exit 1' {{sqlite_path}}")
    with pytest.raises(ValidationFailedError) as refused:
        restore(backend, manifest, tmp_path / "refused", validation=shows_mode)
    assert refused.value.result.output == "444"
    restore(backend, manifest, tmp_path / "data", validation=command(hooks, "mode.sh", "{sqlite_path}"))
    restored = tmp_path / "data" / f"tenant_{TENANT}" / "data.sqlite"
    assert stat.S_IMODE(restored.stat().st_mode) & 0o200, "the restored file is left read-only"


FAILURES = {
    "command fails": (lambda hooks: command(hooks, "fails.sh"), ValidationFailedError,
                      "exited with status 3", f"the service refuses tenant {TENANT} (snap-4)"),
    "callable fails": (lambda hooks: callable_("fails"), ValidationFailedError,
                       "callable validators_under_test:fails failed: snapshot snap-4 lacks the service's recall index",
                       "looking at snapshot snap-4"),
    "command hangs": (lambda hooks: command(hooks, "hangs.sh", timeout_seconds=HANG_LIMIT), ValidationTimedOutError,
                      f"ran past its {HANG_LIMIT:g} s limit (--validate-timeout) and was killed",
                      "started the service"),
    "callable hangs": (lambda hooks: callable_("hangs", timeout_seconds=PYTHON_HANG_LIMIT), ValidationTimedOutError,
                       f"ran past its {PYTHON_HANG_LIMIT:g} s limit", "opening the copy"),
}
#: Every failure in every mode, but a Python validator's hang (seconds each) in one mode: where a
#: failure happens does not depend on the hook's kind.
FAILURE_CASES = [pytest.param(mode, failure, id=f"{mode.value}-{failure}") for mode in RestoreMode
                 for failure in FAILURES if failure != "callable hangs" or mode is RestoreMode.REPLACE_TENANT]


@pytest.mark.parametrize("mode, failure", FAILURE_CASES)
def test_a_copy_that_fails_the_validation_is_refused_with_the_data_dir_as_it_was(tmp_path, hooks, snapshot, mode,
                                                                                 failure):
    backend, manifest = snapshot
    make, error, reason, output = FAILURES[failure]
    data_dir = data_dir_for(mode, tmp_path, TENANT)
    before = tree(data_dir)
    started = time.monotonic()
    with pytest.raises(error) as refused:
        restore(backend, manifest, data_dir, mode, make(hooks))
    assert time.monotonic() - started < 30
    assert tree(data_dir) == before  # nothing moved, nothing staged left
    assert not (data_dir / MARKER_NAME).exists()
    message = str(refused.value)
    assert reason in message and output in message, message
    assert "restore an older snapshot" in message or "Raise --validate-timeout" in message
    result = refused.value.result
    assert result.status == ("timed_out" if error is ValidationTimedOutError else "failed")
    assert output in result.output and result.seconds >= 0
    if failure == "command hangs":  # the validator's whole process group was killed, its grandchild too
        grandchild = int((hooks / "grandchild.pid").read_text())
        assert not alive(grandchild), f"the validator's grandchild {grandchild} outlived it"


MISSING = {
    "not found": (lambda hooks: Validation(command=f"{hooks}/no-such-check.sh {{data_dir}}"), "does not exist"),
    "not on PATH": (lambda hooks: Validation(command="memory-service-selfcheck {data_dir}"), "not a command on PATH"),
    "not executable": (lambda hooks: Validation(command=f"{hooks}/not-executable.sh {{data_dir}}"),
                       "is not executable (-rw-r--r--)"),
    "bad placeholder": (lambda hooks: command(hooks, "passes.sh", "{data_directory}"),
                        "names {data_directory}, which is not a placeholder"),
    "module missing": (lambda hooks: Validation(callable="no_such_module:check"),
                       "importing no_such_module raised ModuleNotFoundError"),
    "function missing": (lambda hooks: callable_("no_such_function"),
                         "has no function no_such_function"),
    "misspelled": (lambda hooks: Validation(callable="validators_under_test.fails"), "is not package.module:function"),
}


@pytest.mark.parametrize("missing", list(MISSING))
def test_a_hook_that_cannot_run_is_refused_before_anything_is_fetched(tmp_path, hooks, snapshot, missing):
    backend, manifest = snapshot
    make, said = MISSING[missing]
    with pytest.raises(ValidationHookError, match=said.replace("(", r"\(").replace(")", r"\)")):
        restore(backend, manifest, tmp_path / "data", validation=make(hooks))
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("mode, validator, said", [
    (RestoreMode.REPLACE_TENANT, "writes", f"tenant_{TENANT}/data.sqlite no longer has the snapshot's blake3"),
    (RestoreMode.WIPE_AND_RESTORE, "writes", f"tenant_{TENANT}/data.sqlite no longer has the snapshot's blake3"),
    (RestoreMode.NEW_CLUSTER, "links_away", f"tenant_{TENANT} is no longer a directory"),
], ids=["replace_tenant-writes", "wipe_and_restore-writes", "new_cluster-links_away"])
def test_a_validator_that_changes_the_staged_copy_is_refused(tmp_path, snapshot, mode, validator, said):
    backend, manifest = snapshot
    data_dir = data_dir_for(mode, tmp_path, TENANT)
    before = tree(data_dir)
    with pytest.raises(ValidatorChangedCopyError, match=said):
        restore(backend, manifest, data_dir, mode, callable_(validator))
    assert tree(data_dir) == before and not (data_dir / MARKER_NAME).exists()
    if validator == "links_away":  # nothing was tidied away through the link
        assert (tmp_path / "elsewhere" / "precious").read_text() == "not the validator's to lose"


def test_what_a_validator_leaves_beside_the_copy_never_reaches_the_data_dir(tmp_path, snapshot, caplog):
    backend, manifest = snapshot
    data_dir = data_dir_for(RestoreMode.REPLACE_TENANT, tmp_path, TENANT)
    caplog.set_level("WARNING", logger="memrestore.tasks.validation")
    outcome = restore(backend, manifest, data_dir, RestoreMode.REPLACE_TENANT, callable_("leaves_files"))
    assert_restored_layout(data_dir, manifest)  # exactly the snapshot's files, each with its blake3
    warned = "\n".join(r.getMessage() for r in caplog.records)
    assert outcome.validation.status == "passed"
    for left in ("data.sqlite-wal", "data.sqlite-shm", "service.lock", "hnsw/cache/"):
        assert f"tenant_{TENANT}/{left}" in outcome.validation.removed, outcome.validation.removed  # said in the outcome
        assert f"tenant_{TENANT}/{left}" in warned, warned  # and in the log


# -- a drill ------------------------------------------------------------------------------------


@pytest.fixture
def two_generations(tmp_path):
    """Tenant 4 with an older snapshot and a newer one, 2 and 1 hours old."""
    backend = LocalBackend(tmp_path / "backend")
    now = time.time()
    for sid, hours in (("older", 2), ("newest", 1)):
        write_sample_snapshot(backend, tenant_id=TENANT, snapshot_id=sid, models=ONE_MODEL,
                              created_at_unix_micros=int((now - hours * 3600) * 1e6))
    return backend, now


def test_in_a_drill_a_failed_validation_fails_the_tenant_and_the_walk_back_finds_the_last_good(
        tmp_path, two_generations):
    backend, now = two_generations
    report = drill_plain(backend, [TENANT], scratch_dir=tmp_path / "scratch", now=now,
                         validation=callable_("fails_for_newest"))
    [result] = report.tenants
    assert result.status == "failed" and result.snapshot_id == "newest"
    assert result.last_good_snapshot_id == "older"
    assert "fails the operator's validation: callable validators_under_test:fails_for_newest failed: " \
           "the newest snapshot is not servable" in result.reason
    assert "scratch copy since deleted" in result.reason and str(tmp_path / "scratch") not in result.reason
    assert result.validation.status == "failed" and result.validation.output == "checked newest"
    [row] = table_rows(report)
    assert row["validation"].startswith("failed in ")
    summary = summary_markdown(report, backend.url, now, None)
    assert "the validation's output (failed in" in summary and "    checked newest" in summary
    assert list((tmp_path / "scratch").iterdir()) == []


def test_in_a_drill_a_passing_validation_is_reported_with_its_output(tmp_path, hooks, two_generations):
    backend, now = two_generations
    both = Validation(command=command(hooks, "passes.sh").command, callable=callable_("passes").callable)
    report = drill_plain(backend, [TENANT], scratch_dir=tmp_path / "scratch", now=now, validation=both)
    [result] = report.tenants
    assert result.status == "ok", result.reason
    assert result.validation.status == "passed"
    assert f"checked {tmp_path / 'scratch'}/tenant-{TENANT}-newest-" in result.validation.output  # a scratch copy
    assert "--- $ " in result.validation.output
    assert "--- callable validators_under_test:passes" in result.validation.output
    assert f"tenant {TENANT}: 100 memories served from" in result.validation.output
    assert table_rows(report)[0]["validation"].startswith("passed in ")
    # --json's tenants carry it too, raw.
    [tenant] = json.loads(report.model_dump_json())["tenants"]
    assert tenant["validation"]["status"] == "passed" and tenant["validation"]["seconds"] > 0


def test_in_a_drill_a_hanging_validation_times_out_and_a_missing_one_is_refused(tmp_path, hooks, two_generations):
    backend, now = two_generations
    report = drill_plain(backend, [TENANT], scratch_dir=tmp_path / "scratch", now=now,
                         validation=command(hooks, "hangs.sh", timeout_seconds=HANG_LIMIT))
    [result] = report.tenants
    assert result.status == "failed" and result.last_good_snapshot_id is None
    assert result.validation.status == "timed_out" and result.validation.output == "started the service"
    assert "Raise --validate-timeout" in result.reason and "no snapshot of tenant 4 restores cleanly" in result.reason
    assert table_rows(report)[0]["validation"].startswith("timed out after ")

    with pytest.raises(ValidationHookError, match="importing no_such_module"):
        drill_plain(backend, [TENANT], scratch_dir=tmp_path / "scratch2", now=now,
                    validation=Validation(callable="no_such_module:check"))
    assert not (tmp_path / "scratch2").exists()


def test_in_a_drill_a_validator_that_writes_into_the_copy_fails_the_tenant(tmp_path, two_generations):
    backend, now = two_generations
    report = drill_plain(backend, [TENANT], scratch_dir=tmp_path / "scratch", now=now, validation=callable_("writes"))
    [result] = report.tenants
    assert result.status == "failed" and "changed the restored copy of snapshot 'newest'" in result.reason


# -- through the flow and the command line --------------------------------------------------------


def test_the_restore_flow_refuses_a_copy_that_fails_the_validation(tmp_path, hooks, snapshot, prefect_api):
    from memrestore.flows.restore import restore_snapshot

    backend, manifest = snapshot
    data_dir = data_dir_for(RestoreMode.REPLACE_TENANT, tmp_path, TENANT)
    before = tree(data_dir)
    state = asyncio.run(restore_snapshot(
        backend=backend.url, tenant_id=TENANT, data_dir=str(data_dir), mode=RestoreMode.REPLACE_TENANT,
        validation=callable_("raises"), return_state=True))
    assert state.is_failed()
    with pytest.raises(ValidationFailedError, match="raised RuntimeError: the service's schema check found version 0"):
        state.result()
    assert "restore an older snapshot" in state.message
    assert tree(data_dir) == before
    # A validation that passes, through the flow from the UI's form: tests/test_ui_restore.py.


def test_the_command_line_takes_the_validation_flags(tmp_path, hooks, two_generations, prefect_api):
    backend, _ = two_generations
    data_dir = data_dir_for(RestoreMode.WIPE_AND_RESTORE, tmp_path, TENANT)
    before = tree(data_dir)
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]}
    refused = memrestore("restore", "--backend", backend.url, "--tenant", TENANT, "--snapshot", "latest",
                         "--data-dir", data_dir, "--mode", "wipe_and_restore", "--validate-command",
                         f"{hooks / 'fails.sh'} {{sqlite_path}} {{tenant_id}}", env=env)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith("error: the staged copy of snapshot 'newest'"), refused.stderr
    assert "exited with status 3" in refused.stderr and "Traceback" not in refused.stderr
    assert tree(data_dir) == before

    restored = memrestore("restore", "--backend", backend.url, "--tenant", TENANT, "--snapshot", "older",
                          "--data-dir", tmp_path / "fresh", "--mode", "new_cluster", "--validate-callable",
                          "validators_under_test:passes", env=env)
    assert restored.returncode == 0, restored.stderr
    assert ("staged copy validated before the commit: callable validators_under_test:passes passed"
            in restored.stdout), restored.stdout

    drilled = memrestore("drill", "--backend", backend.url, "--scratch-dir", tmp_path / "scratch",
                         "--validate-callable", "validators_under_test:fails_for_newest", "--validate-timeout", "60",
                         env=env)
    assert drilled.returncode == 1, drilled.stderr
    header, row = drilled.stdout.splitlines()[:2]
    assert header.split()[-1] == "validation" and "failed in" in row and "older" in row, drilled.stdout
    assert "the validation's output (failed in" in drilled.stdout and "    checked newest" in drilled.stdout


def test_serve_puts_the_validation_into_both_deployments():
    """``memrestore serve --validate-...``: the nightly drill's parameter, the on-demand form's default."""
    from memrestore.flows.ops.serve import nightly_deployment, on_demand_deployment

    example = Validation(callable="memrestore.tasks.validators:commit_log_readable", timeout_seconds=60)
    given = {"callable": "memrestore.tasks.validators:commit_log_readable", "timeout_seconds": 60.0}
    assert nightly_deployment("file:///srv/backups", validation=example).parameters["validation"] == given
    on_demand = on_demand_deployment("file:///srv/backups", example)
    assert on_demand.parameters == {"backend": "file:///srv/backups", "validation": given}
    assert "validation" not in nightly_deployment("file:///srv/backups").parameters


def test_a_template_that_cannot_work_is_a_usage_error(tmp_path):
    bad = memrestore("restore", "--backend", tmp_path, "--tenant", TENANT, "--snapshot", "latest", "--data-dir",
                     tmp_path / "data", "--mode", "new_cluster", "--validate-command", "check {tenant}")
    assert bad.returncode == 2 and "names {tenant}, which is not a placeholder" in bad.stderr, bad.stderr
    alone = memrestore("drill", "--backend", tmp_path, "--validate-timeout", "5")
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", alone.stderr).split())  # typer's box around a usage error
    assert alone.returncode == 2 and "only with --validate-command or --validate-callable" in said, alone.stderr


def test_the_example_validator_reads_the_copy_as_a_service_would(tmp_path, snapshot):
    backend, manifest = snapshot
    data_dir = data_dir_for(RestoreMode.SINGLE_TENANT, tmp_path, TENANT)
    outcome = restore(backend, manifest, data_dir, RestoreMode.SINGLE_TENANT,
                      Validation(callable="memrestore.tasks.validators:commit_log_readable"))
    assert outcome.status == "restored"
    assert_restored_layout(data_dir, manifest)


KILLED_MID_VALIDATION = """
import sys
from pathlib import Path
from memrestore.tasks.validation import Validation, run_validation
from memrestore.tasks.validators import RestoredCopy

root = Path(sys.argv[1])
run_validation(Validation(command=sys.argv[2]), RestoredCopy(root, root / "tenant_4", 4, "snap-4"))
"""


@pytest.mark.parametrize("kind", ["command", "callable"])
def test_a_memrestore_killed_mid_validation_leaves_no_validator_running(tmp_path, kind):
    """The validator runs in a session of its own (so that its whole group can be killed), which a
    SIGKILL of memrestore would not reach: it dies with memrestore all the same."""
    import signal
    import subprocess
    import sys

    from tests.procs import wait_until

    pid_file = tmp_path / "validator.pid"
    (tmp_path / "tenant_4").mkdir()
    template = f"sh -c 'echo $$ > {pid_file}; exec sleep 600'"
    if kind == "callable":  # the same, as a Python validator's process
        (tmp_path / "sleeper.py").write_text(
            f"import os, time\ndef check(copy):\n    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
            "    time.sleep(600)\n")
    code = KILLED_MID_VALIDATION if kind == "command" else KILLED_MID_VALIDATION.replace(
        "Validation(command=sys.argv[2])", "Validation(callable='sleeper:check')")
    restoring = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), template], cwd=tmp_path)
    try:
        validator = wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 60,
                               "the validator to start")
        restoring.send_signal(signal.SIGKILL)
        restoring.wait(10)
        wait_until(lambda: not alive(int(validator)), 10, f"the validator {validator} to die with memrestore")
    finally:
        restoring.kill()
        restoring.wait()
