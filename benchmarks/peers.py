"""The peers memrestore is compared with, that are not a command of their own, and the plain-
function restores of the drill's baseline. Each runs as its own process, so that it is timed and
its memory measured from outside exactly as ``memrestore`` is::

    python -m benchmarks.peers boto3-download BUCKET DEST KEY...
    python -m benchmarks.peers boto3-crt-download BUCKET DEST KEY...
    python -m benchmarks.peers drill-many BACKEND SCRATCH_DIR
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


def drill_many(backend_url: str, scratch_dir: Path) -> None:
    """The drill's work with the plain functions (``tasks.drill.drill_plain``): every tenant's
    latest snapshot restored into scratch, checked and deleted, one tenant after another, no
    Prefect flow, task or API. Exits 1 if a tenant failed, as ``memrestore drill`` does."""
    from memrestore.backends import open_backend
    from memrestore.tasks.drill import drill_plain

    report = drill_plain(open_backend(backend_url), scratch_dir=scratch_dir)
    print(f"{report.ok} passed, {report.failed} failed")
    if report.failed:
        sys.exit(1)


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
    p = sub.add_parser("drill-many")
    p.add_argument("backend")
    p.add_argument("scratch_dir", type=Path)
    args = parser.parse_args(argv)
    if args.what == "boto3-download":
        boto3_download(args.bucket, args.dest, args.keys)
    elif args.what == "boto3-crt-download":
        boto3_crt_download(args.bucket, args.dest, args.keys)
    else:
        drill_many(args.backend, args.scratch_dir)


if __name__ == "__main__":
    sys.exit(main())
