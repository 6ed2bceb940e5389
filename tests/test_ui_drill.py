"""A failed restore drill as an SRE reads it in the Prefect UI, in a real browser.

A real ``prefect server start`` (the ``prefect_server`` fixture), ``memrestore serve --backend``
against it with a backend where tenants fail in different ways (tests/test_drill.py's
``write_fleet``), and Debian's Chromium driven through Playwright as tests/test_ui_browser.py does:
Deployments -> nightly -> Run -> Quick run -> the run's page. There the run must be Failed and named
for its backend and time, a failed tenant's ``drill-tenant`` task run Failed (red) with the
tenant's reason, a passing tenant's Completed; the run's ``drill-report`` table worst first, in
units, and the ``drill-summary`` with every reason whole.

Screenshots of each page go to the test's tmp dir (the path is printed); on failure the page's
HTML and text too.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from memrestore.backends import LocalBackend
from memrestore.tasks.drill_report import artifact_key
from tests.prefect_server import PrefectServer, serving
from tests.test_drill import write_fleet
from tests.test_ui_browser import RUN_SECONDS, STEP_MS, TOAST_MS, _run_page_final_state, browser_page  # noqa: F401

NIGHTLY = "restore-drill/nightly"
TENANTS = (1, 2, 3, 5)


def _drill_run_id(prefect_server: PrefectServer, backend: LocalBackend) -> str:
    """The run of the nightly drill the Quick run made: the newest of the deployment that drills
    this test's backend (the session's server holds other tests' runs), not one its schedule made
    for 03:00."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + STEP_MS / 1000
    while True:
        with prefect_server.client() as client:
            deployment = client.read_deployment_by_name(NIGHTLY)
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)
        mine = sorted((r for r in runs if r.parameters.get("backend") == backend.url and not r.auto_scheduled),
                      key=lambda r: r.created, reverse=True)
        if mine:
            return str(mine[0].id)
        assert time.monotonic() < deadline, f"the Quick run made no run of {NIGHTLY} in {STEP_MS // 1000} s"
        time.sleep(1)


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
            # Run the nightly drill now, as an SRE would: the deployment's Run -> Quick run.
            page.goto(f"{prefect_server.url}/v2/deployments")
            page.get_by_role("link", name="nightly", exact=True).first.click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Quick run").click()
            try:
                page.get_by_role("button", name="View run").click(timeout=TOAST_MS)
            except Exception:  # noqa: BLE001 - playwright's TimeoutError: the toast came and went
                page.goto(f"{prefect_server.url}/v2/runs/flow-run/{_drill_run_id(prefect_server, backend)}")
            page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
            run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", page.url).group(1)
            state = _run_page_final_state(page)
            assert state == "Failed", f"the run page shows {state}; serve's log: {tmp_path / 'serve.log'}"

            with prefect_server.client() as client:
                run = client.read_flow_run(run_id)
            # Named for its backend and the minute it was run for; the page shows that name.
            when = run.expected_start_time.strftime("%Y-%m-%dT%H:%MZ")
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
            page.get_by_text("integrity_check of the restored checkpoint tenant_5/data.sqlite", exact=False).first.wait_for()
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
            # A long reason is cut to one line in its cell, and whole in the cell's tooltip.
            with prefect_server.client() as client:
                report = client.read_flow_run(run_id).state.result(raise_on_failure=False)
            reason_5 = next(t["reason"] for t in report["tenants"] if t["tenant_id"] == 5)
            cell = page.locator(f'table tbody td span[title="{reason_5}"]')
            assert cell.count() == 1
            assert cell.evaluate("e => e.scrollWidth > e.clientWidth"), "the reason fits its cell: not a long one?"

            page.goto(f"{prefect_server.url}/v2/runs/flow-run/{run_id}")
            page.get_by_role("tab", name="Artifacts").click()
            page.get_by_text(summary_key).first.click()
            page.get_by_text("Restore drill: 3 of 4 tenants failed").first.wait_for()
            _shot(page, tmp_path, "drill-summary")
            summary = page.inner_text("body")
            assert all(t["reason"] in summary for t in report["tenants"] if t["reason"])
        except BaseException:
            shot, html = tmp_path / "failure.png", tmp_path / "failure.html"
            page.screenshot(path=str(shot), full_page=True)
            html.write_text(page.content())
            print(f"UI test failed at {page.url}; screenshot {shot}, page {html}")
            print("the page's text:\n" + page.inner_text("body")[:3000])
            raise


def _row_text(page, name: str) -> str:
    """The text of the list row that holds the link ``name``: its state badge among it."""
    link = page.get_by_text(name, exact=True).first
    row = link.locator("xpath=ancestor::*[contains(., 'Failed') or contains(., 'Completed')][1]")
    return row.inner_text()
