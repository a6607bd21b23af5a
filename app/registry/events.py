"""Registry events in distribution's notification format, written to the outbox.

An event is built from the change a service makes and inserted by `record` into the outbox
*inside the service's own transaction*: the change and its event commit together or not at
all. `publish` is for pulls, which change nothing: one short transaction of its own.
Delivery is app/registry/notify.py's job.

Envelope shape (https://distribution.github.io/distribution/about/notifications/):
    {"id", "timestamp", "action": push|pull|mount|delete,
     "target": {"mediaType", "digest", "size", "length", "repository", "fromRepository",
                "url", "tag", "references"},
     "request": {"id", "addr", "host", "method", "useragent"},
     "actor": {"name"}, "source": {"addr", "instanceID"}}
As in distribution, target and actor fields that do not apply are left out (a tag deletion
has no digest, a mount is the only event with fromRepository, an anonymous actor is {}).
"""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from app.db.models import Manifest, NotificationDelivery, NotificationEvent, Tag
from app.registry.context import Registry
from app.registry.endpoints import enabled

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
# distribution describes every blob as application/octet-stream; `ignore.mediatypes` relies on it.
BLOB_MEDIA_TYPE = "application/octet-stream"
# One id per process, like distribution's per-registry-process instance id.
INSTANCE_ID = str(uuid.uuid4())
_HOSTNAME = socket.gethostname()

Event = dict[str, Any]

# Set after a transaction that recorded events commits, so this process's delivery threads
# send at once instead of at their next poll (other processes find them by polling).
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


@dataclass(frozen=True)
class RequestInfo:
    """Who asked for a change, as the view saw it. Services take it as an optional argument
    (default None: a CLI or a test calling a service still gets its events recorded)."""

    id: str = ""
    addr: str = ""
    host: str = ""
    method: str = ""
    useragent: str = ""
    actor: str = ""
    # scheme://host the client used, for target.url; empty gives a path-only url.
    base_url: str = ""
    # The port this instance listens on, for source.addr.
    server_port: str = ""


_NO_REQUEST = RequestInfo()


def _timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _event(action: str, target: dict[str, Any], origin: RequestInfo | None) -> Event:
    origin = origin or _NO_REQUEST
    source_addr = f"{_HOSTNAME}:{origin.server_port}" if origin.server_port else _HOSTNAME
    return {
        "id": str(uuid.uuid4()),
        "timestamp": _timestamp(),
        "action": action,
        "target": {key: value for key, value in target.items() if value not in (None, "", [])},
        "request": {
            "id": origin.id,
            "addr": origin.addr,
            "host": origin.host,
            "method": origin.method,
            "useragent": origin.useragent,
        },
        "actor": {"name": origin.actor} if origin.actor else {},
        "source": {"addr": source_addr, "instanceID": INSTANCE_ID},
    }


def _url(origin: RequestInfo | None, repo: str, kind: str, digest: str) -> str:
    return f"{origin.base_url if origin else ''}/v2/{repo}/{kind}/{digest}"


def blob_event(
    action: str,
    repo: str,
    digest: str,
    size: int | None,
    origin: RequestInfo | None = None,
    from_repository: str | None = None,
) -> Event:
    """push (upload completed), pull, mount (with fromRepository) or delete of a blob."""
    target = {
        "mediaType": BLOB_MEDIA_TYPE,
        "digest": digest,
        "size": size,
        "length": size,
        "repository": repo,
        "fromRepository": from_repository,
        "url": _url(origin, repo, "blobs", digest),
    }
    return _event(action, target, origin)


def references(payload: bytes) -> list[dict[str, Any]]:
    """The descriptors a manifest points at (config and layers, or an index's manifests)."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return []
    found = [doc.get("config"), *(doc.get("layers") or []), *(doc.get("manifests") or [])]
    return [
        {key: item[key] for key in ("mediaType", "digest", "size") if key in item}
        for item in found
        if isinstance(item, dict) and "digest" in item
    ]


def manifest_event(
    action: str,
    repo: str,
    digest: str,
    media_type: str | None,
    payload: bytes | None,
    tag: str | None = None,
    origin: RequestInfo | None = None,
) -> Event:
    """push (with references), pull or delete of a manifest; tag when addressed by tag."""
    size = len(payload) if payload is not None else None
    target = {
        "mediaType": media_type,
        "digest": digest,
        "size": size,
        "length": size,
        "repository": repo,
        "url": _url(origin, repo, "manifests", digest),
        "tag": tag,
        "references": references(payload) if action == "push" and payload else None,
    }
    return _event(action, target, origin)


def tag_deleted(repo: str, tag: str, origin: RequestInfo | None = None) -> Event:
    return _event("delete", {"repository": repo, "tag": tag}, origin)


def repository_deleted(repo: str, origin: RequestInfo | None = None) -> Event:
    return _event("delete", {"repository": repo}, origin)


def _wake(_session: Session) -> None:
    wake_all()


def record(session: Session, reg: Registry, events: Iterable[Event]) -> int:
    """Put events in the outbox within the caller's transaction, one delivery row per endpoint
    that wants each. Nothing is written when no endpoint is enabled or all ignore the event."""
    endpoints = enabled(reg.settings)
    if not endpoints:
        return 0
    written = 0
    for item in events:
        names = [endpoint.name for endpoint in endpoints if endpoint.accepts(item)]
        if not names:
            continue
        event_id = session.scalar(
            insert(NotificationEvent)
            .values(payload=json.dumps(item, separators=(",", ":")))
            .returning(NotificationEvent.id)
        )
        session.execute(
            insert(NotificationDelivery),
            [{"event_id": event_id, "endpoint": name, "status": "pending"} for name in names],
        )
        written += 1
    if written and not sa_event.contains(session, "after_commit", _wake):
        sa_event.listen(session, "after_commit", _wake, once=True)
    return written


def wanted(reg: Registry, event: Event) -> bool:
    return any(endpoint.accepts(event) for endpoint in enabled(reg.settings))


def publish(reg: Registry, build: Callable[[], Event]) -> None:
    """Record an event that goes with no change of its own (a pull), in a short transaction.
    The event is built only when notifications are on: pulls are the hot path."""
    if not enabled(reg.settings):
        return
    event = build()
    if wanted(reg, event):
        with reg.db.transaction(write=True) as session:
            record(session, reg, [event])


def record_manifest_deleted(
    session: Session, reg: Registry, repo: str, manifest_id: int, origin: RequestInfo | None
) -> None:
    """Before a manifest and its tags are deleted: the manifest's delete event, then one per
    tag that goes with it (distribution untags too, and says so)."""
    if not enabled(reg.settings):
        return
    row = session.execute(
        select(Manifest.digest, Manifest.media_type, Manifest.size).where(
            Manifest.id == manifest_id
        )
    ).one()
    tags = session.scalars(
        select(Tag.name).where(Tag.manifest_id == manifest_id).order_by(Tag.name)
    )
    gone = manifest_event("delete", repo, row.digest, row.media_type, None, origin=origin)
    gone["target"]["size"] = gone["target"]["length"] = row.size
    record(session, reg, [gone, *(tag_deleted(repo, tag, origin) for tag in tags)])
