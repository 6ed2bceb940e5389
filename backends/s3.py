"""A backend in an S3 bucket (AWS, or any S3-compatible server such as SeaweedFS or MinIO).

Endpoint and credentials come from boto3's own chain, so ``AWS_ENDPOINT_URL``,
``AWS_PROFILE`` and the rest work as they do for the AWS CLI. Large objects are fetched with
ranged, parallel GETs by boto3's transfer manager; the sink sees the bytes in order, because we
hand the manager a non-seekable writer (it then reorders the parts itself, within a bounded
number of in-memory chunks).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import boto3
import botocore.config
import boto3.exceptions
import botocore.exceptions
import s3transfer.exceptions
from boto3.s3.transfer import TransferConfig

from backends.base import MANIFEST_NAME, ManifestRef, ProgressFn, Sink
from backends.errors import (
    AccessDeniedError,
    BackendError,
    InvalidManifestError,
    InvalidSnapshotIdError,
    ObjectNotFoundError,
    PermanentBackendError,
    TransientBackendError,
)
from backends.manifest import MAX_MANIFEST_BYTES, check_content_key, check_snapshot_id

MiB = 1024 * 1024

#: Transfer tuning, measured with ``python -m benchmarks`` (BENCHMARKS.md).
#:
#: A restore already downloads its blobs ITEM_CONCURRENCY (4) at a time, so an object up to
#: SINGLE_GET_MAX is fetched with one streaming GET: boto3 then hands each chunk straight to the
#: sink from the request's own thread. Ranged GETs of the same 2 GiB snapshot cost 3 s of CPU
#: against 0.6 s (every 256 KiB chunk goes through an IO queue and every part is a request of its
#: own) and fetched it no faster: four streams saturate a loopback SeaweedFS, and on a 2-core
#: machine that also runs the server, CPU is what runs out first. Above SINGLE_GET_MAX one stream
#: would leave a restore waiting on a single object, so it is split into ranged GETs.
#:
#: What a ranged download holds in memory is bounded by its window of parts (in flight, or
#: arrived ahead of the part the sink is waiting for) times the part size, plus its IO queue:
#: 4 x 4 MiB + 4 x 1 MiB = 20 MiB an object, whatever its size. (The window was 64 parts of
#: 8 MiB: up to 512 MiB an object, and S3 restores of 2 GiB peaked at ~600 MiB.)
SINGLE_GET_MAX = 1024 * MiB
PART_SIZE = 4 * MiB
PARTS_IN_FLIGHT = 3
PARTS_IN_MEMORY = 4
TRANSFER = TransferConfig(
    multipart_threshold=SINGLE_GET_MAX + 1,
    multipart_chunksize=PART_SIZE,
    max_concurrency=PARTS_IN_FLIGHT,
    max_io_queue=4,
    # Reads of 1 MiB rather than boto3's 256 KiB: a third less CPU in Python for the same bytes.
    io_chunksize=1 * MiB,
    use_threads=True,
    preferred_transfer_client="classic",
)
# boto3's constructor does not take this s3transfer setting, but the manager reads it: the
# sliding window of parts a non-seekable download may hold (see above).
TRANSFER.max_in_memory_download_chunks = PARTS_IN_MEMORY

#: Uploads (writing snapshots: the demo, the tests, the benchmark) keep multipart parts of 8 MiB,
#: 8 at a time: they are not on a restore's path.
UPLOAD_TRANSFER = TransferConfig(
    multipart_threshold=16 * MiB,
    multipart_chunksize=8 * MiB,
    max_concurrency=8,
    use_threads=True,
    preferred_transfer_client="classic",
)

#: boto3's own retries (standard mode; ``max_attempts`` counts retries, so 4 requests in all)
#: absorb brief blips inside one request; what still fails is classified below and, if
#: transient, retried by the task with backoff.
CLIENT_CONFIG = botocore.config.Config(
    retries={"mode": "standard", "max_attempts": 3},
    max_pool_connections=32,
    connect_timeout=10,
    read_timeout=60,
)

#: The environment that decides which server and identity a default client talks to. Clients
#: are shared per process for each distinct value of these (see :func:`shared_client`).
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE",
)
_clients: dict[tuple[str | None, ...], object] = {}
_clients_lock = threading.Lock()


def shared_client():
    """The process's S3 client for the current AWS environment, created on first use.

    A boto3 client is thread-safe, and creating one is costly: it parses the S3 service model
    (about 0.4 s of CPU and 12 MiB here). A restore opens the backend in each of its tasks (the
    manifest, the sizes, one download per blob), so sharing one client takes ~2 s of CPU and
    ~60 MiB of peak memory off every S3 restore, and shares its connection pool.
    """
    key = tuple(os.environ.get(name) for name in _CLIENT_ENV)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = boto3.session.Session().client("s3", config=CLIENT_CONFIG)
        return client


#: Reads of a manifest whose body breaks or ends short, as boto3's transfer manager allows a
#: download (its ``num_download_attempts``).
MANIFEST_READ_ATTEMPTS = 5

#: What boto3 and its transfer manager raise for a failed request (after their own retries).
_S3_ERRORS = (
    botocore.exceptions.ClientError,
    botocore.exceptions.BotoCoreError,
    boto3.exceptions.Boto3Error,
    s3transfer.exceptions.RetriesExceededError,
)

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_DENIED_CODES = {"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
    "InternalError", "ServiceUnavailable", "503", "500", "502", "504",
}


class S3Backend:
    """Snapshots under ``s3://bucket/prefix/``."""

    def __init__(self, bucket: str, prefix: str = "", client=None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.client = client or shared_client()
        # The same bucket at another endpoint is another store (for caches kept on this machine).
        self.identity = f"{self.url} at {self.client.meta.endpoint_url}"

    def _key(self, key: str) -> str:
        check_content_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, exc: Exception, key: str) -> BackendError:
        where = f"{self.url}/{key}"
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NOT_FOUND_CODES or status == 404:
                what = "bucket" if code == "NoSuchBucket" else "object"
                return ObjectNotFoundError(
                    f"{what} not found: {where} ({code or status}); check the bucket and prefix "
                    "in --backend, or restore another snapshot",
                    key=key,
                )
            if code in _DENIED_CODES or status == 403:
                return AccessDeniedError(
                    f"access denied to {where} ({code or status}); check the credentials boto3 "
                    "uses (AWS_PROFILE, AWS_ACCESS_KEY_ID) and the bucket policy",
                    key=key,
                )
            if code in _TRANSIENT_CODES or (status is not None and status >= 500):
                return TransientBackendError(f"S3 error on {where}: {code or status}", key=key)
            return PermanentBackendError(
                f"S3 refused the request for {where}: {code or status} "
                f"{error.get('Message', '')}".rstrip(),
                key=key,
            )
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return AccessDeniedError(
                f"no AWS credentials found for {where}; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE",
                key=key,
            )
        # Everything else botocore raises here is the connection failing: timeouts, resets,
        # a body cut short, an endpoint that does not answer.
        return TransientBackendError(f"S3 connection failed for {where}: {exc}", key=key)

    def read_manifest_bytes(self, snapshot_id: str) -> bytes:
        key = f"{check_snapshot_id(snapshot_id)}/{MANIFEST_NAME}"
        # botocore retries a failed request, but not a body that breaks or ends short once the
        # response has begun (boto3's transfer manager does that for downloads): so here.
        for attempt in range(1, MANIFEST_READ_ATTEMPTS + 1):
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
                length = int(response.get("ContentLength", 0))
                if length > MAX_MANIFEST_BYTES:
                    response["Body"].close()
                    raise InvalidManifestError(
                        f"{self.url}/{key}",
                        f"it is {response['ContentLength']} bytes, above the {MAX_MANIFEST_BYTES} a manifest may have",
                    )
                data = response["Body"].read(MAX_MANIFEST_BYTES + 1)
            except _S3_ERRORS as exc:
                failure = self._fail(exc, key)
                if isinstance(failure, TransientBackendError) and attempt < MANIFEST_READ_ATTEMPTS:
                    continue
                raise failure from exc
            if len(data) >= length:
                return data
        raise TransientBackendError(
            f"S3 cut the body of {self.url}/{key} short ({len(data)} of {length} bytes) "
            f"{MANIFEST_READ_ATTEMPTS} times", key=key)

    def list_snapshot_ids(self) -> list[str]:
        return [ref.snapshot_id for ref in self.list_manifests()]

    def list_manifests(self) -> list[ManifestRef]:
        # One listing of the whole root, keeping ``<id>/manifest.json`` keys: a folder without
        # its manifest is an unfinished snapshot and is not listed. Each key comes with its ETag,
        # size and time at no extra cost: together they are the manifest's version.
        root = f"{self.prefix}/" if self.prefix else ""
        refs = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=root):
                for obj in page.get("Contents", []):
                    name, _, rest = obj["Key"][len(root):].partition("/")
                    if rest != MANIFEST_NAME:
                        continue
                    try:
                        check_snapshot_id(name)
                    except InvalidSnapshotIdError:
                        continue  # not a snapshot folder
                    refs.append(ManifestRef(name, _version(obj)))
        except _S3_ERRORS as exc:
            raise self._fail(exc, "") from exc
        return sorted(refs, key=lambda ref: ref.snapshot_id)

    def object_size(self, key: str) -> int:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except _S3_ERRORS as exc:
            raise self._fail(exc, key) from exc
        return int(head["ContentLength"])

    def download(self, key: str, sink: Sink, on_bytes: ProgressFn | None = None) -> int:
        # One GET, or ranged GETs (see SINGLE_GET_MAX): each needs its own kind of writer.
        if self.object_size(key) <= SINGLE_GET_MAX:
            writer: _InOrderCountingWriter = _OneStreamWriter(sink, on_bytes)
        else:
            writer = _InOrderCountingWriter(sink, on_bytes)
        try:
            self.client.download_fileobj(self.bucket, self._key(key), writer, Config=TRANSFER)
        except _S3_ERRORS as exc:
            raise self._fail(exc, key) from exc
        return writer.total

    def put_object(self, key: str, source: bytes | Path) -> None:
        try:
            if isinstance(source, bytes):
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=source)
            else:
                self.client.upload_file(str(source), self.bucket, self._key(key), Config=UPLOAD_TRANSFER)
        except _S3_ERRORS as exc:
            raise self._fail(exc, key) from exc


