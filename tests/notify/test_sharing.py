"""Several delivery workers on one outbox (as several server workers, `berth notify`
processes and instances are): each event is sent once, in order, to every endpoint."""

from __future__ import annotations

import time

from app.notifications import delivery as notify
from tests.notify.conftest import MakeRegistry
from tests.notify.receiver import Receiver

WORKERS = 4


def test_workers_share_the_outbox_without_sending_twice(
    make_registry: MakeRegistry, receiver: Receiver
) -> None:
    reg, registry = make_registry(
        [{"name": "a", "url": receiver.url("/a")}, {"name": "b", "url": receiver.url("/b")}]
    )
    receiver.delay = 0.01  # keep envelopes in flight while other workers look
    deliverers = [notify.Deliverer(reg, poll=0.05) for _ in range(WORKERS)]
    for deliverer in deliverers:
        deliverer.start()
    try:
        digests = [registry.push_blob("team/app", f"blob {i}".encode()) for i in range(60)]
        assert receiver.wait_for(len(digests), "/a") and receiver.wait_for(len(digests), "/b")
        time.sleep(0.5)  # a duplicate would arrive now
    finally:
        for deliverer in deliverers:
            deliverer.stop(timeout=10)
    for path in ("/a", "/b"):
        received = [e["target"]["digest"] for e in receiver.events(path)]
        assert received == digests  # every one, once, in order
    assert notify.counts(reg)["a"] == {"pending": 0, "sent": 60, "failed": 0}
