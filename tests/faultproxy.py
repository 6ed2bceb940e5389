"""A fault-injecting HTTP reverse proxy for S3 tests.

``FaultProxy`` listens on ``127.0.0.1`` (a free port) in background threads of the
test process and forwards every request to an upstream S3 server (SeaweedFS in
the test suite), so tests can make S3 fail the way S3 fails::

    from tests.faultproxy import Fault, FaultProxy

    def test_survives_throttling(seaweedfs):
        with FaultProxy(seaweedfs.endpoint_url) as proxy:
            s3 = proxy.client(seaweedfs, retries={"mode": "standard", "max_attempts": 5})
            proxy.fail_next(2, Fault.SLOW_DOWN, match="/my-key")
            s3.get_object(Bucket=bucket, Key="my-key")      # succeeds on the third try
            assert proxy.count("GET", "/my-key") == 3

Requests are forwarded as received: the request target byte for byte and every
header in its original order and case, ``Host`` included (boto3 signs SigV4
over the ``Host`` it connected to, i.e. the proxy, and SeaweedFS checks the
signature against the ``Host`` it receives).  Responses keep their status,
reason, headers and ``Content-Length``; bodies are streamed in chunks (objects
may be hundreds of MiB), so ranged GETs and their 206s pass through as they
are.  Only hop-by-hop response headers (``Connection``, ``Keep-Alive``,
``Transfer-Encoding``...) are the proxy's own, since the client's connection
to the proxy is kept alive independently of the proxy's (one per request)
connection upstream.

Faults (:class:`Fault`) come from three kinds of rules, checked in this order:

* ``fail_next(n, kind, match=None)``: the next ``n`` requests whose target
  contains ``match`` fail with ``kind`` (several of these queue up, oldest first);
* ``always(kind, match=None)``: every matching request fails;
* ``set_faults(rate, kinds, seed)``: that share of requests fails, each with a
  kind picked at random; by default only GETs of object data
  (``/bucket/key...`` in path-style addressing) are eligible, so bucket setup
  and uploads pass.

``clear()`` drops every rule.  Every request seen is logged in ``requests`` as
``Seen(method, path, fault)`` (``path`` is the raw request target, query
included; ``fault`` is ``None`` when the request was forwarded untouched).

Only the standard library is used by the proxy itself; ``client()`` imports boto3 (through
``tests.seaweed.s3_client``).
"""

from __future__ import annotations

import enum
import http.client
import random
import socket
import socketserver
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

import pytest

from tests.procs import Started

__all__ = ["DEFAULT_RANDOM_KINDS", "Fault", "FaultProxy", "Seen", "faultproxy"]

_HOST = "127.0.0.1"
#: Size of the pieces bodies are streamed in (each way).
CHUNK = 256 * 1024
#: Response headers that describe the connection, not the message: never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


def shut_down(sockets: Iterable[socket.socket]) -> None:
    """Shut every socket down both ways (a thread blocked on one returns), ignoring ones already closed."""
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Fault(enum.Enum):
    """How a request fails."""

    #: 503 with S3's XML error body, Code ``SlowDown`` (throttling).
    SLOW_DOWN = "SlowDown"
    #: 500 with Code ``InternalError``.
    INTERNAL = "InternalError"
    #: The connection is dropped without a response (an RST: SO_LINGER 0 then close).
    RESET = "Reset"
    #: The request is read and nothing is sent for ``stall_seconds``; then the connection closes.
    STALL = "Stall"
    #: The request is forwarded; the client gets the upstream response's head (full
    #: ``Content-Length``) and only part of its body, then the connection closes.  A response
    #: without a body (HEAD, most PUTs) is dropped whole: upstream acted, the client never hears.
    TRUNCATE = "Truncate"
    #: The response is forwarded whole, the first byte of its body changed: damage in transit
    #: that TCP did not catch. Not among the random kinds: it is no transient failure.
    CORRUPT = "Corrupt"
    #: 403 with Code ``AccessDenied``.
    FORBIDDEN = "AccessDenied"
    #: 404 with Code ``NoSuchKey``.
    NOT_FOUND = "NoSuchKey"


