"""How a restore speaks in the Prefect UI, seen in Chromium as an operator sees it (issue 23): the
run form (every field described, optional ones typed as they are, the operator's validation
among them: issue 21), a refused restore's run page
(its state and the reason, without opening a log) and its artifacts, a restore's logs and its live
progress in MiB and MiB/s with the time left.

The same real server, ``memrestore serve`` and Chromium as tests/test_ui_browser.py, whose helpers
these tests use.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.flows.restore import Destination
from memrestore.tasks.validation import Validation
from tests.prefect_server import PrefectServer, serving
from tests.procs import wait_until
from tests.test_ui_browser import (  # noqa: F401  (browser_page: the fixture)
    ON_DEMAND,
    RUN_SECONDS,
    browser_page,
    evidence_on_failure,
    fill_required,
    open_custom_run_form,
    run_artifacts,
    run_page_final_state,
    submit_and_open_run,
)

ONE_MODEL = (("minilm", 384),)
#: The validator memrestore ships: the form's validation field takes it.
EXAMPLE_VALIDATOR = "memrestore.tasks.validators:commit_log_readable"
#: The runs' log level as an operator's (the test session's is WARNING: tests/conftest.py).
OPERATOR_LOGS = {"PREFECT_LOGGING_LEVEL": "INFO"}


#: How long a finished run's last log lines may take to be readable: a run sends its logs in batches.
LOGS_WAIT_SECONDS = 60


def _logs(prefect_server: PrefectServer, flow_run_id: str, last: str):
    """The run's log records, once one of them starts with ``last`` (its last line)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    def read():
        with prefect_server.client() as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return logs if any(log.message.startswith(last) for log in logs) else None

    return wait_until(read, LOGS_WAIT_SECONDS, f"a log line of run {flow_run_id} starting {last!r}")