def _version(obj: dict) -> str | None:
    """A listed object's version: ETag (a digest of the bytes on every S3 we know), size and
    last-modified; None when the server gives no ETag, so nothing is cached on its word."""
    etag = obj.get("ETag")
    if not etag:
        return None
    modified = obj.get("LastModified")
    return f"{etag}:{obj.get('Size')}:{modified.isoformat() if modified is not None else ''}"


class _InOrderCountingWriter:
    """Passes bytes to a sink and counts them as they are written, in order.

    It says it is not seekable, so boto3's transfer manager writes parts strictly in order
    (reordering them itself) instead of seeking; and its count, unlike boto3's progress
    callbacks, never goes backwards when a part is retried.
    """

    def __init__(self, sink: Sink, on_bytes: ProgressFn | None) -> None:
        self._sink = sink
        self._on_bytes = on_bytes
        self.total = 0

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self.total += len(data)
        if self._on_bytes is not None:
            self._on_bytes(len(data))
        return len(data)

    def seekable(self) -> bool:
        return False


class _OneStreamWriter(_InOrderCountingWriter):
    """The writer for an object fetched with one GET: passes each byte to the sink exactly once.

    When that GET's stream breaks, boto3's transfer manager retries it from the start of the
    object; to a non-seekable writer it would replay the bytes already written (the sink would
    get them twice, and the hash would fail). So this writer says it is seekable: boto3 then
    seeks to each chunk's offset before writing it, and the writer skips what it already has.
    Chunks of one GET arrive in order, so an offset past what was written is a bug, not data.
    """

    def __init__(self, sink: Sink, on_bytes: ProgressFn | None) -> None:
        super().__init__(sink, on_bytes)
        self._offset = 0

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset > self.total:
            raise ValueError(f"a single-GET download seeked to {offset} (whence {whence}) with "
                             f"{self.total} bytes written: chunks must arrive in order")
        self._offset = offset
        return offset

    def tell(self) -> int:
        return self._offset

    def write(self, data: bytes) -> int:
        skip = min(len(data), self.total - self._offset)  # already written: a retried stream
        if skip < len(data):
            super().write(memoryview(data)[skip:] if skip else data)
        self._offset += len(data)
        return len(data)
