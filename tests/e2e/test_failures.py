"""A real `berth serve` when the world misbehaves: a TLS client on the plain-HTTP port, the
database away for a while, the disk full. Clear answers, never a 500, and recovery."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import skip_or_fail
from tests.e2e.conftest import StartServer

MiB = 1024 * 1024


def test_tls_client_on_the_plain_port_is_answered_at_once(
    berth_server_factory: StartServer,
) -> None:
    server = berth_server_factory(name="tls-probe")
    host, port = server.host.split(":")
    context = ssl.create_default_context()
    started = time.monotonic()
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        pytest.raises(ssl.SSLError),  # the answer is plain HTTP, not a ServerHello
    ):
        context.wrap_socket(raw, server_hostname="registry.test")
    assert time.monotonic() - started < 5
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32))
        answer = raw.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b'"code":"UNSUPPORTED"' in answer and b"plain HTTP" in answer
    assert requests.get(f"{server.url}/v2/", timeout=10).status_code == 200


class Relay:
    """A TCP relay to PostgreSQL that the test can cut (every connection closed, new ones
    refused) and mend: a database outage as the registry sees it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = threading.Event()
        self.up.set()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up.clear()
        with self._lock:
            for end in self._sockets:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
            self._sockets.clear()

    def mend(self) -> None:
        self.up.set()

    def stop(self) -> None:
        self._stopped = True
        self.cut()
        self.listener.close()


@pytest.fixture
def relay(pg_database: str) -> Iterator[tuple[Relay, str]]:
    url = pg_database
    rest = url.split("@", 1)[1]
    hostport = rest.split("/", 1)[0]
    host, _, port = hostport.partition(":")
    relay = Relay((host, int(port or 5432)))
    yield relay, url.replace(hostport, f"127.0.0.1:{relay.port}")
    relay.stop()


@pytest.mark.postgres
def test_database_outage_answers_503_and_recovers(
    relay: tuple[Relay, str], berth_server_factory: StartServer
) -> None:
    cutter, url = relay
    server = berth_server_factory(database_url=url, name="outage")
    data = os.urandom(4096)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob = f"{server.url}/v2/team/app/blobs/{digest}"
    pushed = requests.post(
        f"{server.url}/v2/team/app/blobs/uploads/?digest={digest}", data=data, timeout=30
    )
    assert pushed.status_code == 201
    cutter.cut()
    try:
        for attempt in [
            lambda: requests.head(blob, timeout=30),
            lambda: requests.get(f"{server.url}/v2/team/app/manifests/v1", timeout=30),
            lambda: requests.post(f"{server.url}/v2/team/app/blobs/uploads/", timeout=30),
        ]:
            response = attempt()
            assert response.status_code == 503, response.text
            assert response.headers["Retry-After"].isdigit()
            if response.request.method != "HEAD":
                assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert requests.get(f"{server.url}/readyz", timeout=30).status_code == 503
    finally:
        cutter.mend()
    deadline = time.monotonic() + 30
    while requests.head(blob, timeout=30).status_code != 200:
        assert time.monotonic() < deadline, "did not recover after the database came back"
        time.sleep(0.5)
    assert requests.get(blob, timeout=30).content == data
    log = server.log()
    assert "Traceback" not in log
    assert log.count("database unavailable") <= 2  # one line per worker and outage


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs: a disk that fills up."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_507_and_keeps_what_it_had(
    small_disk: Path, berth_server_factory: StartServer
) -> None:
    server = berth_server_factory(storage_root=small_disk / "storage", name="full-disk")
    start = requests.post(f"{server.url}/v2/team/app/blobs/uploads/", timeout=30)
    location = server.url + start.headers["Location"]
    first = os.urandom(5 * MiB)
    kept = requests.patch(
        location, data=first, headers={"Content-Range": f"0-{len(first) - 1}"}, timeout=60
    )
    assert kept.status_code == 202
    location = server.url + kept.headers["Location"]
    refused = requests.patch(location, data=os.urandom(30 * MiB), timeout=120)
    assert refused.status_code == 507, refused.text
    assert "storage is full" in refused.json()["errors"][0]["message"]
    # What was accepted before stays, and the client can tell where the upload stands.
    assert requests.get(location, timeout=30).headers["Range"] == f"0-{len(first) - 1}"
    free_before = os.statvfs(small_disk).f_bavail
    assert requests.delete(location, timeout=30).status_code == 204
    assert os.statvfs(small_disk).f_bavail > free_before  # cancelling freed the space
    assert requests.get(f"{server.url}/readyz", timeout=30).status_code == 200
