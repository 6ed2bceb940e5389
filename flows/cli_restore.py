"""The commands about one snapshot: ``snapshots`` (list them), ``restore``, ``verify``, ``abort``
(roll back an interrupted restore) and ``demo``; and how a restore stopped by a signal ends."""

from __future__ import annotations

import datetime
import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from memrestore.backends import list_snapshots, open_backend
from memrestore.flows.cli_common import (
    BackendOpt,
    JsonOpt,
    LimitRateOpt,
    StreamsOpt,
    VerboseOpt,
    err,
    errors_as_messages,
    fail,
    out,
    warn,
)
from memrestore.flows.cli_flows import importing_prefect, run_flow, running_flows
from memrestore.flows.cli_progress import _progress_bar
from memrestore.tasks.modes import CheckLevel, RestoreMode

_SIGNALLED: list[int] = []


def _stop_on_signal(signum: int, frame: Any) -> None:
    """SIGINT and SIGTERM: the staging threads stop at their next chunk, the main thread unwinds
    (KeyboardInterrupt), and the restore's marker keeps its phase for --resume or abort."""
    from memrestore.tasks.interrupt import request_stop

    _SIGNALLED.append(signum)
    request_stop()
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def _handle_stop_signals() -> None:
    signal.signal(signal.SIGINT, _stop_on_signal)
    signal.signal(signal.SIGTERM, _stop_on_signal)


def _interrupted(data_dir: Path) -> None:
    """After a signal stopped a restore: its run's Crashed state and one message say what the
    data dir holds and how to go on; exit 128 + the signal's number."""
    from memrestore.tasks.layout import read_marker
    from memrestore.tasks.orphans import mark_dead_run, what_is_left

    signum = _SIGNALLED[-1] if _SIGNALLED else signal.SIGINT
    name = signal.Signals(signum).name
    info = read_marker(data_dir)
    if info is None or info.pid != os.getpid():
        fail(f"stopped by {name} before the restore took its marker: nothing in {data_dir} was changed",
             code=128 + signum)
    mark_dead_run(data_dir, info, "interrupted")
    fail(f"stopped by {name}. {what_is_left(data_dir, info)}.", code=128 + signum)


@contextmanager
def _reporting_interrupts(data_dir: Path, is_interrupt, enabled: bool) -> Iterator[None]:
    """A restore stopped by a signal ends with :func:`_interrupted`'s report."""
    try:
        yield
    except BaseException as exc:
        if enabled and is_interrupt(exc):
            _interrupted(data_dir)
        raise


def _when(micros: int) -> str:
    return datetime.datetime.fromtimestamp(micros / 1e6, datetime.timezone.utc).isoformat(timespec="seconds")


def _print_outcome(result: dict, as_json: bool) -> None:
    from memrestore.tasks.outcome import RestoreOutcome, human_summary

    outcome = RestoreOutcome.model_validate(result)
    for warning in outcome.warnings:
        warn(warning)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        out.print(human_summary(outcome), highlight=False, soft_wrap=True)


