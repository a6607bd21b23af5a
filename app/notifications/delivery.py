"""Webhook delivery: sends the outbox (app/notifications/outbox.py) to every endpoint.

- At least once: an event stays "pending" for an endpoint until a POST holding it got a
  2xx/3xx answer; only then is it marked "sent". A crash between the two resends it.
- In order per endpoint: one worker at a time holds an endpoint's lease (a row in
  notification_endpoint) and sends its oldest pending events, up to BATCH in one envelope.
  The lease is taken in a short transaction (SELECT ... FOR UPDATE SKIP LOCKED on
  PostgreSQL, the write lock on SQLite) and no transaction stays open during the POST.
  A worker that dies holding a lease loses it once `timeout + LEASE_GRACE` has passed.
- Several workers (threads in every server worker, `berth notify` processes, other
  instances) share the outbox; the lease keeps them from sending an event twice.
- Failures follow distribution's circuit breaker: retry at once until `threshold`
  consecutive failures, then wait `backoff` between attempts; never give up.
- Each endpoint has its own lease, state and thread, so one endpoint's outage delays no other.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from sqlalchemy import delete, exists, func, select, update

from app.db.models import NotificationDelivery, NotificationEndpoint, NotificationEvent
from app.db.upserts import insert_ignore
from app.notifications import events, outbox
from app.notifications.context import Context
from app.notifications.endpoints import Endpoint

log = logging.getLogger(__name__)

BATCH = 20  # events per envelope
LEASE_GRACE = 10.0  # seconds past the POST timeout before a silent worker's lease expires
POLL_INTERVAL = 1.0  # seconds between looks at the outbox when nothing woke us
PURGE_INTERVAL = 3600.0


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


@dataclass(frozen=True)
class Batch:
    event_ids: list[int]
    payloads: list[str]

    def envelope(self) -> bytes:
        # The payloads are stored JSON: join them rather than parse and re-encode.
        return ('{"events":[' + ",".join(self.payloads) + "]}").encode()


class EndpointWorker:
    """Delivers one endpoint's events. `step` sends at most one envelope."""

    def __init__(self, reg: Context, endpoint: Endpoint, owner: str) -> None:
        self.reg = reg
        self.endpoint = endpoint
        self.owner = owner
        self.http = requests.Session()
        self.headers = {"Content-Type": events.EVENTS_MEDIA_TYPE}
        for name, value in endpoint.headers:
            # requests takes one value per name; repeated names are joined as HTTP allows.
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value
        self._known = False

    def _blocked(self, state: NotificationEndpoint | None, now: datetime) -> float:
        """Seconds until this worker may send (0: now)."""
        if state is None:
            return 0.0
        wait = 0.0
        next_attempt = state.next_attempt_at
        if next_attempt and next_attempt > now:
            wait = (next_attempt - now).total_seconds()
        lease_until = state.lease_until
        if state.lease_owner not in (None, self.owner) and lease_until and lease_until > now:
            wait = max(wait, min((lease_until - now).total_seconds(), POLL_INTERVAL))
        return wait

    def _claim(self) -> tuple[Batch | None, float]:
        name = self.endpoint.name
        # A read-only look first: idle polling must not take SQLite's write lock.
        with self.reg.db.transaction() as session:
            pending = session.scalar(
                select(
                    exists().where(
                        NotificationDelivery.endpoint == name,
                        NotificationDelivery.status == "pending",
                    )
                )
            )
            if not pending:
                return None, POLL_INTERVAL
            state = session.get(NotificationEndpoint, name)
            wait = self._blocked(state, _now())
            if wait > 0:
                return None, wait
        with self.reg.db.transaction(write=True) as session:
            if not self._known:
                insert_ignore(
                    session,
                    NotificationEndpoint,
                    {"name": name, "failures": 0, "next_attempt_at": _now()},
                    ["name"],
                )
            query = select(NotificationEndpoint).where(NotificationEndpoint.name == name)
            if self.reg.db.dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            state = session.scalar(query)
            if state is None:  # another worker is claiming it this very moment
                return None, POLL_INTERVAL
            self._known = True
            now = _now()
            wait = self._blocked(state, now)
            if wait > 0:
                return None, wait
            rows = session.execute(
                select(NotificationDelivery.event_id, NotificationEvent.payload)
                .join(NotificationEvent, NotificationEvent.id == NotificationDelivery.event_id)
                .where(
                    NotificationDelivery.endpoint == name, NotificationDelivery.status == "pending"
                )
                .order_by(NotificationDelivery.event_id)
                .limit(BATCH)
            ).all()
            if not rows:
                return None, POLL_INTERVAL
            state.lease_owner = self.owner
            state.lease_until = now + timedelta(seconds=self.endpoint.timeout + LEASE_GRACE)
        return Batch([row.event_id for row in rows], [row.payload for row in rows]), 0.0

    def _post(self, batch: Batch) -> str | None:
        """None when delivered, else why not."""
        try:
            response = self.http.post(
                self.endpoint.url,
                data=batch.envelope(),
                headers=self.headers,
                timeout=self.endpoint.timeout,
                allow_redirects=False,
            )
            response.close()
        except requests.RequestException as exc:
            return f"{exc.__class__.__name__}: {exc}"[:1000]
        if 200 <= response.status_code < 400:
            return None
        return f"HTTP {response.status_code}"

    def _finish(self, batch: Batch, error: str | None) -> None:
        name = self.endpoint.name
        with self.reg.db.transaction(write=True) as session:
            query = select(NotificationEndpoint).where(NotificationEndpoint.name == name)
            if self.reg.db.dialect == "postgresql":
                query = query.with_for_update()
            state = session.scalar(query)
            assert state is not None
            now = _now()
            mine = (NotificationDelivery.endpoint == name) & NotificationDelivery.event_id.in_(
                batch.event_ids
            )
            if error is None:
                session.execute(
                    update(NotificationDelivery)
                    .where(mine, NotificationDelivery.status == "pending")
                    .values(status="sent", sent_at=now)
                )
                state.failures, state.next_attempt_at, state.last_error = 0, now, None
            else:
                session.execute(
                    update(NotificationDelivery)
                    .where(mine)
                    .values(failures=NotificationDelivery.failures + 1)
                )
                state.failures += 1
                state.last_error = error
                backing_off = state.failures >= self.endpoint.threshold
                delay = self.endpoint.backoff if backing_off else 0.0
                state.next_attempt_at = now + timedelta(seconds=delay)
            if state.lease_owner == self.owner:
                state.lease_owner, state.lease_until = None, None
        if error is None:
            log.debug("endpoint %s: delivered %d event(s)", name, len(batch.event_ids))
        else:
            log.warning("endpoint %s: delivery failed (%s), will retry", name, error)

    def step(self) -> float:
        """Send the oldest pending events if this worker may. Returns how long to wait before
        the next step is worth taking (0: at once)."""
        batch, wait = self._claim()
        if batch is None:
            return wait
        error = self._post(batch)
        self._finish(batch, error)
        return 0.0


