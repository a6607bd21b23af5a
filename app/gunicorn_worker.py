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
import select
import socket
from typing import Any

from gunicorn.workers.gthread import ThreadWorker


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
        # A TLS ClientHello on this plain-HTTP port (docker tries TLS first with every
        # registry it was not told is insecure): gunicorn would wait for a request line that
        # never comes, holding a thread until the client gives up. Answer at once instead.
        if not conn.initialized and not self.cfg.is_ssl and _starts_tls(conn.sock):
            _refuse_tls(conn.sock)
            return False
        return super().handle(conn)


_TLS_HANDSHAKE = 0x16  # the first byte of every TLS record that opens a connection
_REFUSAL = (
    b'{"errors":[{"code":"UNSUPPORTED",'
    b'"message":"this port speaks plain HTTP; TLS was attempted"}]}\n'
)
_PLAIN_HTTP_ONLY = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_REFUSAL)}\r\n\r\n".encode()
    + _REFUSAL
)


def _starts_tls(sock: socket.socket) -> bool:
    """Whether the bytes already received open a TLS handshake. Looks only at what is
    there: a client that has sent nothing yet is left to gthread's own waiting."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK)[:1] == bytes([_TLS_HANDSHAKE])
    except OSError:
        return False


def _refuse_tls(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(_PLAIN_HTTP_ONLY)
