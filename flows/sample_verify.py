"""The ``sample-verify`` flow: tonight's share of every stored blob hashed against its manifest,
without restoring (tasks/sample_verify.py), with an event per failed blob and an artifact; and
:func:`sampled_verify_step`, the same as a step of the nightly drill (flows/drill.py's ``sample``).
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State
from pydantic import Field

from memrestore.backends import SnapshotListing
from memrestore.backends.streams import RateLimit, parse_rate
from memrestore.flows.run_log import emit_tenant_event
from memrestore.tasks import units
from memrestore.tasks.drill_report import artifact_key
from memrestore.tasks.sample_verify import SAMPLE_FAILED_EVENT, SampleReport, sample_verify_task
from memrestore.tasks.share import SHARE_PATTERN, parse_share
from memrestore.tasks.transfer import RateParam

ShareParam = Annotated[str, Field(pattern=SHARE_PATTERN)]


def sample_markdown(report: SampleReport, backend_url: str) -> str:
    """The verify for the UI: the verdict, what was read of what is stored, each failed blob."""
    verdict = "every blob read hashed right" if report.ok else f"{len(report.failed)} blob(s) FAILED"
    first, *rest = report.lines()
    lines = [f"## Sampled verify: {verdict}", "", f"- backend: `{backend_url}`", f"- {first}"]
    lines += [f"- {line}" for line in rest[: 1 if report.unverified else 0]]
    if report.failed:
        lines += ["", "| tenant | snapshots holding it | key | why |", "| --- | --- | --- | --- |"]
        lines += [f"| {f.tenant_id} | {', '.join(f.snapshot_ids)} | `{f.key}` | {f.reason} |" for f in report.failed]
    return "\n".join(lines) + "\n"


def sampled_verify_step(backend: str, share: str, tenants: list[int] | None, night: int | None,
                        limit: RateLimit | None, listing: SnapshotListing | None = None,
                        now: float | None = None) -> SampleReport:
    """Run the sampled verify as a task of the current flow run: each failed blob a log line and
    a ``memrestore.verify.failed`` event, the report a markdown artifact (``drill-sample-<backend>``,
    one history per backend, from the drill and the command alike)."""
    logger = get_run_logger()
    report = sample_verify_task(backend, share, tenants, night, limit, listing, now)
    logger.info("%s", report.lines()[0])
    for failed in report.failed:
        logger.error("tenant %s, snapshot(s) %s, key %s: %s", failed.tenant_id, ", ".join(failed.snapshot_ids),
                     failed.key, failed.reason)
        emit_tenant_event(SAMPLE_FAILED_EVENT, failed.tenant_id, failed.model_dump(mode="json"),
                          {"prefect.resource.name": f"tenant {failed.tenant_id}", "memrestore.backend": backend})
    create_markdown_artifact(markdown=sample_markdown(report, backend), key=artifact_key("sample", backend),
                             description=f"sampled verify of {backend}: {report.blobs_read} blobs, "
                                         f"{units.size(report.bytes_read)} read, {len(report.failed)} failed")
    return report


@flow(name="sample-verify", flow_run_name="sample-verify-{sample}", persist_result=True, result_serializer="json")
def sample_verify(
    backend: str,
    sample: ShareParam = "5%",
    tenants: list[Annotated[int, Field(ge=0)]] | None = None,
    night: int | None = None,
    limit_rate: RateParam | None = None,
) -> dict | State:
    """Hash a share of the blobs of every retained snapshot against their manifests, without
    restoring; over nights, every blob stored is read once.

    Args:
        backend: Where the snapshots are: file:///abs/path, a path, or s3://bucket/prefix.
        sample: How much to read tonight: a percent of the stored bytes (5%) or a byte count (10G).
        tenants: Whose snapshots. Empty: every tenant with a snapshot in the backend.
        night: Which night's slice to read (0, 1, 2, ...). Empty: tonight's (UTC days since 1970).
        limit_rate: A cap on the download rate, bytes a second (50M, 1G, 500k). Empty: no cap.
    """
    parse_share(sample)  # refused before anything is listed
    limit = RateLimit(parse_rate(limit_rate)) if limit_rate is not None else None
    report = sampled_verify_step(backend, sample, tenants or None, night, limit, now=time.time())
    data = report.model_dump(mode="json")
    if report.failed:
        return Failed(message=f"{len(report.failed)} blob(s) failed the sampled verify: "
                              + "; ".join(f"tenant {f.tenant_id} snapshot {f.snapshot_ids[0]} key {f.key}"
                                          for f in report.failed[:3])
                              + f"; see the {artifact_key('sample', backend)} artifact", data=data)
    return data
