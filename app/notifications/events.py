"""Registry events in distribution's notification format.

A service builds an event from the change it makes and hands it to the outbox
(app/notifications/outbox.py) inside its own transaction. Delivery is delivery.py's job.

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
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
# distribution describes every blob as application/octet-stream; `ignore.mediatypes` relies on it.
BLOB_MEDIA_TYPE = "application/octet-stream"
# One id per process, like distribution's per-registry-process instance id.
INSTANCE_ID = str(uuid.uuid4())
_HOSTNAME = socket.gethostname()

Event = dict[str, Any]


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
