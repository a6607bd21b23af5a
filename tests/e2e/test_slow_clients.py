"""Slow clients must not take the registry down: a request head trickling in holds no thread,
and one that never ends is answered 408 (app/gunicorn_worker.py)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time

import pytest
import requests

from tests.e2e.conftest import StartServer

SLOW = 60  # more connections than the test server's 2 workers x 8 threads


def _trickle(host: str, port: int, stop: threading.Event, head: bytes, pause: float) -> bytes:
    """Send `head` a byte at a time, `pause` seconds apart, until done or stopped; return
    what the server answered (b"" if nothing)."""
    with socket.create_connection((host, port), timeout=60) as sock:
        for byte in head:
            if stop.is_set():
                return b""
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # the server answered and closed
                break
            readable, _, _ = select.select([sock], [], [], pause)
            if readable:
                break
        sock.settimeout(30)
        with contextlib.suppress(OSError):
            return sock.recv(4096)
    return b""


@pytest.fixture
def slow_server(berth_server_factory: StartServer):  # type: ignore[no-untyped-def]
    return berth_server_factory(env={"BERTH_REQUEST_HEAD_TIMEOUT": "6s"}, name="slow")


def test_slow_heads_hold_no_thread(slow_server) -> None:  # type: ignore[no-untyped-def]
    host, port = slow_server.host.split(":")
    stop = threading.Event()
    never_ending = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    answers: list[bytes] = []

    def slow() -> None:
        answers.append(_trickle(host, int(port), stop, never_ending, 0.5))

    threads = [threading.Thread(target=slow, daemon=True) for _ in range(SLOW)]
    for thread in threads:
        thread.start()
    time.sleep(2)  # every slow client is connected and trickling
    timings = []
    session = requests.Session()
    for _ in range(20):
        started = time.monotonic()
        assert session.get(f"{slow_server.url}/v2/", timeout=10).status_code == 200
        timings.append(time.monotonic() - started)
        time.sleep(0.05)
    # A head that arrives slowly but whole is served like any other.
    finished = _trickle(host, int(port), threading.Event(), b"GET /v2/ HTTP/1.0\r\n\r\n", 0.1)
    assert finished.startswith(b"HTTP/1.0 200")
    # The never-ending heads are answered 408 once request_head_timeout (6 s) has passed.
    for thread in threads:
        thread.join(timeout=40)
    stop.set()
    assert max(timings) < 1.0, timings
    assert len(answers) == SLOW
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers[:3]
