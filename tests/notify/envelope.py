"""Checks an envelope against distribution's notification format, field by field."""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from app.registry.references import NAME_PATTERN

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v2+json"
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
EVENT_KEYS = {"id", "timestamp", "action", "target", "request", "actor", "source"}
TARGET_KEYS = {
    "mediaType",
    "digest",
    "size",
    "length",
    "repository",
    "fromRepository",
    "url",
    "tag",
    "references",
}
REQUEST_KEYS = {"id", "addr", "host", "method", "useragent"}


def _uuid(value: Any) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def check_envelope(headers: dict[str, str], body: Any, via_http: bool = True) -> list[str]:
    """Every way the envelope departs from the format; [] when it is valid."""
    problems: list[str] = []
    content_type = {k.lower(): v for k, v in headers.items()}.get("content-type")
    if content_type != EVENTS_MEDIA_TYPE:
        problems.append(f"Content-Type {content_type!r}")
    if not isinstance(body, dict) or set(body) != {"events"} or not body["events"]:
        return [*problems, f"envelope is not {{'events': [...]}}: {body!r}"]
    for event in body["events"]:
        problems += [f"{event.get('id')}: {p}" for p in check_event(event, via_http)]
    return problems


def check_event(event: dict[str, Any], via_http: bool = True) -> list[str]:
    problems: list[str] = []
    if set(event) != EVENT_KEYS:
        problems.append(f"keys {sorted(event)}")
        return problems
    if not _uuid(event["id"]):
        problems.append(f"id {event['id']!r} is not a UUID")
    stamp = event["timestamp"]
    if not isinstance(stamp, str) or not RFC3339.fullmatch(stamp):
        problems.append(f"timestamp {stamp!r} is not RFC 3339")
    else:
        parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            problems.append("timestamp has no zone")
    action = event["action"]
    if action not in ("push", "pull", "mount", "delete"):
        problems.append(f"action {action!r}")
    problems += _check_target(action, event["target"])
    request = event["request"]
    if set(request) != REQUEST_KEYS or not all(isinstance(v, str) for v in request.values()):
        problems.append(f"request {request!r}")
    elif via_http:
        if not request["id"] or not request["addr"] or not request["host"]:
            problems.append(f"request not filled in: {request!r}")
        if request["method"] not in ("GET", "PUT", "POST", "PATCH", "DELETE"):
            problems.append(f"request.method {request['method']!r}")
    actor = event["actor"]
    if not isinstance(actor, dict) or set(actor) - {"name"}:
        problems.append(f"actor {actor!r}")
    elif "name" in actor and (not isinstance(actor["name"], str) or not actor["name"]):
        problems.append(f"actor.name {actor['name']!r}")
    source = event["source"]
    if not isinstance(source, dict) or set(source) != {"addr", "instanceID"}:
        problems.append(f"source {source!r}")
    elif not source["addr"] or not _uuid(source["instanceID"]):
        problems.append(f"source not filled in: {source!r}")
    return problems


def _check_target(action: str, target: Any) -> list[str]:
    if not isinstance(target, dict) or set(target) - TARGET_KEYS:
        return [f"target {target!r}"]
    problems = []
    repo = target.get("repository")
    if not isinstance(repo, str) or not re.fullmatch(NAME_PATTERN, repo):
        problems.append(f"target.repository {repo!r}")
    describes_content = action != "delete" or "digest" in target
    if describes_content:
        wanted = {"mediaType", "digest", "repository", "url"}
        if action != "delete":
            wanted |= {"size", "length"}
        if not wanted <= set(target):
            problems.append(f"target lacks {sorted(wanted - set(target))}")
            return problems
        if not DIGEST.fullmatch(target["digest"]):
            problems.append(f"target.digest {target['digest']!r}")
        if not isinstance(target["mediaType"], str) or "/" not in target["mediaType"]:
            problems.append(f"target.mediaType {target['mediaType']!r}")
        size = target.get("size", 0)
        if not isinstance(size, int) or size < 0 or target.get("length", 0) != size:
            problems.append(f"target.size/length {target.get('size')!r}/{target.get('length')!r}")
        kind = "blobs" if target["mediaType"] == "application/octet-stream" else "manifests"
        if not target["url"].endswith(f"/v2/{repo}/{kind}/{target['digest']}"):
            problems.append(f"target.url {target['url']!r}")
    elif "tag" not in target and set(target) != {"repository"}:
        problems.append(f"delete target names neither digest, tag nor repository: {target!r}")
    if "tag" in target and not TAG.fullmatch(str(target["tag"])):
        problems.append(f"target.tag {target['tag']!r}")
    if ("fromRepository" in target) != (action == "mount"):
        problems.append("fromRepository belongs to mount events only")
    for ref in target.get("references", []):
        if not DIGEST.fullmatch(str(ref.get("digest"))) or not isinstance(ref.get("size"), int):
            problems.append(f"target.references entry {ref!r}")
    return problems
