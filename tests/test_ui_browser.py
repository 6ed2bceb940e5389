"""The on-demand restore from the Prefect UI, in a real browser.

A real ``prefect server start`` (the ``prefect_server`` fixture), ``memrestore serve`` against it,
and Debian's Chromium driven through Playwright as an operator would click: Deployments ->
on-demand -> Run -> Custom run -> the form -> Submit -> the run's page until it shows Completed.
Then the restored files on disk and the outcome artifacts through the API.

On failure a screenshot and the page's HTML are left in the test's tmp dir (the failure message
gives the path). ``playwright install`` cannot download browsers here: the test uses
``/usr/bin/chromium`` from Debian's ``chromium`` package, which ``make test`` installs.
"""

from __future__ import annotations

import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from tests.conftest import tree
from tests.prefect_server import PrefectServer, serving
from tests.procs import wait_until

CHROMIUM = Path("/usr/bin/chromium")
#: Without the background-networking flags Chromium keeps reaching for Google's hosts, which this
#: offline machine refuses; headless as root needs --no-sandbox.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
#: One UI step (a page, a click's effect). The UI is a single-page app on loopback; a loaded
#: 2-core machine can still take many seconds to render the first page.
STEP_MS = 60_000
#: From Submit to the run page showing a final state: the runner's poll, a flow-run subprocess
#: starting Prefect, the restore itself, and the UI's own refresh interval.
RUN_SECONDS = 240
#: How often the run page is reloaded while waiting, in case the UI's polling stalls.
RELOAD_MS = 30_000

#: How long to look for the "View run" toast before opening the run by its URL instead.
TOAST_MS = 15_000
#: From Submit to the run readable through the API. The server is one of a worker's under a
#: parallel run (pyproject.toml), beside its other tests' runs: 60 s once fell short there, with
#: the form still showing Submit and no error in the server's log.
CREATED_SECONDS = 180

#: serve's --backend fills the backend field, and the form asks for it no more (flows/ops/serve.py).
BACKEND_LABEL = "backend (Optional)"
#: After the toast was missed: how long the run the Submit made may take to be readable before the
#: Submit is taken as lost and clicked again.
RESUBMIT_SECONDS = 45

ON_DEMAND = "restore-snapshot/on-demand"


def _created_run_id(prefect_server: PrefectServer, deployment_id: str, data_dir: Path,
                    seconds: float = CREATED_SECONDS, required: bool = True) -> str | None:
    """The id of the run the Submit created: the on-demand deployment's newest run restoring into
    this test's ``data_dir``. (The session's server holds hundreds of runs by now, other tests' among
    them with tenant 7, and an unfiltered read returns only 200 of them in id order.) None after
    ``seconds`` if not ``required``."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + seconds
    while True:
        with prefect_server.client() as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)
        mine = [r for r in runs if r.parameters.get("data_dir") == str(data_dir)]
        if mine:
            return str(mine[0].id)
        if not required and time.monotonic() >= deadline:
            return None
        assert time.monotonic() < deadline, (
            f"the Submit created no run of deployment {deployment_id} into {data_dir} in {seconds:.0f} s")
        time.sleep(1)


@pytest.fixture
def browser_page(tmp_path: Path):
    """A fresh Chromium page; on a failing test, its screenshot and HTML go to ``tmp_path``."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make system-deps` or "
                    "`apt-get install -y chromium`); `playwright install` cannot download browsers here")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Python playwright package is missing: pip install -e '.[test]'")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(STEP_MS)
            page.set_default_navigation_timeout(STEP_MS)
            yield page
        finally:
            browser.close()


def run_page_final_state(page, prefect_server: PrefectServer, flow_run_id: str) -> str:
    """The run's final state, once the API has it, as its page shows it: the page is reloaded until
    that state's badge is visible. (Read from the page alone, a final-state word was twice found
    visible on the page of a run still Submitting, each time after another run of the deployment
    had ended in that state.)"""
    def final():
        with prefect_server.client() as client:
            state = client.read_flow_run(flow_run_id).state
        return state if state is not None and state.is_final() else None

    name = wait_until(final, RUN_SECONDS, f"run {flow_run_id} to end").name
    badge = page.get_by_text(name, exact=True).first
    deadline = time.monotonic() + RUN_SECONDS
    while True:
        page.reload()
        try:
            badge.wait_for(state="visible", timeout=RELOAD_MS)
            return badge.inner_text()
        except Exception:  # playwright's TimeoutError: reload in case the UI stopped polling
            if time.monotonic() > deadline:
                raise


def keep_failed_page(page, tmp_path: Path) -> None:
    """A failing UI test's page: a screenshot and the page's HTML in ``tmp_path``, and the page's
    text printed (what the operator would have read: a form's validation errors, a toast), for a
    CI log where the screenshot is gone with the machine."""
    shot, html = tmp_path / "failure.png", tmp_path / "failure.html"
    page.screenshot(path=str(shot), full_page=True)
    html.write_text(page.content())
    print(f"UI test failed at {page.url}; screenshot {shot}, page {html}")
    print("the page's text:\n" + page.inner_text("body")[:3000])


@contextmanager
def evidence_on_failure(page, tmp_path: Path) -> Iterator[None]:
    """On a failure inside the block: :func:`keep_failed_page`."""
    try:
        yield
    except BaseException:
        keep_failed_page(page, tmp_path)
        raise


