"""The trend of restore drills over nights, as an SRE reads it in the Prefect UI (issue 21).

Three drills against a real ``prefect server start`` (the first two in this process, the third a
``memrestore drill`` subprocess), under a ``--limit-rate`` of 1 MiB/s, one tenant at a time:
between them, tenants 1 and 2 get new snapshots of the same size, tenant 3 none; before the
third, tenant 2's new snapshot is 2 MiB, which the rate limit makes take seconds where the others
take a tenth of one. The third drill must call out tenant 2's RTO and tenant 3's ever older
snapshot, and nothing of tenant 1's: first in its table output, at the top of its
``drill-summary``, and in its ``drill-trend`` artifact, whose page (the chart, drawn as an SVG
image, and the sparkline table) is opened in Chromium and shot, and so is the summary's, with the
sampled verify the third drill ran too.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from memrestore.backends import LocalBackend
from memrestore.backends.demo_snapshots import write_sample_snapshot
from memrestore.tasks.drill_report import DrillReport, artifact_key
from tests.prefect_server import PrefectServer
from tests.procs import memrestore
from tests.test_ui_browser import browser_page, keep_failed_page  # noqa: F401

SMALL = (("minilm", 8),)
HOUR_MICROS = 3600 * 10**6
CLI_TIMEOUT = 300


def _snapshot(backend: LocalBackend, tenant: int, night: int, hnsw_bytes: int = 16 * 1024) -> None:
    write_sample_snapshot(backend, tenant_id=tenant, snapshot_id=f"t{tenant}-n{night}", models=SMALL,
                          hnsw_bytes=hnsw_bytes, created_at_unix_micros=int(time.time() * 10**6) - HOUR_MICROS)


def _drill(prefect_server: PrefectServer, backend: LocalBackend, tmp_path: Path, *extra: str):
    # One tenant at a time: the rate limit is one bucket for the tenants drilled at once, so the
    # big restore would slow the others beside it too (they would all be called out, rightly).
    return memrestore("drill", "--backend", backend.url, "--limit-rate", "1M", "--concurrency", "1",
                      "--scratch-dir", tmp_path / "scratch", *extra, env={"PREFECT_API_URL": prefect_server.api_url},
                      timeout=CLI_TIMEOUT)


def _latest_artifact(prefect_server: PrefectServer, key: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with prefect_server.client() as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC, limit=1)[0]


def test_three_drills_call_out_the_tenant_made_slower_and_the_one_not_backed_up(
        prefect_server: PrefectServer, browser_page, tmp_path):  # noqa: F811
    page = browser_page
    backend = LocalBackend(tmp_path / "backend")
    for tenant in (1, 2, 3):
        _snapshot(backend, tenant, 1)
    outputs = []
    for night in (1, 2, 3):
        if night > 1:
            _snapshot(backend, 1, night)
            _snapshot(backend, 2, night, hnsw_bytes=2 * 1024 * 1024 if night == 3 else 16 * 1024)
        if night < 3:
            # Through the command line, as the third: a flow run in this process against this
            # server (temporary_settings) leaves Prefect's global events worker on it, and the
            # in-process flows of the next tests on this pytest worker lose their events.
            done = _drill(prefect_server, backend, tmp_path, "--json")
            assert done.returncode == 0, done.stderr
            report = DrillReport.model_validate_json(done.stdout)
            assert report.ok == 3 and report.callouts == [], report
            continue
        done = _drill(prefect_server, backend, tmp_path, "--sample", "50%")
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)

    metrics = json.loads(_latest_artifact(prefect_server, artifact_key("metrics", backend.url)).data)
    rto = {row["tenant"]: row["rto_seconds"] for row in metrics}
    assert rto[2] > 1.5, rto  # 2 MiB at 1 MiB/s, less the bucket's 64 KiB
    trend = _latest_artifact(prefect_server, artifact_key("trend", backend.url))
    callouts = [line[4:-2] for line in trend.data.split("\n") if line.startswith("- **")]
    assert len(callouts) == 2, trend.data
    assert callouts[0].startswith("tenant 2: RTO ") and "its median of the 2 drill(s) before" in callouts[0]
    assert "snapshot t2-n3, 2.0 MiB" in callouts[0]
    assert callouts[1].startswith("tenant 3: newest snapshot keeps getting older (1.0 h, 1.0 h, 1.0 h at the last "
                                  "3 drills): no newer backup arrived")
    assert trend.data.startswith(f"## Restore drill trend: 2 call-out(s)\n\n- **{callouts[0]}**\n- **{callouts[1]}**")
    assert "](data:image/svg+xml;base64," in trend.data
    # The same call-outs first in the command's output, and right under the summary's verdict.
    assert [line.removeprefix("trend: ") for line in outputs[0].splitlines()[:2]] == callouts, outputs[0]
    summary = _latest_artifact(prefect_server, artifact_key("summary", backend.url))
    assert summary.data.split("\n")[2:4] == [f"- **{c}**" for c in callouts]

    try:
        page.goto(f"{prefect_server.url}/v2/artifacts/artifact/{trend.id}")
        page.get_by_text("Restore drill trend: 2 call-out(s)").first.wait_for()
        page.get_by_text(callouts[0]).first.wait_for()
        chart = page.locator('img[alt^="RTO per tenant over the last 3 drills"]')
        chart.wait_for()
        page.wait_for_function("e => e.complete && e.naturalWidth > 0", arg=chart.element_handle())
        assert chart.evaluate("e => e.getBoundingClientRect().width") > 300  # drawn, not a broken icon
        rows = page.locator("table tbody tr").all_inner_texts()
        assert [r.split()[0] for r in rows] == ["2", "3", "1"], rows  # called out first
        path = tmp_path / "drill-trend.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")

        # The summary: the verdict, the call-outs right under it, the sampled verify's line.
        page.goto(f"{prefect_server.url}/v2/artifacts/artifact/{summary.id}")
        page.get_by_text("Restore drill: all 3 tenants passed").first.wait_for()
        page.get_by_text(callouts[1]).first.wait_for()
        page.get_by_text("sampled verify (50% a night, night ").first.wait_for()
        page.screenshot(path=str(tmp_path / "drill-summary.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'drill-summary.png'}")
    except BaseException:
        keep_failed_page(page, tmp_path)
        raise
