"""Restores whose process died: what their data dir holds, and their flow runs marked Crashed.

A restore killed with SIGKILL (the OOM killer, a closed terminal's supervisor) cannot report its
own end: its flow run would stay Running in the Prefect UI for ever. Its marker records the run
(``flow_run_id``), so the next memrestore command that takes the data dir's lock and finds the
marker (a restore, a resume, an abort) marks that run Crashed, saying what the data dir holds and
what to run next. On a standing server, flows/ops/alerts.py's heartbeat automation does the same
within a few minutes, without waiting for a command.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.states import Crashed

from memrestore.tasks.marker import MarkerInfo, Phase

log = logging.getLogger("memrestore")

#: What each phase leaves in the data dir, and which way out is which.
_LEFT = {
    Phase.PREFLIGHT: "nothing was staged and the previous contents are untouched",
    Phase.STAGING: "the previous contents are untouched; the blobs staged so far are kept in "
                   ".restore-staging/ for a resume",
    Phase.COMMITTING: "the commit was under way: some previous entries may be in .restore-aside/ "
                      "and the new tenant in place or still staged; the service must not start "
                      "until it is finished or undone",
    Phase.CLEANUP: "the new data is in place and the previous contents are still in "
                   ".restore-aside/ until the cleanup finishes",
}


def what_is_left(data_dir: Path, info: MarkerInfo) -> str:
    """What an interrupted restore left in ``data_dir``, and the two commands out of it."""
    return (
        f"{data_dir} keeps its marker .restore-in-progress (snapshot {info.snapshot_id!r}, tenant "
        f"{info.tenant_id}, {info.mode}, phase {info.phase.value}): {_LEFT[info.phase]}. Finish it "
        f"with `memrestore restore --resume` and the same --backend, --tenant {info.tenant_id}, "
        f"--snapshot {info.snapshot_id}, --mode {info.mode} and --data-dir, or put the previous "
        f"contents back with `memrestore abort --data-dir {data_dir}`"
    )


def crashed_message(data_dir: Path, info: MarkerInfo, found_by: str) -> str:
    """The Crashed state's message for the flow run of the dead restore ``info`` describes."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    died = f"memrestore: this restore's process (pid {info.pid} on {info.host}) is gone"
    if found_by == "abort":
        return (f"{died}; it had reached phase {info.phase.value} in {data_dir}, and "
                f"`memrestore abort` rolled it back at {now}: the previous contents are in place.")
    if found_by == "resume":
        return (f"{died}; it had reached phase {info.phase.value} in {data_dir}, and a "
                f"`memrestore restore --resume` took it over at {now}.")
    if found_by == "interrupted":
        return f"memrestore: this restore was interrupted at {now}. {what_is_left(data_dir, info)}."
    return f"{died} (found at {now} by a new restore, which was refused). {what_is_left(data_dir, info)}."


def mark_dead_run(data_dir: Path, info: MarkerInfo, found_by: str) -> None:
    """Mark the flow run of a dead restore Crashed with :func:`crashed_message`, unless it already
    ended otherwise (Completed, Failed, Cancelled) or is on another Prefect API than this one.

    Never raises: the API being away must not stop a resume or an abort; it is logged instead.
    """
    if not info.flow_run_id:
        return

    message = crashed_message(data_dir, info, found_by)
    try:
        with get_client(sync_client=True) as client:
            try:
                run = client.read_flow_run(UUID(info.flow_run_id))
            except ObjectNotFound:
                log.info("flow run %s of the restore in %s is not on this Prefect API (%s)",
                         info.flow_run_id, data_dir, info.prefect_api_url or "unknown")
                return
            state = run.state
            if state is not None and state.is_final() and not state.is_crashed():
                return  # it ended in its own words
            if state is not None and state.is_crashed() and state.message == message:
                return
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    except Exception as exc:  # noqa: BLE001 - reporting only; the restore's own work goes on
        log.warning("could not mark flow run %s of the dead restore in %s Crashed: %s",
                    info.flow_run_id, data_dir, exc)
