"""The on-demand restore form in a real browser, with its defaults and the time it names: a
snapshot of two models, no model named, ``as_of`` between two snapshots. The same route as
tests/test_ui_browser.py (a real ``prefect server start``, ``memrestore serve``, Chromium)."""

from __future__ import annotations

from pathlib import Path

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from tests.conftest import tree
from tests.prefect_server import PrefectServer, serving
from tests.test_ui_browser import (  # noqa: F401 - browser_page is a fixture
    ON_DEMAND,
    browser_page,
    evidence_on_failure,
    fill_required,
    open_custom_run_form,
    run_page_final_state,
    submit_and_open_run,
)

MORNING, NOON = 1_796_634_000_000_000, 1_796_644_800_000_000  # 2026-12-07 09:00 and 12:00 UTC


def test_the_form_restores_the_tenant_as_it_was_at_a_time_with_its_defaults(
        prefect_server: PrefectServer, browser_page, tmp_path: Path):
    page = browser_page
    backend = LocalBackend(tmp_path / "backend")
    for sid, created in (("morning", MORNING), ("noon", NOON)):
        write_sample_snapshot(backend, tenant_id=8, snapshot_id=sid, created_at_unix_micros=created)  # two models
    data_dir = tmp_path / "data"

    with serving(prefect_server, "--backend", backend.url, log=tmp_path / "serve.log", expect=(ON_DEMAND,)), \
            evidence_on_failure(page, tmp_path):
        deployment_id = open_custom_run_form(page, prefect_server)
        fill_required(page, 8, data_dir, "new_cluster")
        # snapshot stays "latest", destination as it comes (no model named); as_of, an optional
        # text, is a plain text input (serve fits the form). The time is zoneless: read as UTC.
        assert page.get_by_label("snapshot (Optional)", exact=True).input_value() == "latest"
        page.get_by_label("as_of (Optional)", exact=True).fill("2026-12-07T11:00")
        page.screenshot(path=str(tmp_path / "form.png"), full_page=True)
        flow_run_id = submit_and_open_run(page, prefect_server, deployment_id, data_dir)
        state = run_page_final_state(page, prefect_server, flow_run_id)
        assert state == "Completed", f"the run page shows {state}; serve's log: {tmp_path / 'serve.log'}"

    # The morning's snapshot (noon is after 11:00), every index of it.
    assert tree(data_dir) == {
        "tenant_8/data.sqlite": (backend.root / "morning/sqlite.db").read_bytes(),
        "tenant_8/hnsw/minilm.bin": (backend.root / "morning/hnsw-0.bin").read_bytes(),
        "tenant_8/hnsw/e5-base.bin": (backend.root / "morning/hnsw-1.bin").read_bytes(),
    }
    with prefect_server.client() as client:
        run = client.read_flow_run(flow_run_id)
    assert run.parameters["as_of"] == "2026-12-07T11:00" and run.state.is_completed()
