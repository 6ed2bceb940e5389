"""The peers memrestore is compared with, that are not a command of their own, and the plain-
function restores of the drill's baseline. Each runs as its own process, so that it is timed and
its memory measured from outside exactly as ``memrestore`` is::

    python -m benchmarks.peers boto3-download BUCKET DEST KEY...
    python -m benchmarks.peers boto3-crt-download BUCKET DEST KEY...
    python -m benchmarks.peers execute-many BACKEND DATA_ROOT SNAPSHOT_ID... --embedding-model M
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def boto3_download(bucket: str, dest: Path, keys: list[str]) -> None:
    """boto3's own ``download_file`` of each object, one after the other, with boto3's default
    transfer settings (ranged parallel GETs, 10 threads, temp file then rename): no hashing, no
    fsync. Endpoint and credentials come from boto3's chain (``AWS_ENDPOINT_URL`` ...)."""
    import boto3

    client = boto3.session.Session().client("s3")
    dest.mkdir(parents=True, exist_ok=True)
    for key in keys:
        client.download_file(bucket, key, str(dest / key.rsplit("/", 1)[-1]))


def boto3_crt_download(bucket: str, dest: Path, keys: list[str]) -> None:
    """As :func:`boto3_download`, through the AWS Common Runtime's S3 client (``boto3[crt]``):
    its own connections, sized from a throughput target (its default), and its own parts.

    boto3's own way in, ``TransferConfig(preferred_transfer_client="crt")``, builds the CRT client
    with TLS always on (boto3/crt.py: ``'use_ssl': True``), so it cannot reach a plain-http
    endpoint such as this benchmark's SeaweedFS and its proxy (the connection is closed: tried).
    So the transfer manager is built here as boto3 builds it, from the same s3transfer.crt parts,
    with TLS only for an https endpoint; then, as ``download_file`` does inside, one object after
    the other."""
    import boto3
    import botocore.session
    from boto3.s3.transfer import TransferConfig
    from s3transfer.crt import (BotocoreCRTCredentialsWrapper, BotocoreCRTRequestSerializer, CRTTransferManager,
                                create_s3_crt_client)

    client = boto3.session.Session().client("s3")
    endpoint, region = client.meta.endpoint_url, client.meta.region_name
    provider = BotocoreCRTCredentialsWrapper(client._get_credentials()).to_crt_credentials_provider()
    crt = create_s3_crt_client(region=region, crt_credentials_provider=provider, use_ssl=endpoint.startswith("https:"))
    serializer = BotocoreCRTRequestSerializer(botocore.session.get_session(),
                                              {"region_name": region, "endpoint_url": endpoint})
    dest.mkdir(parents=True, exist_ok=True)
    with CRTTransferManager(crt, serializer, config=TransferConfig(preferred_transfer_client="crt")) as manager:
        for key in keys:
            manager.download(bucket, key, str(dest / key.rsplit("/", 1)[-1])).result()


def execute_many(backend_url: str, data_root: Path, snapshot_ids: list[str], embedding_model: str) -> None:
    """One restore per snapshot (each into its own new data dir), one after the other, with the
    plain functions of ``tasks/``: ``tasks.restore.restore`` with its plain steps, no Prefect flow,
    task or API."""
    from memrestore.backends import open_backend
    from memrestore.tasks.choose import fetch_manifest
    from memrestore.tasks.modes import CheckLevel
    from memrestore.tasks.plan import DestinationState, RestoreMode
    from memrestore.tasks.restore import RestoreRequest, restore

    backend = open_backend(backend_url)
    for snapshot_id in snapshot_ids:
        manifest = fetch_manifest(backend, None, snapshot_id)
        restore(RestoreRequest(backend=backend_url, tenant_id=manifest.tenant_id, snapshot=snapshot_id,
                               data_dir=data_root / f"tenant-{manifest.tenant_id}", mode=RestoreMode.NEW_CLUSTER,
                               destination=DestinationState(embedding_model=embedding_model),
                               check=CheckLevel.NONE),
                backend=backend, manifest=manifest)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("boto3-download")
    p.add_argument("bucket")
    p.add_argument("dest", type=Path)
    p.add_argument("keys", nargs="+")
    p = sub.add_parser("boto3-crt-download")
    p.add_argument("bucket")
    p.add_argument("dest", type=Path)
    p.add_argument("keys", nargs="+")
    p = sub.add_parser("execute-many")
    p.add_argument("backend")
    p.add_argument("data_root", type=Path)
    p.add_argument("snapshot_ids", nargs="+")
    p.add_argument("--embedding-model", required=True)
    args = parser.parse_args(argv)
    if args.what == "boto3-download":
        boto3_download(args.bucket, args.dest, args.keys)
    elif args.what == "boto3-crt-download":
        boto3_crt_download(args.bucket, args.dest, args.keys)
    else:
        execute_many(args.backend, args.data_root, args.snapshot_ids, args.embedding_model)


if __name__ == "__main__":
    sys.exit(main())
