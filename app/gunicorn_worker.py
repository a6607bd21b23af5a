"""gunicorn's gthread worker, changed so that slow clients hold no thread that others need,
and so that a burst of clients spreads over the workers.

- A request head still trickling in waits in the poller, not in a thread; one still
  incomplete after request_head_timeout is answered 408.
- A thread whose request body has no bytes to read waits without counting as busy: the
  pool has a thread for every connection (gunicorn's worker_connections, 1,000 by default),
  but at most `threads` of them run requests that have their bytes. Uploads over bad links
  (CI runners, people on trains) are normal traffic; 50 bodies trickling a byte a second
  held every thread of a default server before. A body that sends nothing for
  request_body_timeout is given up.
- A worker gives its free heap back once it has been idle a moment (app/malloc.py).
- A worker stops accepting new connections while `threads` of its connections are busy.
  gthread workers all accept from the one listening socket, and a connection stays with the
  worker that accepted it for as long as it is kept alive. A burst of clients (a CI fleet,
  a proxy opening its upstream connections, wrk) could land on one worker: one core, its
  threads fighting over one GIL, the other workers idle. Measured with wrk on the tag page:
  ~2,700 req/s when the 16 connections spread, ~800 when one worker took them all. Idle
  keep-alive connections and slow bodies do not count against the limit (worker_connections
  still caps the total).

It reads gthread's own counters (nr_conns, keepalived_conns, pending_conns) and its parser's
unreader, which is why setup.cfg pins gunicorn to 27.x.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import select
import selectors
import socket
import ssl
import threading
import time
from concurrent import futures
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from app.malloc import IdleTrim


class BalancedThreadWorker(ThreadWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting = _Counter()  # threads waiting for the next bytes of a request body
        self.idle_trim = IdleTrim()

    @property
    def worker_connections(self) -> int:
        # gthread accepts while nr_conns < worker_connections: that is, while fewer than
        # `threads` connections are in a request that is running (or about to be).
        idle = len(self.keepalived_conns) + len(self.pending_conns) + self.waiting.value
        return min(self._max_connections, idle + int(self.cfg.threads))

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._max_connections = value

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        super().wait_for_and_dispatch_events(timeout)
        # Connections neither kept alive nor gathering a head are in a request (or queued).
        busy = self.nr_conns - len(self.keepalived_conns) - len(self.pending_conns)
        self.idle_trim.tick(busy > 0, time.monotonic())

    def get_thread_pool(self) -> futures.ThreadPoolExecutor:
        # A thread for every connection the worker may hold; they start as they are needed.
        size = max(self._max_connections, int(self.cfg.threads))
        return futures.ThreadPoolExecutor(max_workers=size, thread_name_prefix="berth")

    # Request heads are read by the main loop: gthread gives a thread to any connection with
    # a byte to read, and the thread then blocks while the rest of the head trickles in (40
    # clients sending a byte a second held all 40 threads of a default server). Here the
    # bytes of a head are gathered as they come, and the connection gets a thread once the
    # head is whole; one still incomplete after request_head_timeout is answered 408. They
    # are read, not peeked at: a socket with unread bytes stays readable, and the poller
    # would wake for it again and again.

    def accept(self, listener: Any) -> None:
        if self.cfg.is_ssl:  # the TLS handshake happens in a thread, as gthread does it
            super().accept(listener)
            return
        try:
            client, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self._await_head(TConn(self.cfg, client, address, listener.getsockname()))

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        if self.cfg.is_ssl or conn.is_http2:
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._await_head(conn)

    def on_pending_socket_readable(self, conn: Any, client: Any) -> None:
        if self.cfg.is_ssl or conn.is_http2:
            super().on_pending_socket_readable(conn, client)
            return
        answer = self._gather_head(conn)
        if answer is _WAIT:
            return
        self.poller.unregister(client)
        self.pending_conns.remove(conn)
        self._head_done(conn, answer)

    def _await_head(self, conn: Any) -> None:
        """Into the poller until the head is there (at once if it already is)."""
        conn.sock.setblocking(False)
        answer = self._gather_head(conn)
        if answer is not _WAIT:
            self._head_done(conn, answer)
            return
        conn.timeout = time.monotonic() + self.cfg.keepalive  # gthread closes it then
        self.pending_conns.append(conn)
        readable = functools.partial(self.on_pending_socket_readable, conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, readable)

    def _gather_head(self, conn: Any) -> object:
        """Read what has arrived of the next request head: _WAIT for more, _READY when it
        is whole (or the client closed), or the answer that ends the connection."""
        if _read_ahead(conn):
            return _READY
        head: bytearray | None = getattr(conn, "berth_head", None)
        try:
            data = conn.sock.recv(_HEAD_READ)
        except BlockingIOError:
            return _WAIT
        except OSError:
            data = b""
        if head is None:
            if not data:
                return _READY  # closed before a byte: gthread ends it quietly
            if not conn.initialized and data[:1] == _TLS_HANDSHAKE:
                # A TLS ClientHello on this plain-HTTP port (docker tries TLS first with
                # every registry it was not told is insecure): a request line never comes.
                return _PLAIN_HTTP_ONLY
            head = conn.berth_head = bytearray()
            conn.berth_head_since = time.monotonic()
        head += data
        if not data or _head_complete(head):
            return _READY
        if time.monotonic() - conn.berth_head_since > self.head_timeout:
            return _HEAD_TIMEOUT
        return _WAIT

    def _head_done(self, conn: Any, answer: object) -> None:
        if isinstance(answer, bytes):
            _send(conn.sock, answer)
            self.nr_conns -= 1
            conn.close()
            return
        head = getattr(conn, "berth_head", None)
        conn.berth_head = None  # the next request on this connection starts afresh
        if not conn.initialized:
            conn.init()  # plain HTTP/1: makes the parser, reads nothing
        if head:
            conn.parser.unreader.unread(bytes(head))
        conn.data_ready = True
        self.enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        if self.cfg.is_ssl or conn.is_http2:
            return super().handle(conn)
        return self._handle_watched(conn)

    def _handle_watched(self, conn: Any) -> Any:
        """gthread's handling, with the parser reading through a _WatchedSocket."""
        if not conn.initialized:
            conn.sock.setblocking(True)
            conn.init()
        unreader = getattr(conn.parser, "unreader", None)
        if unreader is not None and not isinstance(unreader.sock, _WatchedSocket):
            unreader.sock = _WatchedSocket(unreader.sock, self)
        return super().handle(conn)

    def started_waiting(self) -> None:
        """A thread now waits for body bytes. If the worker was full before, the main loop
        stopped accepting (or is about to) and must look again now, not at its next 1 s
        tick. Decided by the counts, not by the accepting flag, which may not be set yet."""
        self.waiting.add(1)
        if self.nr_conns >= self.worker_connections - 1:
            self.method_queue.defer(_nothing)

    @functools.cached_property
    def head_timeout(self) -> float:
        return float(self._settings.request_head_timeout)

    @functools.cached_property
    def body_timeout(self) -> float:
        return float(self._settings.request_body_timeout)

    @property
    def _settings(self) -> Any:
        return self.wsgi.extensions["berth"].settings


