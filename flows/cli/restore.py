"""The commands about one snapshot: ``snapshots`` (list them), ``restore``, ``verify``, ``abort``
(roll back an interrupted restore) and ``demo``; and how a restore stopped by a signal ends."""

from __future__ import annotations

import datetime
import json
import os
import shlex
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import typer

from memrestore.backends import list_snapshots, open_backend
from memrestore.flows.cli.common import (
    AsOfOpt,
    BackendOpt,
    JsonOpt,
    LimitRateOpt,
    MaxStreamsOpt,
    StreamsOpt,
    ValidateCallableOpt,
    ValidateCommandOpt,
    ValidateTimeoutOpt,
    VerboseOpt,
    as_of_instant,
    err,
    errors_as_messages,
    fail,
    out,
    validation_of,
    warn,
)
from memrestore.flows.cli.run_flow import importing_prefect, run_flow, running_flows
from memrestore.flows.cli.progress import progress_bar
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
    from memrestore.tasks.marker import read_marker
    from memrestore.tasks.dead_restores import mark_dead_run, what_is_left

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


#: Above this many snapshots, ``snapshots`` does not look up their sizes: a lookup per object (a
#: HEAD on S3, 32 at a time). Measured here (2 shared cores, SeaweedFS on loopback): 1,000
#: snapshots of 3 objects took 5.3-5.8 s of HEADs on S3 (the whole command 2.2-3.9 s before,
#: 6.4-15 s with them), 0.2-0.3 s of stats on a folder; 200 keep it near a second on S3, and a
#: tenant's own listing (``--tenant``) is far below it.
SIZE_LOOKUP_LIMIT = 200