def _progress_descriptions(prefect_server: PrefectServer, flow_run_id: str, key: str) -> list[str]:
    """Every description the run's progress artifact shows while the run goes, read through the API
    as the UI reads it, until the run ends."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    seen: list[str] = []
    deadline = time.monotonic() + RUN_SECONDS
    with prefect_server.client() as client:
        while time.monotonic() < deadline:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])))
            for artifact in artifacts:
                if artifact.description and artifact.description not in seen:
                    seen.append(artifact.description)
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_final():
                return seen
            time.sleep(0.2)
    raise AssertionError(f"run {flow_run_id} did not end in {RUN_SECONDS} s; its progress showed {seen}")


def test_the_form_describes_every_field_and_takes_optional_values_as_typed(
        prefect_server: PrefectServer, browser_page, tmp_path):
    page = browser_page
    backend = LocalBackend(tmp_path / "backend")
    # 12 MiB under a 2 MiB/s cap: seconds of progress to watch.
    write_sample_snapshot(backend, tenant_id=9, snapshot_id="snap-9", created_at_unix_micros=1_700_000_000_000_000,
                          models=ONE_MODEL, hnsw_bytes=12 * 2**20)
    data_dir = tmp_path / "data"

    with serving(prefect_server, "--backend", backend.url, log=tmp_path / "serve.log", expect=(ON_DEMAND,),
                    env=OPERATOR_LOGS), \
            evidence_on_failure(page, tmp_path):
        deployment_id = open_custom_run_form(page, prefect_server)
        page.screenshot(path=str(tmp_path / "form.png"), full_page=True)
        # Every nested field of destination has its description on the form.
        for name, field in Destination.model_fields.items():
            assert page.get_by_text(field.description, exact=True).is_visible(), f"destination's {name} has no description"
        for name, field in Validation.model_fields.items():  # and of validation, the operator's own
            assert page.get_by_text(field.description, exact=True).is_visible(), f"validation's {name} has no description"
        # No type switch ("int | None", "str | None") stands before an optional field.
        assert page.get_by_text(re.compile(r'Property is type "None"')).count() == 0
        assert page.get_by_role("button", name="None", exact=True).count() == 0

        fill_required(page, 9, data_dir, "new_cluster")
        # Optional fields typed straight in: an int and a string of the nested model, and the rate.
        page.get_by_label("tombstone_floor (Optional)", exact=True).fill("10")
        page.get_by_label("embedding_model (Optional)", exact=True).fill("minilm")
        page.get_by_label("limit_rate (Optional)", exact=True).fill("2M")
        page.get_by_label("callable (Optional)", exact=True).fill(EXAMPLE_VALIDATOR)
        page.screenshot(path=str(tmp_path / "form-filled.png"), full_page=True)
        flow_run_id = submit_and_open_run(page, prefect_server, deployment_id, data_dir)
        progress = _progress_descriptions(prefect_server, flow_run_id, "restore-progress-tenant-9")
        state = run_page_final_state(page, prefect_server, flow_run_id)
        assert state == "Completed", f"the run page shows {state}; serve's log: {tmp_path / 'serve.log'}"
        # The run's name says the snapshot `latest` resolved to.
        page.get_by_text("tenant-9-snap-9-new_cluster").first.wait_for()

    run, artifacts = run_artifacts(prefect_server, flow_run_id)
    assert run.parameters["limit_rate"] == "2M"
    assert run.parameters["destination"] == {"wire_version": "1.0", "tombstone_floor": 10, "embedding_model": "minilm"}
    assert run.parameters["validation"] == {"callable": EXAMPLE_VALIDATOR, "timeout_seconds": 120}
    assert run.name == "tenant-9-snap-9-new_cluster"
    # The live progress: MiB and MiB/s (as --limit-rate is spelled), and the time left, never MB.
    assert any(re.fullmatch(r"[\d.]+ (KiB|MiB) of 12\.\d MiB received, [\d.]+ (KiB|MiB)/s, .+ left", d)
               for d in progress), progress
    assert not any("MB" in d for d in progress), progress
    summary = artifacts["restore-summary-tenant-9"].data
    assert "## Restored snapshot `snap-9`" in summary and re.search(r"12\.\d MiB in .+, [\d.]+ (KiB|MiB)/s", summary)

    # The log: what latest resolved to, the bytes and their rate, the check, where the files went;
    # no "Finished in state" chatter from each task run.
    lines = [log.message for log in _logs(prefect_server, flow_run_id, "restored snapshot snap-9")]
    text = "\n".join(lines)
    assert "'latest' of tenant 9 is snapshot snap-9: created 2023-11-14 22:13:20 UTC" in text, text
    assert re.search(r"fetched 12\.\d MiB in .+, [\d.]+ (KiB|MiB)/s; all 2 match the manifest's blake3", text), text
    assert "staged copy checked (quick): SQLite quick_check ok" in text, text
    assert f"the staged copy of snapshot snap-9 passed the validation (callable {EXAMPLE_VALIDATOR})" in text, text
    assert f"{data_dir}/tenant_9/data.sqlite, {data_dir}/tenant_9/hnsw/minilm.bin" in text, text
    assert not any(line.startswith("Finished in state") for line in lines), text


def test_a_refused_restore_says_why_on_its_run_page(prefect_server: PrefectServer, browser_page, tmp_path):
    page = browser_page
    backend = LocalBackend(tmp_path / "backend")
    write_sample_snapshot(backend, tenant_id=8, snapshot_id="snap-8", created_at_unix_micros=1_700_000_000_000_000,
                          models=ONE_MODEL)
    data_dir = tmp_path / "data"
    (data_dir / "tenant_3").mkdir(parents=True)
    (data_dir / "tenant_3" / "data.sqlite").write_bytes(b"another tenant")  # new_cluster refuses this

    with serving(prefect_server, "--backend", backend.url, log=tmp_path / "serve.log", expect=(ON_DEMAND,),
                    env=OPERATOR_LOGS), \
            evidence_on_failure(page, tmp_path):
        deployment_id = open_custom_run_form(page, prefect_server)
        fill_required(page, 8, data_dir, "new_cluster")
        flow_run_id = submit_and_open_run(page, prefect_server, deployment_id, data_dir)
        assert run_page_final_state(page, prefect_server, flow_run_id) == "Failed"
        # The reason, on the run's page (its Details: "State Message"), in the form's words.
        page.get_by_role("tab", name="Details").click()
        page.get_by_text("State Message", exact=True).wait_for()
        shown = page.get_by_text(re.compile(r"is not empty \(found: tenant_3\)")).first
        shown.wait_for()
        on_page = shown.inner_text()
        page.screenshot(path=str(tmp_path / "refused.png"), full_page=True)
        # Its summary, on the Artifacts tab, and opened.
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_role("heading", name="restore-summary-tenant-8").click()
        page.get_by_text(re.compile(r"Refused: the restore of snapshot")).first.wait_for()
        page.get_by_text(re.compile(f"nothing in {re.escape(str(data_dir))} was changed")).first.wait_for()
        page.screenshot(path=str(tmp_path / "refused-summary.png"), full_page=True)

    run, artifacts = run_artifacts(prefect_server, flow_run_id)
    message = run.state.message
    assert run.state.is_failed() and message.startswith(f"data dir {data_dir} is not empty (found: tenant_3)")
    assert "set mode to single_tenant" in message and "wipe" not in message  # never a step that deletes more
    assert "--" not in message, message
    assert on_page.strip() == message, on_page
    assert run.name == "tenant-8-snap-8-new_cluster"
    summary = artifacts["restore-summary-tenant-8"]
    assert summary.type == "markdown"
    assert summary.data.startswith("## Refused: the restore of snapshot `snap-8` of tenant 8 (new_cluster)")
    assert message in summary.data and f"nothing in {data_dir} was changed" in summary.data
    # One line for the refusal, not a traceback (three of them, before).
    logs = _logs(prefect_server, flow_run_id, message)
    errors = [log.message for log in logs if log.level >= 40]
    assert errors == [message], errors
    assert not any("Traceback" in log.message for log in logs)
    assert (data_dir / "tenant_3" / "data.sqlite").read_bytes() == b"another tenant"
