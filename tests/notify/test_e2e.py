"""Real `berth serve` (gunicorn, delivery threads in each worker) and a real `berth notify`
process on one PostgreSQL database, sending to a real receiver that goes down and comes back,
and Berth killed with SIGKILL while events are pending. Nothing may be lost; the figures
(events sent, received, duplicates) are printed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, text

from app.db.session import engine_url
from tests.e2e.conftest import BERTH, BerthServer, StartServer
from tests.notify.envelope import check_envelope
from tests.notify.receiver import Receiver

pytestmark = [pytest.mark.postgres, pytest.mark.e2e]

IMAGES = 10  # each: config + layer + manifest pushed, manifest pulled = 4 events
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _push_and_pull(server: BerthServer, index: int) -> None:
    repo = f"team/app{index % 3}"
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": index}).encode()
    layer = os.urandom(2048)
    for blob in (config, layer):
        url = f"{server.url}/v2/{repo}/blobs/uploads/?digest={_digest(blob)}"
        assert requests.post(url, data=blob, timeout=30).status_code == 201
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    url = f"{server.url}/v2/{repo}/manifests/v{index}"
    put = requests.put(url, data=manifest, headers={"Content-Type": OCI_MANIFEST}, timeout=30)
    assert put.status_code == 201, put.text
    assert requests.get(url, headers={"Accept": OCI_MANIFEST}, timeout=30).status_code == 200


class Outbox:
    """Reads the outbox straight from the database: what Berth has promised to send."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(engine_url(url))

    def event_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT payload FROM notification_event ORDER BY id"))
            return [json.loads(row.payload)["id"] for row in rows]

    def pending(self) -> int:
        with self.engine.connect() as conn:
            query = "SELECT count(*) FROM notification_delivery WHERE status = 'pending'"
            return int(conn.execute(text(query)).scalar_one())


@pytest.fixture
def outbox(pg_database: str) -> Iterator[Outbox]:
    box = Outbox(pg_database)
    yield box
    box.engine.dispose()


StartNotify = Callable[[dict[str, str]], subprocess.Popen[bytes]]


@pytest.fixture
def start_notify(tmp_path: Path) -> Iterator[StartNotify]:
    """Starts `berth notify` processes (own process group each); all killed at teardown."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"notify-{len(processes)}.log").open("wb")
        process = subprocess.Popen(
            [str(BERTH), "notify", "--poll", "0.2"],
            cwd=tmp_path,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _env(database_url: str, storage: Path, receiver: Receiver) -> dict[str, str]:
    endpoint = {
        "name": "hook",
        "url": receiver.url(),
        "timeout": "2s",
        "threshold": 3,
        "backoff": "300ms",
    }
    return {
        "BERTH_DATABASE_URL": database_url,
        "BERTH_STORAGE_ROOT": str(storage),
        "BERTH_NOTIFICATIONS": json.dumps([endpoint]),
    }


def _figures(
    label: str, sent: list[str], receiver: Receiver, capsys, **extra: int
) -> dict[str, int]:
    received = [event["id"] for event in receiver.events()]
    figures = {
        "sent": len(sent),
        "received": len(set(received)),
        "duplicates": len(received) - len(set(received)),
        "envelopes": len(receiver.delivered()),
        **extra,
    }
    with capsys.disabled():
        print(f"\n[notify {label}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    return figures


def _check_all_arrived(sent: list[str], receiver: Receiver) -> None:
    received = [event["id"] for event in receiver.events()]
    assert set(received) == set(sent), f"lost: {len(set(sent) - set(received))}"
    first_seen = list(dict.fromkeys(received))
    assert first_seen == sent, "events arrived out of order"
    for request in receiver.delivered():
        assert check_envelope(request.headers, request.json()) == []


def test_receiver_outage_loses_nothing(
    pg_database: str,
    berth_server_factory: StartServer,
    start_notify: StartNotify,
    outbox: Outbox,
    tmp_path: Path,
    capsys,
) -> None:
    receiver = Receiver()  # not started: the receiver is down
    storage = tmp_path / "storage"
    env = _env(pg_database, storage, receiver)
    server = berth_server_factory(database_url=pg_database, storage_root=storage, env=env)
    start_notify(env)
    try:
        for index in range(IMAGES):
            _push_and_pull(server, index)
        time.sleep(3)  # down for a while: every worker keeps failing and backing off
        status = subprocess.run(
            [str(BERTH), "notify", "status", "--json"],
            env={**os.environ, **env},
            capture_output=True,
            timeout=60,
            check=True,
        )
        (hook,) = json.loads(status.stdout)
        assert hook["pending"] == 4 * IMAGES and hook["failed"] > 0
        assert hook["last_error"].startswith("ConnectionError")

        receiver.start()
        sent = outbox.event_ids()
        assert receiver.wait_for(len(sent), timeout=60), f"{outbox.pending()} still pending"
        time.sleep(1)  # a duplicate would arrive now
    finally:
        receiver.stop()
    figures = _figures("outage", sent, receiver, capsys, failed_attempts=hook["failed"])
    assert figures["sent"] == 4 * IMAGES
    _check_all_arrived(sent, receiver)
    assert figures["duplicates"] == 0  # the normal case: no lease expired, nothing twice
    assert outbox.pending() == 0


def test_events_pending_at_sigkill_are_delivered_after_restart(
    pg_database: str,
    berth_server_factory: StartServer,
    start_notify: StartNotify,
    outbox: Outbox,
    tmp_path: Path,
    capsys,
) -> None:
    receiver = Receiver()  # down while the images are pushed
    storage = tmp_path / "storage"
    env = _env(pg_database, storage, receiver)
    server = berth_server_factory(database_url=pg_database, storage_root=storage, env=env)
    notifier = start_notify(env)
    try:
        for index in range(IMAGES):
            _push_and_pull(server, index)
        # Up again but slow: kill Berth while an envelope is in flight.
        receiver.delay = 1.0
        receiver.start()
        deadline = time.monotonic() + 30
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.received, "nothing was being delivered"
        for process in (server.process, notifier):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        pending_at_kill = outbox.pending()
        assert pending_at_kill > 0
        receiver.delay = 0.0

        restarted = berth_server_factory(
            database_url=pg_database, storage_root=storage, env=env, name="restarted"
        )
        start_notify(env)
        sent = outbox.event_ids()
        assert receiver.wait_for(len(sent), timeout=90), f"{outbox.pending()} still pending"
        time.sleep(1)
        assert requests.get(f"{restarted.url}/v2/", timeout=10).status_code == 200
    finally:
        receiver.stop()
    figures = _figures("sigkill", sent, receiver, capsys, pending_at_kill=pending_at_kill)
    assert figures["sent"] == 4 * IMAGES
    _check_all_arrived(sent, receiver)
    # At least once: only the envelope in flight at the kill may arrive twice.
    assert figures["duplicates"] <= 20
    assert outbox.pending() == 0