def snapshots(
    backend: str = BackendOpt,
    tenant: Optional[int] = typer.Option(None, "--tenant", min=0, help="Only this tenant's snapshots."),
    as_of: Optional[str] = AsOfOpt,
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """List the finished snapshots in a backend, oldest first per tenant, each tenant's latest marked
    (with --as-of, those created at or before TIME, and the one a restore --as-of TIME takes)."""
    from memrestore.backends.listing import snapshot_sizes
    from memrestore.tasks import units
    from memrestore.tasks.choose import no_snapshot_message, snapshots_command

    moment, instant, note = as_of_instant(as_of) if as_of else (None, None, None)
    with errors_as_messages(verbose):
        store = open_backend(backend)
        listing = list_snapshots(store)
        manifests = listing.for_tenant(tenant) if tenant is not None else listing.snapshots
        if moment is not None:
            manifests = [m for m in manifests if m.created_at_unix_micros <= moment]
        tenants = [tenant] if tenant is not None else listing.tenant_ids()
        chosen = {e.snapshot_id for e in (listing.latest_entry(t, moment) for t in tenants) if e is not None}
        sized = len(manifests) <= SIZE_LOOKUP_LIMIT
        sizes = snapshot_sizes(store, manifests) if sized else {}
    for sid, why in sorted(listing.unreadable.items()):
        warn(f"skipped {sid}: {why}")
    if not sized:
        warn(f"sizes not looked up for {len(manifests):,} snapshots (above {SIZE_LOOKUP_LIMIT:,}: a lookup "
             "per object); pass --tenant N for a tenant's sizes")
    now = time.time()
    rows = [
        {
            "tenant_id": m.tenant_id,
            "snapshot_id": m.snapshot_id,
            "created_at_unix_micros": m.created_at_unix_micros,
            "created_at": _when(m.created_at_unix_micros),
            "age_seconds": round(now - m.created_at_unix_micros / 1e6, 3),
            "size_bytes": sizes.get(m.snapshot_id),
            "latest": m.snapshot_id in chosen,
            "embedding_models": m.embedding_models,
            "checksummed": m.sqlite_checkpoint_checksum is not None
            and all(e.checksum is not None for e in m.hnsw_snapshots),
            "label": m.label,
        }
        for m in manifests
    ]
    if as_json:
        print(json.dumps({"snapshots": rows, "unreadable": listing.unreadable, "as_of": instant,
                          "tenant_ids": listing.tenant_ids()}, indent=2))
        return
    if not rows:
        if tenant is not None:
            found = no_snapshot_message(store, listing, tenant, moment)
        elif moment is not None:
            found = (f"no finished snapshot in {store.url} was created at or before {instant}; list them "
                     f"all with {snapshots_command(store)}")
        else:
            found = f"no finished snapshots found in {store.url}"
        err.print(found, highlight=False, soft_wrap=True)
        return
    from rich.table import Table

    if note:
        err.print(f"{note}: the snapshots created at or before it", highlight=False, soft_wrap=True)
    marker = f"<- as of {instant}" if instant else "<- latest"
    table = Table("tenant", "snapshot", "created (UTC)", "age", "size", "models", "checksums", "label", "",
                  box=None)
    for r in rows:
        size = units.size(r["size_bytes"]) if sized and r["size_bytes"] is not None else (
            "MISSING" if sized else "-")
        table.add_row(str(r["tenant_id"]), r["snapshot_id"], r["created_at"], units.age(r["age_seconds"]), size,
                      ", ".join(r["embedding_models"]), "yes" if r["checksummed"] else "NO",
                      r["label"] or "", marker if r["latest"] else "")
    out.print(table)
    if sized and any(r["size_bytes"] is None for r in rows):
        warn("MISSING: an object of that snapshot cannot be found or read in the backend; a restore of it "
             f"would fail (`memrestore verify --backend {shlex.quote(store.url)} --snapshot ID` says which)")


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

    from memrestore.tasks import units
    from memrestore.tasks.marker import replaced_by
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


def _snapshot_choice(snapshot: Optional[str], as_of: Optional[str]) -> tuple[str, Optional[str], Optional[str]]:
    """``--snapshot`` and ``--as-of`` as the flow takes them: a snapshot id or ``latest``, and the
    UTC instant when a time was given (with its note for people). Refused (exit 2): neither, or a
    snapshot id with a time."""
    from memrestore.tasks.errors import SnapshotChoiceError

    if snapshot is None and as_of is None:
        raise typer.BadParameter("pass --snapshot ID (or latest), or --as-of TIME for the newest snapshot "
                                 "created at or before TIME", param_hint="'--snapshot'")
    if as_of is None:
        return snapshot, None, None  # type: ignore[return-value]
    if snapshot not in (None, "latest"):
        raise typer.BadParameter(str(SnapshotChoiceError(snapshot, as_of)), param_hint="'--as-of'")
    _, instant, note = as_of_instant(as_of)
    return "latest", instant, note


def restore(
    backend: str = BackendOpt,
    tenant: int = typer.Option(..., "--tenant", min=0, help="The tenant to restore."),
    snapshot: Optional[str] = typer.Option(
        None, "--snapshot", help="A snapshot id, or 'latest' (the default with --as-of)."),
    as_of: Optional[str] = AsOfOpt,
    data_dir: Path = typer.Option(..., "--data-dir", help="The destination service's data dir."),
    mode: RestoreMode = typer.Option(..., "--mode", help="What to do with what the data dir holds."),
    embedding_model: Optional[str] = typer.Option(
        None, "--embedding-model", help="The model the destination serves: the snapshot must hold its index "
        "(default: no model check). Every index is restored either way."),
    wire_version: str = typer.Option(
        "1.0", "--wire-version", callback=_wire_version, help="The destination's wire version, MAJOR.MINOR."),
    tombstone_floor: Optional[int] = typer.Option(
        None, "--tombstone-floor", min=0, help="The destination's forget horizon."),
    require_checksums: bool = typer.Option(
        False, "--require-checksums", help="Refuse a snapshot with any blob lacking a checksum."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the plan; write nothing."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted restore of this snapshot."),
    streams: Optional[int] = StreamsOpt,
    max_streams: int = MaxStreamsOpt,
    limit_rate: Optional[str] = LimitRateOpt,
    check: CheckLevel = typer.Option(
        CheckLevel.QUICK, "--check", help="Check the staged copy before the commit: quick (SQLite quick_check "
        "and the manifest's tables), full (integrity_check), or none."),
    validate_command: Optional[str] = ValidateCommandOpt,
    validate_callable: Optional[str] = ValidateCallableOpt,
    validate_timeout: Optional[float] = ValidateTimeoutOpt,
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
    snapshot, instant, note = _snapshot_choice(snapshot, as_of)
    validation = validation_of(validate_command, validate_callable, validate_timeout)
    if mode is RestoreMode.WIPE_AND_RESTORE and not (dry_run or resume or yes):
        _confirm_wipe(data_dir.absolute(), tenant)
    with running_flows(verbose):
        with importing_prefect():
            from memrestore.flows.restore import Destination, restore_snapshot
            from memrestore.tasks.restore import is_interrupt

        _handle_stop_signals()

        with _reporting_interrupts(data_dir.absolute(), is_interrupt, enabled=not dry_run), \
                progress_bar(err.is_terminal and not as_json and not dry_run):
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
                as_of=instant,
                validation=validation,
                max_streams=max_streams,
            ))
        _print_outcome(result, as_json)
        if note:
            err.print(f"{note}: snapshot {result['snapshot_id']} was tenant {tenant}'s newest created at or "
                      "before it", highlight=False, soft_wrap=True)