def purge(reg: Context, retention: float | None = None) -> int:
    """Forget delivered events older than the retention; returns how many deliveries went."""
    seconds = reg.settings.notifications_retention if retention is None else retention
    cutoff = _now() - timedelta(seconds=seconds)
    with reg.db.transaction(write=True) as session:
        result = session.execute(
            delete(NotificationDelivery).where(
                NotificationDelivery.status == "sent", NotificationDelivery.sent_at < cutoff
            )
        )
        orphaned = ~exists().where(NotificationDelivery.event_id == NotificationEvent.id)
        session.execute(
            delete(NotificationEvent).where(NotificationEvent.created_at < cutoff, orphaned)
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


class Deliverer:
    """Every enabled endpoint's worker: one thread per endpoint in `start`/`run`, or all of
    them in turn in `deliver_once` (tests and scripts)."""

    def __init__(self, reg: Context, poll: float = POLL_INTERVAL) -> None:
        self.reg = reg
        self.poll = poll
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.workers = [EndpointWorker(reg, ep, self.owner) for ep in reg.outbox.enabled]
        self.stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def deliver_once(self) -> int:
        """Every endpoint sends what it may, until nothing is due. Returns envelopes sent."""
        sent = 0
        for worker in self.workers:
            while worker.step() == 0.0:
                sent += 1
        return sent

    def _loop(self, worker: EndpointWorker) -> None:
        wake = outbox.subscribe()
        try:
            while not self.stopping.is_set():
                try:
                    wait = worker.step()
                except Exception:  # the database may be away for a while: keep trying
                    log.exception("endpoint %s: delivery loop error", worker.endpoint.name)
                    wait = self.poll
                if wait > 0:
                    wake.wait(min(wait, self.poll))
                    wake.clear()
        finally:
            outbox.unsubscribe(wake)

    def _purge_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                purge(self.reg)
            except Exception:
                log.exception("purging delivered notifications failed")
            self.stopping.wait(PURGE_INTERVAL)

    def start(self) -> None:
        """Run in daemon threads: one per endpoint, one purging old deliveries."""
        for worker in self.workers:
            thread = threading.Thread(
                target=self._loop, args=(worker,), name=f"berth-notify-{worker.endpoint.name}"
            )
            thread.daemon = True
            thread.start()
            self._threads.append(thread)
        if self.workers:
            purger = threading.Thread(target=self._purge_loop, name="berth-notify-purge")
            purger.daemon = True
            purger.start()
            self._threads.append(purger)

    def stop(self, timeout: float | None = None) -> None:
        self.stopping.set()
        outbox.wake_all()
        for thread in self._threads:
            thread.join(timeout)


def start_in_server(reg: Context) -> Deliverer | None:
    """A gunicorn worker's delivery threads, unless settings leave delivery to `berth notify`."""
    if not reg.settings.notifications_in_server or not reg.outbox.enabled:
        return None
    deliverer = Deliverer(reg)
    deliverer.start()
    return deliverer


def counts(reg: Context) -> dict[str, dict[str, int]]:
    """Per endpoint: events pending, events sent (kept for notifications_retention) and
    failed delivery attempts of those events. For `berth notify status` and /metrics."""
    result = {ep.name: {"pending": 0, "sent": 0, "failed": 0} for ep in reg.outbox.endpoints}
    with reg.db.transaction() as session:
        rows = session.execute(
            select(
                NotificationDelivery.endpoint,
                NotificationDelivery.status,
                func.count(),
                func.coalesce(func.sum(NotificationDelivery.failures), 0),
            ).group_by(NotificationDelivery.endpoint, NotificationDelivery.status)
        ).all()
    for endpoint, status, number, failures in rows:
        entry = result.setdefault(endpoint, {"pending": 0, "sent": 0, "failed": 0})
        if status in ("pending", "sent"):
            entry[status] += int(number)
        entry["failed"] += int(failures)
    return result


def status(reg: Context) -> list[dict[str, Any]]:
    """counts() plus what an operator needs to see why an endpoint is behind."""
    by_name = {ep.name: ep for ep in reg.outbox.endpoints}
    numbers = counts(reg)
    with reg.db.transaction() as session:
        states = {row.name: row for row in session.scalars(select(NotificationEndpoint))}
        oldest = dict(
            session.execute(
                select(NotificationDelivery.endpoint, func.min(NotificationEvent.created_at))
                .join(NotificationEvent, NotificationEvent.id == NotificationDelivery.event_id)
                .where(NotificationDelivery.status == "pending")
                .group_by(NotificationDelivery.endpoint)
            ).all()
        )
    report = []
    for name, figures in numbers.items():
        endpoint, state = by_name.get(name), states.get(name)
        if endpoint is None:
            condition = "not configured"
        else:
            condition = "disabled" if endpoint.disabled else "enabled"
        report.append(
            {
                "name": name,
                "url": endpoint.url if endpoint else "",
                "state": condition,
                **figures,
                "consecutive_failures": state.failures if state else 0,
                "next_attempt": _iso(state.next_attempt_at) if state else None,
                "oldest_pending": _iso(oldest.get(name)),
                "last_error": state.last_error if state else None,
            }
        )
    return report
