"""gunicorn's gthread worker, with one change: a worker stops accepting new connections while
every one of its threads is busy.

gthread workers all accept from the one listening socket, and a connection stays with the
worker that accepted it for as long as it is kept alive. A burst of clients (a CI fleet,
a proxy opening its upstream connections, wrk) can land on one worker: one core, its threads
fighting over one GIL, the other workers idle. Measured with wrk on the tag page: ~2,700
req/s when the 16 connections spread, ~800 when one worker took them all. Idle keep-alive
connections do not count against the limit, so many quiet clients are still fine
(worker_connections still caps the total).

It reads gthread's own counters (nr_conns, keepalived_conns, pending_conns), which is why
setup.cfg pins gunicorn to 27.x.
"""

from __future__ import annotations

import contextlib
import functools
import select
import socket
import time
from typing import Any

from gunicorn.workers.gthread import _DEFER, ThreadWorker


class BalancedThreadWorker(ThreadWorker):
    @property
    def worker_connections(self) -> int:
        # gthread accepts while nr_conns < worker_connections: that is, while fewer than
        # `threads` connections are in a request (or about to be).
        idle = len(self.keepalived_conns) + len(self.pending_conns)
        return min(self._max_connections, idle + int(self.cfg.threads))

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._max_connections = value

    def handle(self, conn: Any) -> Any:
        """Hand a connection to gthread only once its request head has arrived whole.

        gthread gives a thread to any connection with a byte to read, and the thread then
        blocks while the rest of the head trickles in: 40 clients sending a byte a second
        held all 40 threads of a default server. Here a head still arriving goes back to the
        poller (no thread held), and one still incomplete after request_head_timeout is
        answered 408."""
        if self.cfg.is_ssl or conn.is_http2 or _read_ahead(conn):
            return super().handle(conn)
        head = _peek(conn.sock)
        if head is None:  # nothing there yet: wait in the poller, not in a thread
            conn.berth_head_since = getattr(conn, "berth_head_since", None) or time.monotonic()
            return _DEFER
        if not conn.initialized and head[:1] == _TLS_HANDSHAKE:
            # A TLS ClientHello on this plain-HTTP port (docker tries TLS first with every
            # registry it was not told is insecure): a request line would never come.
            _send(conn.sock, _PLAIN_HTTP_ONLY)
            return False
        if head and not _head_complete(head):
            since = getattr(conn, "berth_head_since", None) or time.monotonic()
            conn.berth_head_since = since
            if time.monotonic() - since > self.head_timeout:
                _send(conn.sock, _HEAD_TIMEOUT)
                return False
            return _DEFER
        conn.berth_head_since = None  # the next request on this connection starts afresh
        return super().handle(conn)

    @functools.cached_property
    def head_timeout(self) -> float:
        reg = self.wsgi.extensions["berth"]
        return float(reg.settings.request_head_timeout)


_TLS_HANDSHAKE = b"\x16"  # the first byte of every TLS record that opens a connection
_PEEK = 64 * 1024  # a head this long is left to gunicorn's own limits


def _json_answer(status: bytes, message: str) -> bytes:
    body = ('{"errors":[{"code":"UNSUPPORTED","message":"' + message + '"}]}\n').encode()
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


_PLAIN_HTTP_ONLY = _json_answer(
    b"400 Bad Request", "this port speaks plain HTTP; TLS was attempted"
)
_HEAD_TIMEOUT = _json_answer(b"408 Request Timeout", "the request head took too long to arrive")


def _read_ahead(conn: Any) -> bool:
    """Bytes of the next request already read into gunicorn's buffer (a drained body read
    ahead): the socket no longer shows them."""
    parser = conn.parser
    return parser is not None and bool(parser.unreader.buf.getvalue())


def _peek(sock: socket.socket) -> bytes | None:
    """What has arrived and not been read, without reading it; None when nothing has (b""
    when the client closed). Most heads fit the first look; a body behind one is not copied."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return None
        data = sock.recv(4096, socket.MSG_PEEK)
        if len(data) == 4096 and not _head_complete(data):
            data = sock.recv(_PEEK, socket.MSG_PEEK)
        return data
    except OSError:
        return b""


def _head_complete(data: bytes) -> bool:
    return len(data) >= _PEEK or b"\r\n\r\n" in data or b"\n\n" in data


def _send(sock: socket.socket, answer: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(answer)