#: What ``set_faults`` picks from when not told: the faults botocore and s3transfer retry
#: without waiting out a timeout.
DEFAULT_RANDOM_KINDS = (Fault.SLOW_DOWN, Fault.INTERNAL, Fault.RESET, Fault.TRUNCATE)

# kind -> (status, reason, message)
_ERROR_RESPONSES = {
    Fault.SLOW_DOWN: (503, "Slow Down", "Please reduce your request rate."),
    Fault.INTERNAL: (500, "Internal Server Error", "We encountered an internal error. Please try again."),
    Fault.FORBIDDEN: (403, "Forbidden", "Access Denied"),
    Fault.NOT_FOUND: (404, "Not Found", "The specified key does not exist."),
}


class Seen(NamedTuple):
    """One request the proxy received."""

    method: str
    path: str  # the raw request target, query string included
    fault: Fault | None  # None: forwarded untouched


class _Rule:
    """A deterministic rule: ``remaining`` requests (None: every one) that match fail."""

    def __init__(
        self, kind: Fault, match: str | None, methods: Iterable[str] | None, remaining: int | None
    ) -> None:
        self.kind = Fault(kind)
        self.match = match
        self.methods = _methods(methods)
        self.remaining = remaining

    def matches(self, method: str, target: str) -> bool:
        return (self.methods is None or method in self.methods) and _contains(target, self.match)