def _nothing() -> None:
    pass


_READY, _WAIT = object(), object()


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self, delta: int) -> None:
        with self._lock:
            self.value += delta


class BodyTimeout(TimeoutError):
    """A request body sent nothing for request_body_timeout."""


class _WatchedSocket:
    """The socket as gunicorn's parser reads it. A read that would block waits for bytes
    with the thread counted as waiting (not busy), and gives up after the body timeout."""

    def __init__(self, sock: socket.socket, worker: BalancedThreadWorker) -> None:
        self._sock = sock
        self._worker = worker

    def recv(self, size: int) -> bytes:
        sock = self._sock
        bound = sock.gettimeout()  # gunicorn's drain of an unread body sets one
        if bound is None and not isinstance(sock, ssl.SSLSocket):
            # Most reads find bytes there already: one try that does not wait, rather than
            # a poll before every recv (a streamed PATCH went at ~2/3 of plain gthread's pace).
            try:
                return sock.recv(size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                pass
        elif _readable(sock, 0):
            return sock.recv(size)
        worker = self._worker
        wait = worker.body_timeout if bound is None else min(worker.body_timeout, bound)
        worker.started_waiting()
        try:
            if not _readable(sock, wait):
                raise BodyTimeout(f"no request bytes for {wait:g} s")
        finally:
            worker.waiting.add(-1)
        return sock.recv(size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


_TLS_HANDSHAKE = b"\x16"  # the first byte of every TLS record that opens a connection
_HEAD_MAX = 64 * 1024  # a head this long is left to gunicorn's own limits
_HEAD_READ = 16 * 1024


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


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether sock has bytes (or EOF) within timeout seconds. poll(), not select(): a
    worker holding many connections has descriptors past select's limit of 1024."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(timeout * 1000))


def _head_complete(data: bytearray) -> bool:
    return len(data) >= _HEAD_MAX or b"\r\n\r\n" in data or b"\n\n" in data


def _send(sock: socket.socket, answer: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(answer)