def open_custom_run_form(page, prefect_server: PrefectServer) -> str:
    """Deployments -> on-demand -> Run -> Custom run, as an operator clicks; the deployment's id."""
    page.goto(f"{prefect_server.url}/v2/deployments")
    page.get_by_role("link", name="on-demand", exact=True).first.click()
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Custom run").click()
    page.get_by_label(BACKEND_LABEL, exact=True).wait_for()
    return re.search(r"/deployment/([0-9a-f-]{36})/run", page.url).group(1)


def fill_required(page, tenant_id: int, data_dir: Path, mode: str) -> None:
    page.get_by_label("tenant_id", exact=True).fill(str(tenant_id))
    page.get_by_label("data_dir", exact=True).fill(str(data_dir))
    page.get_by_role("button", name="Select mode").click()
    option = page.get_by_role("option", name=mode, exact=True)
    option.click()
    # The list closes before the next click: a Submit clicked while it closes was once lost.
    option.wait_for(state="hidden")


def submit_and_open_run(page, prefect_server: PrefectServer, deployment_id: str, data_dir: Path) -> str:
    """Submit the form and open the new run's page; its id."""
    submit = page.get_by_role("button", name="Submit", exact=True)
    submit.click()
    # The toast links to the new run; its page refreshes its state as the run goes. On a loaded
    # machine the toast can come and go before it is seen: then open the run the form created by
    # its URL.
    try:
        page.get_by_role("button", name="View run").click(timeout=TOAST_MS)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError; fall back to the API
        run_id = _created_run_id(prefect_server, deployment_id, data_dir, RESUBMIT_SECONDS, required=False)
        if run_id is None and submit.is_visible():
            # Seen on a loaded machine (a clean-clone CI, 1 of ~20 submits): the form filled and
            # valid, no error on it, no run created. The UI's form never acted on the click (it
            # posts to Prefect's API itself; nothing of ours is in between): click once more.
            submit.click()
            run_id = _created_run_id(prefect_server, deployment_id, data_dir)
        page.goto(f"{prefect_server.url}/v2/runs/flow-run/{run_id}")
    page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
    return re.search(r"/runs/flow-run/([0-9a-f-]{36})", page.url).group(1)


def run_artifacts(prefect_server: PrefectServer, flow_run_id: str):
    """The run, and its artifacts by key, read back through the API."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with prefect_server.client() as client:
        run = client.read_flow_run(flow_run_id)
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))) if a.key}
    return run, artifacts


def test_on_demand_restore_from_the_prefect_ui(prefect_server: PrefectServer, browser_page, tmp_path):
    page = browser_page
    backend = LocalBackend(tmp_path / "backend")
    # Two snapshots: the form asks for the older one by id, so "latest" would restore the wrong bytes.
    one_model = (("minilm", 384),)
    write_sample_snapshot(backend, tenant_id=7, snapshot_id="snap-old", created_at_unix_micros=1_700_000_000_000_000,
                          models=one_model)
    write_sample_snapshot(backend, tenant_id=7, snapshot_id="snap-new", created_at_unix_micros=1_700_000_100_000_000,
                          models=one_model)
    data_dir = tmp_path / "data"

    with serving(prefect_server, "--backend", backend.url, log=tmp_path / "serve.log", expect=(ON_DEMAND,)), \
            evidence_on_failure(page, tmp_path):
        deployment_id = open_custom_run_form(page, prefect_server)
        # The form: one field per parameter, labelled with its name; serve's --backend prefilled.
        assert page.get_by_label(BACKEND_LABEL, exact=True).input_value() == backend.url
        fill_required(page, 7, data_dir, "new_cluster")
        page.get_by_label("snapshot (Optional)", exact=True).fill("snap-old")
        for label, value in (("tenant_id", "7"), ("data_dir", str(data_dir)), ("snapshot (Optional)", "snap-old")):
            assert page.get_by_label(label, exact=True).input_value() == value, f"the form lost {label}"
        flow_run_id = submit_and_open_run(page, prefect_server, deployment_id, data_dir)
        state = run_page_final_state(page, prefect_server, flow_run_id)
        assert state == "Completed", f"the run page shows {state}; serve's log: {tmp_path / 'serve.log'}"

        # The run's artifacts, as the UI lists them.
        page.get_by_role("tab", name="Artifacts").click()
        page.get_by_role("heading", name="restore-summary-tenant-7").wait_for()
        page.get_by_role("heading", name="restore-items-tenant-7").wait_for()

    # The restored files: byte for byte the older snapshot's objects.
    assert tree(data_dir) == {
        "tenant_7/data.sqlite": (backend.root / "snap-old/sqlite.db").read_bytes(),
        "tenant_7/hnsw/minilm.bin": (backend.root / "snap-old/hnsw-0.bin").read_bytes(),
    }
    run, artifacts = run_artifacts(prefect_server, flow_run_id)
    assert run.state.is_completed()
    assert run.name == "tenant-7-snap-old-new_cluster"
    assert run.parameters["mode"] == "new_cluster" and run.parameters["tenant_id"] == 7
    summary = artifacts["restore-summary-tenant-7"]
    assert summary.type == "markdown" and "snap-old" in summary.data and "verified: 2 of 2" in summary.data
    assert artifacts["restore-items-tenant-7"].type == "table"
