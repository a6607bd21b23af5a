"""Slow clients must not take the registry down: a request head trickling in holds no thread,
and one that never ends is answered 408 (app/gunicorn_worker.py)."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
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


def _open_upload(url: str) -> str:
    answer = requests.post(f"{url}/v2/slow/body/blobs/uploads/", timeout=30)
    assert answer.status_code == 202
    return str(answer.headers["Location"])


def _patch_head(path: str, length: int) -> bytes:
    return (
        f"PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer, status line, headers and body (the server may send the head
    and the body in separate writes), read by the standard library's parser."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    status = f"HTTP/{response.version / 10:.1f} {response.status} {response.reason}\r\n"
    return (status + str(response.headers)).encode() + response.read()


@pytest.fixture
def body_server(berth_server_factory: StartServer):  # type: ignore[no-untyped-def]
    return berth_server_factory(env={"BERTH_REQUEST_BODY_TIMEOUT": "3s"}, name="body")


def test_slow_bodies_hold_no_thread_and_complete(body_server) -> None:  # type: ignore[no-untyped-def]
    """More upload bodies trickling than the server has threads: other clients are served
    meanwhile, and every slow upload still lands whole once its bytes are in."""
    host, port = body_server.host.split(":")
    content = b"slow but steady"
    locations = [_open_upload(body_server.url) for _ in range(SLOW)]
    sockets = []
    for location in locations:
        sock = socket.create_connection((host, int(port)), timeout=30)
        sock.sendall(_patch_head(location, len(content)))
        sockets.append(sock)
    for i in range(4):  # the bodies trickle; each byte within the body timeout (3 s)
        for sock in sockets:
            sock.sendall(content[i : i + 1])
        timings = []
        for _ in range(5):
            started = time.monotonic()
            assert requests.get(f"{body_server.url}/v2/", timeout=10).status_code == 200
            timings.append(time.monotonic() - started)
        assert max(timings) < 1.0, timings
        time.sleep(1)
    for sock in sockets:
        sock.sendall(content[4:])
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    for sock, location in zip(sockets, locations, strict=True):
        with sock:
            assert sock.recv(4096).startswith(b"HTTP/1.1 202")
        done = requests.put(f"{body_server.url}{location}?digest={digest}", timeout=30)
        assert done.status_code == 201, done.text
    blob = requests.get(f"{body_server.url}/v2/slow/body/blobs/{digest}", timeout=30)
    assert blob.content == content


def test_stalled_body_is_given_up(body_server) -> None:  # type: ignore[no-untyped-def]
    """A body that stops sending is answered 408 after request_body_timeout; the upload
    keeps what it had before that chunk, and the client can send the chunk again."""
    host, port = body_server.host.split(":")
    location = _open_upload(body_server.url)
    first = requests.patch(f"{body_server.url}{location}", data=b"abc", timeout=30)
    assert first.status_code == 202
    location = first.headers["Location"]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(_patch_head(location, 10) + b"def")
        started = time.monotonic()
        answer = _answer(sock)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"BLOB_UPLOAD_INVALID" in answer
    assert 2.5 < waited < 15, waited
    status = requests.get(f"{body_server.url}{location}", timeout=30)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-2"
    again = requests.patch(f"{body_server.url}{location}", data=b"def", timeout=30)
    assert again.status_code == 202
    digest = "sha256:" + hashlib.sha256(b"abcdef").hexdigest()
    location = again.headers["Location"]
    done = requests.put(f"{body_server.url}{location}?digest={digest}", timeout=30)
    assert done.status_code == 201, done.text
