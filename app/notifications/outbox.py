"""The outbox: events written in the same transaction as the change they describe.

`record` inserts into the outbox *inside the caller's transaction*: the change and its event
commit together or not at all. `publish` is for pulls, which change nothing: one short
transaction of its own, and nothing at all is built while no endpoint is enabled (pulls are
the hot path). Delivery (delivery.py) finds the rows by polling, and this process's delivery
threads are woken as soon as a transaction that recorded events commits.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable

from sqlalchemy import event as sa_event
from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.db import Database
from app.db.models import NotificationDelivery, NotificationEvent
from app.notifications.endpoints import Endpoint, enabled
from app.notifications.events import Event

_listeners: set[threading.Event] = set()
_listeners_lock = threading.Lock()


def subscribe() -> threading.Event:
    flag = threading.Event()
    with _listeners_lock:
        _listeners.add(flag)
    return flag


def unsubscribe(flag: threading.Event) -> None:
    with _listeners_lock:
        _listeners.discard(flag)


def wake_all() -> None:
    with _listeners_lock:
        for flag in _listeners:
            flag.set()


def _wake(_session: Session) -> None:
    wake_all()


_INSERT_EVENT = insert(NotificationEvent).returning(NotificationEvent.id)
_INSERT_DELIVERY = insert(NotificationDelivery)


class Outbox:
    """The configured endpoints (disabled ones too, for status), and where events go."""

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self.endpoints = tuple(endpoints)
        self.enabled = enabled(self.endpoints)

    def wanted(self, event: Event) -> bool:
        return any(endpoint.accepts(event) for endpoint in self.enabled)

    def record(self, session: Session, events: Iterable[Event]) -> int:
        """Put events in the outbox within the caller's transaction, one delivery row per
        endpoint that wants each. Nothing is written when no endpoint wants an event."""
        if not self.enabled:
            return 0
        written = 0
        for item in events:
            names = [endpoint.name for endpoint in self.enabled if endpoint.accepts(item)]
            if not names:
                continue
            payload = json.dumps(item, separators=(",", ":"))
            event_id = session.scalar(_INSERT_EVENT, {"payload": payload})
            rows = [{"event_id": event_id, "endpoint": name, "status": "pending"} for name in names]
            session.execute(_INSERT_DELIVERY, rows)
            written += 1
        if written and not sa_event.contains(session, "after_commit", _wake):
            sa_event.listen(session, "after_commit", _wake, once=True)
        return written

    def publish(self, db: Database, build: Callable[[], Event]) -> None:
        """Record an event that goes with no change of its own (a pull), in a short
        transaction. The event is built only when some endpoint is enabled."""
        if not self.enabled:
            return
        event = build()
        if self.wanted(event):
            with db.transaction(write=True) as session:
                self.record(session, [event])
