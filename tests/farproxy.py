"""A TCP proxy that makes a loopback S3 server look far away: each connection's download rate is
capped and each request waits before it is forwarded, as a real object store over a WAN does
(one connection gets a bounded rate, every request waits for its first byte); optionally all
connections together are capped too (``link_rate``: a link that a few connections fill).

``FarProxy`` listens on ``127.0.0.1`` (a free port) and forwards bytes as they are, both ways, to
an upstream server (SeaweedFS in the tests and the benchmark), so SigV4 signatures, ranges and
keep-alive pass through untouched::

    with FarProxy(seaweedfs.endpoint_url, rate=4_000_000, delay=0.02) as proxy:
        ...  # point AWS_ENDPOINT_URL at proxy.endpoint_url
        proxy.timeline()   # GETs in flight, sampled every 10 ms
        proxy.requests     # requests seen (a new HTTP request line from a client)

Two directions per connection, each a thread:

* client to server: a piece of data that begins with an HTTP method and a ``/`` is the start
  of a request (clients here neither pipeline nor send bodies through it: GETs and HEADs), and
  is held ``delay`` seconds before it is forwarded;
* server to client, response by response: the head (status line and headers) as it is, then the
  body (its ``Content-Length``; none for a HEAD) moved by the kernel (``splice`` through a pipe,
  never copied into Python) in pieces of at most :data:`PACE_BYTES`, and after each piece the
  thread sleeps until the connection is back within ``rate`` bytes a second. A response without
  a length is forwarded to the end of the connection.

So the proxy itself costs little CPU: a few syscalls per 64 KiB. What it measures is what a client
keeps in flight: a GET is in flight from the moment its request arrives until the last byte of its
response is forwarded, and :meth:`timeline` samples how many are, every 10 ms.

As a process (for the benchmark, whose own CPU must not be shared with it)::

    python -m tests.farproxy --upstream URL --rate BYTES_PER_S --delay SECONDS --port-file F --stats F

writes its port to ``--port-file`` once listening, and on SIGUSR1 writes its counters since the
previous SIGUSR1 to ``--stats`` (JSON: requests, bytes, timeline) and starts them again; SIGTERM
stops it.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

from tests.faultproxy import shut_down
from tests.procs import Started

_HOST = "127.0.0.1"
#: Largest piece moved at once toward the client; the pacing step (at 5 MB/s, ~80 steps a second).
PACE_BYTES = 64 * 1024
#: How often :meth:`FarProxy.timeline` counts the GETs in flight.
SAMPLE_SECONDS = 0.01
#: How a request's first bytes start (RFC 9110's methods, then the target).
_METHODS = (b"GET /", b"HEAD /", b"PUT /", b"POST /", b"DELETE /", b"OPTIONS /")
#: Not SPLICE_F_MORE: like MSG_MORE it corks the socket, holding a response's last bytes back for
#: up to 200 ms in wait of more.
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1)


class FarProxy(Started):
    """A rate-capping, request-delaying TCP proxy in front of ``upstream_url`` (``http://host:port``)."""

    def __init__(self, upstream_url: str, *, rate: float, delay: float = 0.0, port: int = 0,
                 link_rate: float | None = None) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream_url!r}")
        if rate <= 0:
            raise ValueError(f"rate must be positive bytes a second, not {rate!r}")
        self.upstream = (parts.hostname, parts.port)
        self.rate = float(rate)
        self.delay = float(delay)
        #: All connections together get at most this (a link that few connections fill); None: no cap.
        self.link_rate = float(link_rate) if link_rate else None
        self._link_paid_until = 0.0
        self._listener = socket.create_server((_HOST, port), backlog=128)
        self.port = self._listener.getsockname()[1]
        self.endpoint_url = f"http://{_HOST}:{self.port}"
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._next_id = 0
        self._gets_in_flight = 0
        self.reset()

    # -- counters ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Start the counters again (requests, bytes, the timeline)."""
        with self._lock:
            self.requests = 0
            self.bytes_down = 0
            self._samples: list[int] = []

    def _sample(self) -> None:
        while not self._closed.wait(SAMPLE_SECONDS):
            with self._lock:
                self._samples.append(self._gets_in_flight)

    def timeline(self) -> list[int]:
        """GETs in flight (sent by a client, their response not yet all forwarded), sampled every
        SAMPLE_SECONDS since the counters started, from the first sample with any to the last."""
        with self._lock:
            samples = list(self._samples)
        busy = [i for i, n in enumerate(samples) if n]
        return samples[busy[0]:busy[-1] + 1] if busy else []

    def stats(self) -> dict:
        return {"requests": self.requests, "bytes": self.bytes_down, "sample_seconds": SAMPLE_SECONDS,
                "timeline": self.timeline()}

    # -- serving ----------------------------------------------------------------------------

    def start(self) -> "FarProxy":
        self._spawn(self._accept, "farproxy-accept")
        self._spawn(self._sample, "farproxy-sampler")
        return self

    def stop(self) -> None:
        self._closed.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            sockets = list(self._sockets)
        shut_down(sockets)
        for thread in list(self._threads):
            thread.join(timeout=5)

    def _spawn(self, target, name: str, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets.update((client, server))
                conn_id, self._next_id = self._next_id, self._next_id + 1
            methods: queue.SimpleQueue[bytes] = queue.SimpleQueue()  # the requests sent, oldest first
            self._spawn(self._upward, f"farproxy-up-{conn_id}", client, server, methods)
            self._spawn(self._downward, f"farproxy-down-{conn_id}", server, client, methods)

    def _close(self, *socks: socket.socket) -> None:
        shut_down(socks)
        for sock in socks:
            sock.close()
            with self._lock:
                self._sockets.discard(sock)

    def _upward(self, client: socket.socket, server: socket.socket, methods: queue.SimpleQueue) -> None:
        """Client to server: requests held ``delay`` seconds each, then forwarded."""
        try:
            while True:
                data = client.recv(256 * 1024)
                if not data:
                    break
                if data.startswith(_METHODS):
                    method = data.split(b" ", 1)[0]
                    with self._lock:
                        self.requests += 1
                        if method == b"GET":
                            self._gets_in_flight += 1
                    methods.put(method)
                    if self.delay:
                        time.sleep(self.delay)
                server.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client, server)

    def _done_if_last(self, left: int | None, n: int, method: bytes) -> None:
        """Count the response done when the ``n`` bytes about to go are the last of its body:
        before they go, since the client may send its next request the moment it has them, and a
        sample taken in between would count that request and this one both in flight."""
        if left is not None and left == n:
            self._done(method)

    def _downward(self, server: socket.socket, client: socket.socket, methods: queue.SimpleQueue) -> None:
        """Server to client, response by response: the head as it is, the body (its
        Content-Length, none for a HEAD) at most ``rate`` bytes a second, moved by the kernel."""
        read_end, write_end = os.pipe()
        pending = b""  # bytes read past a response's head: the start of its body
        method = b""
        try:
            while True:
                head, pending = self._read_head(server, pending)
                if head is None:
                    break
                method = methods.get()
                client.sendall(head)
                length = _content_length(head, method)
                left = length
                paid_until = time.monotonic()  # a response earns no credit from idle time before it
                while left is None or left > 0:
                    if pending:  # body bytes that came with the head
                        n = len(pending) if left is None else min(len(pending), left)
                        self._done_if_last(left, n, method)
                        client.sendall(pending[:n])
                        pending = pending[n:]
                    else:
                        want = PACE_BYTES if left is None else min(PACE_BYTES, left)
                        n = os.splice(server.fileno(), write_end, want, flags=_SPLICE_FLAGS)
                        if n == 0:
                            break
                        self._done_if_last(left, n, method)
                        moved = n
                        while moved:
                            moved -= os.splice(read_end, client.fileno(), moved, flags=_SPLICE_FLAGS)
                    if left is not None:
                        left -= n
                    with self._lock:
                        self.bytes_down += n
                    if left == 0:
                        method = b""  # counted done above, before its last bytes went
                    paid_until += n / self.rate
                    now = time.monotonic()
                    wait = paid_until - now
                    if self.link_rate:  # the link's share, taken in turn by every connection
                        with self._lock:
                            self._link_paid_until = max(self._link_paid_until, now) + n / self.link_rate
                            wait = max(wait, self._link_paid_until - now)
                    if wait > 0:
                        time.sleep(wait)
                if method:
                    self._done(method)
                    method = b""
                if left is None or left > 0:
                    break  # a body to the end of the connection, or cut short
        except OSError:
            pass
        finally:
            if method:
                self._done(method)
            os.close(read_end)
            os.close(write_end)
            self._close(server, client)

    def _done(self, method: bytes) -> None:
        if method == b"GET":
            with self._lock:
                self._gets_in_flight -= 1

    @staticmethod
    def _read_head(server: socket.socket, pending: bytes) -> tuple[bytes | None, bytes]:
        """A response's status line and headers (up to the blank line), and what came after."""
        data = pending
        while b"\r\n\r\n" not in data:
            more = server.recv(64 * 1024)
            if not more:
                return None, b""
            data += more
        end = data.index(b"\r\n\r\n") + 4
        return data[:end], data[end:]