class _RandomRule:
    def __init__(
        self,
        rate: float,
        kinds: Iterable[Fault],
        seed: Any,
        methods: Iterable[str] | None,
        match: str | None,
        objects_only: bool,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within [0, 1], not {rate!r}")
        self.rate = rate
        self.kinds = tuple(Fault(kind) for kind in kinds)
        if rate and not self.kinds:
            raise ValueError("set_faults needs at least one kind")
        self.rng = random.Random(seed)
        self.methods = _methods(methods)
        self.match = match
        self.objects_only = objects_only

    def pick(self, method: str, target: str) -> Fault | None:
        if self.methods is not None and method not in self.methods:
            return None
        if not _contains(target, self.match):
            return None
        if self.objects_only and not _is_object_path(target):
            return None
        if self.rng.random() >= self.rate:
            return None
        return self.rng.choice(self.kinds)


def _methods(methods: Iterable[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str):
        methods = (methods,)
    return frozenset(m.upper() for m in methods)


def _contains(target: str, match: str | None) -> bool:
    return match is None or match in target or match in unquote(target)


def _is_object_path(target: str) -> bool:
    """``/bucket/key...`` (path-style addressing): a request on an object, not a bucket."""
    path = target.split("?", 1)[0]
    _, _, key = path.lstrip("/").partition("/")
    return bool(key)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # boto3 opens up to max_pool_connections at once

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can be slow; skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients giving up (timeouts, resets) are part of the job; stay quiet.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    # -- plumbing ------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self._rst_on_finish = False
        self.server.proxy._track(self.connection, threading.current_thread())

    def finish(self) -> None:
        try:
            if self._rst_on_finish:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            super().finish()
            if self._rst_on_finish:
                self.connection.close()  # linger 0: the kernel sends RST, not FIN
        finally:
            self.server.proxy._untrack(self.connection, threading.current_thread())

    def parse_request(self) -> bool:
        self._expect_100 = False
        return super().parse_request()

    def handle_expect_100(self) -> bool:
        # Decide later: a faulted request gets its error instead of "100 Continue",
        # as S3 does; a forwarded one gets "100 Continue" just before its body is read.
        self._expect_100 = True
        return True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = do_GET

    # -- the proxy -----------------------------------------------------------

    def _handle(self) -> None:
        proxy = self.server.proxy
        # The target exactly as sent (http.server rewrites a leading "//" in self.path).
        target = self.requestline.split()[1]
        fault = proxy._decide(self.command, target)
        if fault in (None, Fault.TRUNCATE, Fault.CORRUPT):
            self._forward(target, truncate=fault is Fault.TRUNCATE, corrupt=fault is Fault.CORRUPT)
        elif fault is Fault.RESET:
            self.close_connection = True
            self._rst_on_finish = True
        elif fault is Fault.STALL:
            self.close_connection = True
            proxy._stopping.wait(proxy.stall_seconds)
        else:
            self._send_error(fault, target)

    def _has_body(self) -> bool:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return True
        return int(self.headers.get("Content-Length") or 0) > 0

    def _body_pieces(self) -> Iterator[bytes]:
        """The request body as it arrives, framing included (chunked bodies are relayed raw)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("client closed the connection inside a chunked body")
                yield line
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        line = self.rfile.readline(65537)
                        if not line:
                            raise ConnectionError("client closed the connection in the trailers")
                        yield line
                        if line in (b"\r\n", b"\n"):
                            return
                yield from self._read_exactly(size + 2)  # data and its CRLF
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length") or 0))

    def _read_exactly(self, remaining: int) -> Iterator[bytes]:
        while remaining > 0:
            data = self.rfile.read(min(remaining, CHUNK))
            if not data:
                raise ConnectionError("client closed the connection inside the request body")
            remaining -= len(data)
            yield data

    def _send_error(self, fault: Fault, target: str) -> None:
        status, reason, message = _ERROR_RESPONSES[fault]
        if self._has_body():
            if self._expect_100:
                # The client holds the body back until "100 Continue", which never comes.
                self.close_connection = True
            else:
                for _ in self._body_pieces():
                    pass
        request_id = uuid.uuid4().hex[:16].upper()
        path = unquote(target.split("?", 1)[0])
        key_element = ""
        if fault is Fault.NOT_FOUND:
            key = path.lstrip("/").partition("/")[2]
            key_element = f"<Key>{escape(key)}</Key>"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{fault.value}</Code><Message>{escape(message)}</Message>"
            f"{key_element}<Resource>{escape(path)}</Resource>"
            f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
        ).encode()
        headers = [
            ("x-amz-request-id", request_id),
            ("x-faultproxy-fault", fault.name),
            ("Content-Type", "application/xml"),
            ("Content-Length", str(len(body))),
            ("Date", formatdate(usegmt=True)),
            ("Server", "FaultProxy"),
        ]
        if self.close_connection:
            headers.append(("Connection", "close"))
        self.wfile.write(_head(status, reason, headers))
        if self.command != "HEAD":  # S3 answers a failed HEAD with headers only
            self.wfile.write(body)

    def _forward(self, target: str, truncate: bool, corrupt: bool = False) -> None:
        proxy = self.server.proxy
        upstream = proxy._connect_upstream()
        response = None
        try:
            upstream.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                upstream.putheader(name, value)
            upstream.endheaders()
            if self._has_body():
                if self._expect_100:
                    self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                pieces = self._body_pieces()
                for piece in pieces:
                    try:
                        upstream.send(piece)
                    except OSError:
                        # Upstream answered (and closed) before taking the whole body: relay its
                        # answer; the rest of the body stays unread, so this connection ends.
                        self.close_connection = True
                        break
            response = upstream.getresponse()
            self._relay(response, truncate, corrupt)
        finally:
            if response is not None:
                response.close()
            proxy._close_upstream(upstream)

    def _relay(self, response: http.client.HTTPResponse, truncate: bool, corrupt: bool = False) -> None:
        status = response.status
        headers = [(k, v) for k, v in response.msg.items() if k.lower() not in _HOP_BY_HOP]
        length_header = response.getheader("Content-Length")
        bodyless = self.command == "HEAD" or 100 <= status < 200 or status in (204, 304)
        if bodyless:
            length = 0
        elif response.chunked:
            length = None
            headers.append(("Transfer-Encoding", "chunked"))
        elif length_header is not None:
            length = int(length_header)
        else:  # delimited by the upstream closing: so is ours
            length = None
            self.close_connection = True
            headers.append(("Connection", "close"))
        head = _head(status, response.reason, headers)

        if truncate:
            self.close_connection = True
            if bodyless or length == 0:
                # No body to cut: the response is lost whole (upstream did act on the request).
                return
            self.wfile.write(head)
            if length is None:  # chunked or close-delimited: half of the first piece
                data = response.read1(CHUNK)
                if response.chunked:
                    self.wfile.write(b"%x\r\n" % len(data))
                self.wfile.write(data[: len(data) // 2])
                return
            self._stream(response, self.server.proxy._truncate_length(length))
            return

        self.wfile.write(head)
        if bodyless:
            return
        if response.chunked:
            while data := response.read1(CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
        elif length is None:
            while data := response.read1(CHUNK):
                self.wfile.write(data)
        else:
            sent = self._stream(response, length, corrupt)
            if sent < length:
                # Upstream cut its body short: so do we (the client sees the same failure).
                self.close_connection = True

    def _stream(self, response: http.client.HTTPResponse, limit: int, corrupt: bool = False) -> int:
        """Copy up to ``limit`` body bytes from upstream to the client; return how many. With
        ``corrupt``, the first byte is sent changed."""
        sent = 0
        while sent < limit:
            data = response.read1(min(CHUNK, limit - sent))
            if not data:
                break
            if corrupt and sent == 0:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            self.wfile.write(data)
            sent += len(data)
        return sent


def _head(status: int, reason: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class FaultProxy(Started):
    """A reverse proxy on ``127.0.0.1`` in front of ``upstream_url`` that fails on request.

    ``stall_seconds``: how long a ``STALL`` sends nothing (keep it above the client's
    read timeout).  ``truncate_bytes`` (if set) or ``truncate_fraction`` of the body is
    what a ``TRUNCATE`` sends (always at least one byte short).  All three are plain
    attributes and may be changed while the proxy runs.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        stall_seconds: float = 10.0,
        truncate_fraction: float = 0.5,
        truncate_bytes: int | None = None,
        upstream_timeout: float = 120.0,
    ) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream_url must be http(s)://host[:port], not {upstream_url!r}")
        self.upstream_url = upstream_url
        self._upstream_https = parts.scheme == "https"
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or (443 if self._upstream_https else 80)
        self.stall_seconds = stall_seconds
        self.truncate_fraction = truncate_fraction
        self.truncate_bytes = truncate_bytes
        self.upstream_timeout = upstream_timeout

        self._lock = threading.Lock()
        self._log: list[Seen] = []
        self._next: list[_Rule] = []
        self._always: list[_Rule] = []
        self._random: _RandomRule | None = None

        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> FaultProxy:
        """Bind a free port on 127.0.0.1 and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("FaultProxy.start() called twice")
        self._stopping.clear()
        self._server = _Server((_HOST, 0), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"faultproxy-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and every open connection; wait for the handlers.

        Stalled handlers wake up, handlers blocked on a client or upstream socket see it
        shut down.  Safe to call repeatedly.
        """
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()  # ends serve_forever
        server.server_close()  # closes the listening socket
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            sockets = list(self._sockets)
        shut_down(sockets)
        deadline = time.monotonic() + timeout
        with self._lock:
            handlers = list(self._handlers)
        for thread in handlers:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def port(self) -> int:
        """The listening port (kept after ``stop()``, for asserting it is closed)."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the endpoint URL to give boto3."""
        return f"http://{_HOST}:{self.port}"

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"FaultProxy({where} -> {self.upstream_url})"

    # -- rules ---------------------------------------------------------------

    def set_faults(
        self,
        rate: float,
        kinds: Iterable[Fault] = DEFAULT_RANDOM_KINDS,
        seed: Any = None,
        *,
        methods: Iterable[str] | None = ("GET",),
        match: str | None = None,
        objects_only: bool = True,
    ) -> None:
        """Fail ``rate`` of the eligible requests, each with a kind drawn from ``kinds``.

        Eligible: ``methods`` (None: any), target containing ``match`` (None: any) and,
        with ``objects_only``, a ``/bucket/key`` target.  Replaces any earlier random
        rule; ``rate=0`` turns it off.  Draws come from ``random.Random(seed)``.
        """
        rule = _RandomRule(rate, kinds, seed, methods, match, objects_only)
        with self._lock:
            self._random = rule if rate else None

    def fail_next(
        self,
        n: int,
        kind: Fault,
        match: str | None = None,
        *,
        methods: Iterable[str] | None = None,
    ) -> None:
        """The next ``n`` requests whose target contains ``match`` fail with ``kind``."""
        if n < 1:
            raise ValueError(f"n must be at least 1, not {n!r}")
        with self._lock:
            self._next.append(_Rule(kind, match, methods, n))

    def always(
        self,
        kind: Fault,
        match: str | None = None,
        *,
        methods: Iterable[str] | None = None,
    ) -> None:
        """Every request whose target contains ``match`` fails with ``kind``."""
        with self._lock:
            self._always.append(_Rule(kind, match, methods, None))

    def clear(self) -> None:
        """Remove every rule (the request log stays; see ``clear_requests``)."""
        with self._lock:
            self._next.clear()
            self._always.clear()
            self._random = None

    # -- what was seen -------------------------------------------------------

    @property
    def requests(self) -> list[Seen]:
        """A copy of the log: every request seen, in arrival order."""
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def count(self, method: str | None = None, match: str | None = None) -> int:
        """How many requests (of ``method``, target containing ``match``) arrived."""
        return sum(1 for seen in self.requests if _selects(seen, method, match))

    def faults_injected(
        self, kind: Fault | None = None, *, method: str | None = None, match: str | None = None
    ) -> int:
        """How many requests were failed (with ``kind``, of ``method``, matching ``match``)."""
        return sum(
            1
            for seen in self.requests
            if seen.fault is not None
            and (kind is None or seen.fault is kind)
            and _selects(seen, method, match)
        )

    # -- conveniences for tests ----------------------------------------------

    def client(self, server: Any, **config: Any) -> Any:
        """A boto3 S3 client through the proxy, with ``server``'s credentials and region.

        ``server`` is anything with ``access_key``, ``secret_key`` (and optionally
        ``region``), such as ``tests.seaweed.SeaweedS3``; ``config`` extends botocore's
        ``Config`` (path-style addressing by default).
        """
        from tests.seaweed import s3_client

        return s3_client(self.url, server, **config)

    def env(self, server: Any) -> dict[str, str]:
        """``server.env()`` with ``AWS_ENDPOINT_URL`` pointing at the proxy."""
        env = dict(server.env())
        env["AWS_ENDPOINT_URL"] = self.url
        return env

    # -- internals (called from handler threads) -----------------------------

    def _decide(self, method: str, target: str) -> Fault | None:
        with self._lock:
            fault = None
            for rule in self._next:
                if rule.matches(method, target):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._next.remove(rule)
                    fault = rule.kind
                    break
            if fault is None:
                for rule in self._always:
                    if rule.matches(method, target):
                        fault = rule.kind
                        break
            if fault is None and self._random is not None:
                fault = self._random.pick(method, target)
            self._log.append(Seen(method, target, fault))
            return fault

    def _truncate_length(self, length: int) -> int:
        if self.truncate_bytes is not None:
            cut = self.truncate_bytes
        else:
            cut = int(length * self.truncate_fraction)
        return max(0, min(cut, length - 1))

    def _connect_upstream(self) -> http.client.HTTPConnection:
        if self._upstream_https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._upstream_host, self._upstream_port, timeout=self.upstream_timeout
            )
        else:
            conn = http.client.HTTPConnection(
                self._upstream_host, self._upstream_port, timeout=self.upstream_timeout
            )
        conn.connect()
        sock = conn.sock
        assert sock is not None
        conn._faultproxy_sock = sock  # type: ignore[attr-defined]  # conn.sock may go None
        self._track(sock)
        return conn

    def _close_upstream(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._untrack(conn._faultproxy_sock)  # type: ignore[attr-defined]

    def _track(self, sock: socket.socket, thread: threading.Thread | None = None) -> None:
        with self._lock:
            self._sockets.add(sock)
            if thread is not None:
                self._handlers.add(thread)
        if self._stopping.is_set():  # stop() already swept the sockets: do its job here
            shut_down([sock])

    def _untrack(self, sock: socket.socket, thread: threading.Thread | None = None) -> None:
        with self._lock:
            self._sockets.discard(sock)
            if thread is not None:
                self._handlers.discard(thread)


def _selects(seen: Seen, method: str | None, match: str | None) -> bool:
    return (method is None or seen.method == method.upper()) and _contains(seen.path, match)


@pytest.fixture
def faultproxy(seaweedfs: Any) -> Iterator[FaultProxy]:
    """A ``FaultProxy`` in front of the session's SeaweedFS, fresh for each test.

    Import it into ``conftest.py`` next to ``seaweedfs`` to use it.
    """
    with FaultProxy(seaweedfs.endpoint_url) as proxy:
        yield proxy
