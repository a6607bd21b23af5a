"""Metrics from a real `berth serve` with several gunicorn workers (multiprocess mode)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from tests.deploy.test_frontends import metric
from tests.e2e.conftest import BerthServer, StartServer

TIMEOUT = 30


def _workers(server: BerthServer) -> set[int]:
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children")
    return {int(pid) for pid in children.read_text().split()}


def _wait_for_new_workers(server: BerthServer, old: set[int], count: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = _workers(server)
        if len(current) == count and not current & old:
            try:
                if requests.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
        time.sleep(0.2)
    raise AssertionError(f"gunicorn did not replace its workers\n{server.log_tail()}")


def test_counts_survive_workers_and_add_up_across_them(
    berth_server_factory: StartServer,
) -> None:
    server = berth_server_factory()  # two workers
    # The first worker may answer before the master has forked the second.
    deadline = time.monotonic() + 30
    while len(workers := _workers(server)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(workers) == 2

    # Several connections at once, so both workers answer some.
    sessions = [requests.Session() for _ in range(4)]
    for i in range(40):
        assert sessions[i % 4].get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200
    data = os.urandom(300_000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(data), 32 * 1024):
            yield data[start : start + 32 * 1024]

    started = requests.post(f"{server.url}/v2/team/m/blobs/uploads/", timeout=TIMEOUT)
    location = server.url + started.headers["Location"]
    # Chunked, no Content-Length: bytes in are counted as read, not as declared.
    patched = requests.patch(location, data=chunks(), timeout=TIMEOUT)
    assert patched.status_code == 202

    def snapshot() -> tuple[float, float, float]:
        return (
            metric(server.url, "berth_http_requests_total", route="health.healthz", status="200"),
            metric(server.url, "berth_http_request_bytes_total", route="uploads.append_chunk"),
            metric(
                server.url,
                "berth_upload_request_duration_seconds_count",
                route="uploads.append_chunk",
            ),
        )

    assert snapshot() == (40.0, 300_000.0, 1.0)

    # Every worker dies; gunicorn starts new ones (child_exit runs for each). What the dead
    # ones counted stays in the totals: the numbers live in PROMETHEUS_MULTIPROC_DIR.
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    _wait_for_new_workers(server, workers, 2)
    healthz, bytes_in, uploads = snapshot()
    assert healthz >= 40.0  # plus the probe that saw the new workers up
    assert (bytes_in, uploads) == (300_000.0, 1.0)