def _content_length(head: bytes, method: bytes) -> int | None:
    """How many body bytes follow the head: 0 for a HEAD or a 1xx/204/304, the Content-Length,
    or None (to the end of the connection) when there is none."""
    status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b""
    if method == b"HEAD" or status in (b"204", b"304") or status.startswith(b"1"):
        return 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.farproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http://host:port of the S3 server")
    parser.add_argument("--rate", type=float, required=True, help="bytes a second, per connection")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds each request waits")
    parser.add_argument("--link-rate", type=float, help="bytes a second, all connections together")
    parser.add_argument("--port-file", required=True, help="where the listening port is written")
    parser.add_argument("--stats", required=True, help="where SIGUSR1 writes the counters (JSON)")
    args = parser.parse_args(argv)
    proxy = FarProxy(args.upstream, rate=args.rate, delay=args.delay, link_rate=args.link_rate).start()

    def dump(*_: object) -> None:
        tmp = f"{args.stats}.tmp"
        with open(tmp, "w") as f:
            json.dump(proxy.stats(), f)
        os.replace(tmp, args.stats)
        proxy.reset()

    stopping = threading.Event()
    signal.signal(signal.SIGUSR1, dump)
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    tmp = f"{args.port_file}.tmp"
    with open(tmp, "w") as f:
        f.write(str(proxy.port))
    os.replace(tmp, args.port_file)
    while not stopping.is_set():
        stopping.wait(0.5)
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