def verify(
    backend: str = BackendOpt,
    snapshot: str = typer.Option(..., "--snapshot", help="A snapshot id, or 'latest' (with --tenant)."),
    tenant: Optional[int] = typer.Option(
        None, "--tenant", min=0, help="The tenant of 'latest'; with an id, checked to be its owner."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Download and hash every blob of a snapshot, writing nothing."""
    if snapshot == "latest" and tenant is None:
        raise typer.BadParameter("'latest' is a tenant's newest snapshot: pass --tenant N too, or a "
                                 "snapshot id", param_hint="'--tenant'")
    if tenant is not None:  # which snapshot, found before a flow runs (no Prefect needed for it)
        from memrestore.tasks.choose import fetch_manifest

        with errors_as_messages(verbose):
            snapshot = fetch_manifest(open_backend(backend), tenant, snapshot).snapshot_id
    with running_flows(verbose):
        with importing_prefect():
            from memrestore.flows.restore import verify_snapshot

        with progress_bar(err.is_terminal and not as_json):
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
            from memrestore.flows.cli.demo import run_demo

        ran = run_flow(run_demo(workdir.absolute(), log=err.print))
        _print_outcome(ran.outcome, as_json)
    (err if as_json else out).print(_next_steps(ran), highlight=False, soft_wrap=True)


def _from_here(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it (``.demo/data-as-of``)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _program() -> str:
    """How this command was invoked, for commands to paste: ``.venv/bin/memrestore`` after
    ``make demo``, else ``memrestore``."""
    argv0 = Path(sys.argv[0])
    return _from_here(argv0.absolute()) if argv0.name == "memrestore" else "memrestore"


def _next_steps(ran) -> str:
    """What ``demo`` ends with: its run in the UI, and the commands to try next."""
    me, backend = _program(), shlex.quote(ran.backend_url)
    lines = []
    if ran.run_url:
        lines += ["", f"this restore in the Prefect UI: {ran.run_url}"]
    lines += [
        "",
        "try next:",
        f"  {me} snapshots --backend {backend}",
        "      # each snapshot with its size and age, each tenant's latest marked",
        f"  {me} restore --backend {backend} --tenant 1 --as-of {ran.between} \\",
        f"      --data-dir {shlex.quote(_from_here(ran.next_data_dir))} --mode new_cluster",
        "      # tenant 1 as it was at that time: its older snapshot, t1-older",
        f"  {me} verify --backend {backend} --snapshot latest --tenant 2",
        "      # download and hash tenant 2's latest, writing nothing",
        f"  {me} server status",
        "      # the local Prefect server these commands share (its UI lists every run)",
    ]
    return "\n".join(lines)
