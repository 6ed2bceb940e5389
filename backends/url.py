"""Turn a ``--backend`` argument into a backend."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from memrestore.backends.base import Backend
from memrestore.backends.errors import BackendUrlError
from memrestore.backends.local import LocalBackend


def open_backend(url: str) -> Backend:
    """``file:///abs/path``, a bare path, or ``s3://bucket[/prefix]``."""
    if not url or not url.strip():
        raise BackendUrlError("the backend URL is empty; pass file:///abs/path, a path, or s3://bucket/prefix")
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise BackendUrlError(f"backend {url!r} names no bucket; use s3://bucket[/prefix]")
        from memrestore.backends.s3 import S3Backend  # boto3 is only loaded when S3 is used

        return S3Backend(parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise BackendUrlError(
                f"backend {url!r} names host {parsed.netloc!r}; file URLs must be "
                "file:///absolute/path (three slashes)"
            )
        return LocalBackend(Path(unquote(parsed.path)))
    if parsed.scheme and len(parsed.scheme) > 1:  # 'C:' style drive letters are paths
        raise BackendUrlError(
            f"backend {url!r} has scheme {parsed.scheme!r}; memrestore reads file:// and s3:// "
            "backends, or a bare path"
        )
    return LocalBackend(Path(url).expanduser())