def snapshots(
    backend: str = BackendOpt,
    tenant: Optional[int] = typer.Option(None, "--tenant", min=0, help="Only this tenant's snapshots."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """List the finished snapshots in a backend, oldest first per tenant."""
    with errors_as_messages(verbose):
        listing = list_snapshots(open_backend(backend), tenant)
    for sid, why in sorted(listing.unreadable.items()):
        warn(f"skipped {sid}: {why}")
    rows = [
        {
            "tenant_id": m.tenant_id,
            "snapshot_id": m.snapshot_id,
            "created_at_unix_micros": m.created_at_unix_micros,
            "created_at": _when(m.created_at_unix_micros),
            "embedding_models": m.embedding_models,
            "checksummed": m.sqlite_checkpoint_checksum is not None
            and all(e.checksum is not None for e in m.hnsw_snapshots),
            "label": m.label,
        }
        for m in listing.snapshots
    ]
    if as_json:
        print(json.dumps({"snapshots": rows, "unreadable": listing.unreadable}, indent=2))
        return
    if not rows:
        err.print("no finished snapshots found", highlight=False)
        return
    from rich.table import Table

    table = Table("tenant", "snapshot", "created (UTC)", "models", "checksums", "label", box=None)
    for r in rows:
        table.add_row(str(r["tenant_id"]), r["snapshot_id"], r["created_at"],
                      ", ".join(r["embedding_models"]), "yes" if r["checksummed"] else "NO",
                      r["label"] or "")
    out.print(table)


def _wire_version(value: str) -> str:
    from memrestore.backends.manifest import WireVersion

    try:
        return str(WireVersion.parse(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _confirm_wipe(data_dir: Path, tenant: int) -> None:
    """On a terminal, before a wipe_and_restore: list what it will delete (every entry of the data
    dir, each tenant with its id and size) and ask. A script (no terminal) is not asked: choosing
    the mode is its yes, as in the service's own restore. A no changes nothing and exits 1."""
    import re
    import sys

    from memrestore.tasks import units
    from memrestore.tasks.layout import replaced_by
    from memrestore.tasks.modes import RestoreMode

    if not (sys.stdin.isatty() and err.is_terminal):
        return
    going = replaced_by(data_dir, tenant, RestoreMode.WIPE_AND_RESTORE)
    if not going:
        return
    from rich.table import Table

    table = Table("entry", "tenant", "size", box=None)
    for name, size in going:
        match = re.fullmatch(r"tenant_(\d+)", name)
        table.add_row(name, match.group(1) if match else "-", units.size(size))
    others = [n for n, _ in going if n != f"tenant_{tenant}"]
    err.print(f"wipe_and_restore deletes everything in {data_dir} and leaves only tenant {tenant}'s "
              f"restored snapshot: {len(going)} entries, {units.size(sum(s for _, s in going))}:",
              highlight=False, soft_wrap=True)
    err.print(table)
    if others:
        err.print(f"To replace tenant {tenant} only and keep the other {len(others)} entries, answer no and "
                  "use --mode replace_tenant.", highlight=False, soft_wrap=True)
    if not typer.confirm(f"Delete these {len(going)} entries and restore tenant {tenant}?", default=False,
                         err=True):
        fail(f"not confirmed: nothing in {data_dir} was changed", code=1)


def restore(
    backend: str = BackendOpt,
    tenant: int = typer.Option(..., "--tenant", min=0, help="The tenant to restore."),
    snapshot: str = typer.Option(..., "--snapshot", help="A snapshot id, or 'latest'."),
    data_dir: Path = typer.Option(..., "--data-dir", help="The destination service's data dir."),
    mode: RestoreMode = typer.Option(..., "--mode", help="What to do with what the data dir holds."),
    embedding_model: Optional[str] = typer.Option(
        None, "--embedding-model", help="The model the destination serves (default: the snapshot's only one)."),
    wire_version: str = typer.Option(
        "1.0", "--wire-version", callback=_wire_version, help="The destination's wire version, MAJOR.MINOR."),
    tombstone_floor: Optional[int] = typer.Option(
        None, "--tombstone-floor", min=0, help="The destination's forget horizon."),
    require_checksums: bool = typer.Option(
        False, "--require-checksums", help="Refuse a snapshot with any blob lacking a checksum."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the plan; write nothing."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted restore of this snapshot."),
    streams: int = StreamsOpt,
    limit_rate: Optional[str] = LimitRateOpt,
    check: CheckLevel = typer.Option(
        CheckLevel.QUICK, "--check", help="Check the staged copy before the commit: quick (SQLite quick_check "
        "and the manifest's tables), full (integrity_check), or none."),
    yes: bool = typer.Option(
        False, "--yes", "-y", help="Do not ask before wipe_and_restore deletes what the data dir holds (only a "
        "terminal is asked)."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Restore a tenant's snapshot into a data dir, through the restore-snapshot flow.

    Modes: new_cluster (an empty or absent data dir), single_tenant (add the tenant; its dir must
    be empty or absent), replace_tenant (replace the tenant's dir; every other entry untouched),
    wipe_and_restore (delete everything in the data dir; on a terminal, asks first).
    """
    if mode is RestoreMode.WIPE_AND_RESTORE and not (dry_run or resume or yes):
        _confirm_wipe(data_dir.absolute(), tenant)
    with running_flows(verbose):
        with importing_prefect():
            from memrestore.flows.restore import Destination, restore_snapshot
            from memrestore.tasks.sequence import is_interrupt

        _handle_stop_signals()

        with _reporting_interrupts(data_dir.absolute(), is_interrupt, enabled=not dry_run), \
                _progress_bar(err.is_terminal and not as_json and not dry_run):
            result = run_flow(restore_snapshot(
                backend=backend,
                tenant_id=tenant,
                data_dir=str(data_dir.absolute()),
                mode=mode,
                snapshot=snapshot,
                destination=Destination(
                    wire_version=wire_version,
                    tombstone_floor=tombstone_floor,
                    embedding_model=embedding_model,
                ),
                require_checksums=require_checksums,
                dry_run=dry_run,
                resume=resume,
                streams=streams,
                limit_rate=limit_rate,
                check=check,
            ))
        _print_outcome(result, as_json)


def verify(
    backend: str = BackendOpt,
    snapshot: str = typer.Option(..., "--snapshot", help="The snapshot id."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Download and hash every blob of a snapshot, writing nothing."""
    with running_flows(verbose):
        with importing_prefect():
            from memrestore.flows.restore import verify_snapshot

        with _progress_bar(err.is_terminal and not as_json):
            result = run_flow(verify_snapshot(backend=backend, snapshot=snapshot))
        _print_outcome(result, as_json)


def abort(
    data_dir: Path = typer.Option(..., "--data-dir", help="The data dir holding an interrupted restore."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Roll back an interrupted restore: the previous contents stay or are put back."""
    with running_flows(verbose):
        with importing_prefect():
            from memrestore.flows.restore import abort_restore
            from memrestore.tasks.errors import NothingToAbortError

        try:
            result = run_flow(abort_restore(data_dir=str(data_dir.absolute())))
        except NothingToAbortError as exc:
            err.print(f"{exc}; nothing to do", highlight=False, soft_wrap=True)
            return
        if as_json:
            print(json.dumps(result, indent=2))
        else:
            out.print(
                f"rolled back the interrupted restore of snapshot {result['snapshot_id']} (tenant "
                f"{result['tenant_id']}, {result['mode']}, phase {result['phase']}) in "
                f"{result['data_dir']}: its previous contents are in place and the marker is gone",
                highlight=False, soft_wrap=True,
            )


def demo(
    workdir: Path = typer.Option(Path(".demo"), "--workdir", help="Where the demo's backend and data dir go."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Build sample snapshots in a local folder backend and restore one through the flow."""
    with running_flows(verbose):
        with importing_prefect():
            from memrestore.flows.demo import run_demo

        result = run_flow(run_demo(workdir.absolute(), log=err.print))
        _print_outcome(result, as_json)
