"""A failed restore drill as an SRE reads it in the Prefect UI, in a real browser.

A real ``prefect server start`` (the ``prefect_server`` fixture), ``memrestore serve --backend``
against it with a backend where tenants fail in different ways (tests/test_drill.py's
``write_fleet``), and Debian's Chromium driven through Playwright as tests/test_ui_browser.py does:
the nightly drill run now (as Run -> Quick run does), then the run's page. There the run must be Failed and named
for its backend and time, a failed tenant's ``drill-tenant`` task run Failed (red) with the
tenant's reason, a passing tenant's Completed; the run's ``drill-report`` table worst first, in
units (each cell on one line: a long reason runs off to the right), and the ``drill-summary``
with every reason whole.

Screenshots of each page go to the test's tmp dir (the path is printed); on failure the page's
HTML and text too.
"""

from __future__ import annotations

import datetime
import re
import time
from pathlib import Path

from memrestore.backends import LocalBackend
from memrestore.tasks.drill_report import artifact_key
from tests.prefect_server import PrefectServer, serving
from tests.test_drill import write_fleet
from tests.test_ui_browser import browser_page, keep_failed_page, run_page_final_state  # noqa: F401

NIGHTLY = "restore-drill/nightly"
TENANTS = (1, 2, 3, 5)


def _run_nightly_now(prefect_server: PrefectServer) -> str:
    """A run of the nightly drill now, with the deployment's parameters: what the UI's Run ->
    Quick run makes. Returns its id."""
    with prefect_server.client() as client:
        deployment = client.read_deployment_by_name(NIGHTLY)
        return str(client.create_flow_run_from_deployment(deployment.id).id)


def _shot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def test_a_failed_drill_in_the_prefect_ui(prefect_server: PrefectServer, browser_page, tmp_path):  # noqa: F811
    page = browser_page
    backend = LocalBackend(tmp_path / "backend")
    write_fleet(backend, int(time.time() * 10**6))
    scratch = tmp_path / "scratch"
    args = ["--backend", backend.url, "--max-age-hours", "24", "--scratch-dir", str(scratch)]
    args += [a for t in TENANTS for a in ("--tenant", str(t))]

    with serving(prefect_server, *args, log=tmp_path / "serve.log", expect=(NIGHTLY,)):
        try:
            # The nightly drill, run now; then its page, as an SRE opens it from the runs list.
            run_id = _run_nightly_now(prefect_server)
            page.goto(f"{prefect_server.url}/v2/runs/flow-run/{run_id}")
            state = run_page_final_state(page, prefect_server, run_id)
            assert state == "Failed", f"the run page shows {state}; serve's log: {tmp_path / 'serve.log'}"

            with prefect_server.client() as client:
                run = client.read_flow_run(run_id)
            # Named for its backend and the minute it was run for; the page shows that name.
            when = run.expected_start_time.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%MZ")
            name = f"drill-file-{tmp_path.name.replace('_', '-')}-backend-{when}"
            assert run.name == name
            page.get_by_text(name).first.wait_for()
            assert run.state.message.startswith("3 of 4 tenants failed the restore drill (tenants 5, 3, 2)")

            # The task runs: the failed tenants' Failed, the healthy one's Completed.
            page.get_by_role("tab", name="Task Runs").click()
            for tenant in TENANTS:
                page.get_by_text(f"drill-tenant-{tenant}", exact=True).first.wait_for()
            _shot(page, tmp_path, "task-runs")
            rows = {tenant: _row_text(page, f"drill-tenant-{tenant}") for tenant in TENANTS}
            assert "Completed" in rows[1] and "Failed" not in rows[1], rows[1]
            for tenant in (2, 3, 5):
                assert "Failed" in rows[tenant] and "Completed" not in rows[tenant], rows[tenant]

            # A failed tenant's own page: Failed, and why.
            page.get_by_text("drill-tenant-5", exact=True).first.click()
            page.wait_for_url(re.compile(r"/runs/task-run/[0-9a-f-]{36}"))
            page.get_by_text("Failed", exact=True).first.wait_for()
            page.get_by_text("integrity_check of the restored checkpoint tenant_5/data.sqlite").first.wait_for()
            _shot(page, tmp_path, "task-run-tenant-5")
            text = page.inner_text("body")
            assert "drill-tenant-5" in text and "Completed" not in text
            assert str(scratch) not in text  # the reason names no copy that was deleted

            # The run's artifacts: the report table, worst first, in units; the summary whole.
            report_key, summary_key = artifact_key("report", backend.url), artifact_key("summary", backend.url)
            page.goto(f"{prefect_server.url}/v2/runs/flow-run/{run_id}")
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text(report_key).first.wait_for()
            page.get_by_text(summary_key).first.wait_for()
            _shot(page, tmp_path, "artifacts")
            page.get_by_text(report_key).first.click()
            page.get_by_text("36.0 h, over the 24 h limit").first.wait_for()
            _shot(page, tmp_path, "drill-report")
            cells = page.locator("table tbody tr").all_inner_texts()
            assert [c.split()[0] for c in cells] == ["5", "3", "2", "1"], cells
            assert "96.0 KiB" in cells[0] and re.search(r"[\d.]+ [KM]iB/s", cells[0]), cells[0]
            assert not re.search(r"\b\d{5,}\b", "\n".join(cells)), cells  # no raw byte counts
            # Prefect's table keeps a cell on one line, never wrapped: a long reason makes the table
            # scroll sideways, off the panel's right edge; the cell's tooltip holds it whole.
            with prefect_server.client() as client:  # _sync: playwright's loop runs in this thread
                report = client.read_flow_run(run_id).state.result(raise_on_failure=False, _sync=True)
            reason_5 = next(t["reason"] for t in report["tenants"] if t["tenant_id"] == 5)
            cell = page.locator(f'table tbody td span[title="{reason_5}"]')
            assert cell.count() == 1 and cell.inner_text() == reason_5
            assert cell.evaluate("e => getComputedStyle(e.parentElement).whiteSpace") == "nowrap"
            assert page.locator('[data-slot="table-container"]').evaluate("e => e.scrollWidth > e.clientWidth")

            page.goto(f"{prefect_server.url}/v2/runs/flow-run/{run_id}")
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text(summary_key).first.click()
            page.get_by_text("Restore drill: 3 of 4 tenants failed").first.wait_for()
            _shot(page, tmp_path, "drill-summary")
            summary = page.inner_text("body")
            assert all(t["reason"] in summary for t in report["tenants"] if t["reason"])
        except BaseException:
            keep_failed_page(page, tmp_path)
            raise


def _row_text(page, name: str) -> str:
    """The text of the list row that holds the link ``name``: its state badge among it."""
    link = page.get_by_text(name, exact=True).first
    row = link.locator("xpath=ancestor::*[contains(., 'Failed') or contains(., 'Completed')][1]")
    return row.inner_text()
