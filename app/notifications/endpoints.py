"""Webhook endpoint settings, with the reference registry's (distribution's) names and meanings,
so an existing `notifications.endpoints` section carries over:

    [[notifications]]
    name = "ci"                      # required, unique: delivery state is kept per name
    url = "https://ci.example/hook"  # required, http(s)
    disabled = false                 # a disabled endpoint gets no events at all
    headers = { Authorization = ["Bearer s3cret"] }   # values: a string or a list of strings
    timeout = "1s"                   # per POST (default 1s)
    threshold = 10                   # consecutive failures before backing off (default 10)
    backoff = "1s"                   # wait between attempts once past the threshold (default 1s)
    ignore = { mediatypes = ["application/octet-stream"], actions = ["pull"] }

Durations take the one grammar of app/config.py: Go's ("500ms", "1m30s") plus days ("1d"),
or plain seconds. distribution's deprecated `ignoredmediatypes` list is accepted too.
Parsed once, by the composition root (app/context.py), which keeps the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from app.config import parse_duration

ACTIONS = ("push", "pull", "mount", "delete")
DEFAULT_TIMEOUT = 1.0
DEFAULT_THRESHOLD = 10
DEFAULT_BACKOFF = 1.0
_KEYS = {
    "name",
    "disabled",
    "url",
    "headers",
    "timeout",
    "threshold",
    "backoff",
    "ignore",
    "ignoredmediatypes",
}


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    disabled: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    threshold: int = DEFAULT_THRESHOLD
    backoff: float = DEFAULT_BACKOFF
    ignore_mediatypes: frozenset[str] = field(default_factory=frozenset)
    ignore_actions: frozenset[str] = field(default_factory=frozenset)

    def accepts(self, event: Mapping[str, Any]) -> bool:
        """distribution's ignore rules: drop an event by its action or its target's media type."""
        if event.get("action") in self.ignore_actions:
            return False
        return event.get("target", {}).get("mediaType") not in self.ignore_mediatypes


def _strings(raw: Any, where: str) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise ValueError(f"{where}: expected a list of strings, got {raw!r}")
    return raw


def _headers(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a table of header names to values")
    pairs: list[tuple[str, str]] = []
    for key, value in raw.items():
        # distribution takes http.Header, a list of values per name; a single string is fine too.
        values = [value] if isinstance(value, str) else _strings(value, f"{where}.{key}")
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", str(key)):
            raise ValueError(f"{where}: {key!r} is not a valid header name")
        for item in values:
            if "\n" in item or "\r" in item:
                raise ValueError(f"{where}.{key}: header values cannot contain line breaks")
            pairs.append((str(key), item))
    return tuple(pairs)


def parse_endpoint(raw: Any, index: int) -> Endpoint:
    where = f"notifications[{index}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a table, got {raw!r}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    name, url = raw.get("name"), raw.get("url")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ValueError(f"{where}.name: required, a non-empty string of at most 255 characters")
    where = f"notifications[{name}]"
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{where}.url: required, an http:// or https:// URL, got {url!r}")
    disabled = raw.get("disabled", False)
    if not isinstance(disabled, bool):
        raise ValueError(f"{where}.disabled: {disabled!r} is not true or false")
    threshold = raw.get("threshold", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
        raise ValueError(f"{where}.threshold: {threshold!r} is not a non-negative integer")
    timeout = parse_duration(raw.get("timeout", 0), f"{where}.timeout")
    backoff = parse_duration(raw.get("backoff", 0), f"{where}.backoff")
    ignore = raw.get("ignore") or {}
    if not isinstance(ignore, Mapping) or set(ignore) - {"mediatypes", "actions"}:
        raise ValueError(f"{where}.ignore: expected a table with mediatypes and/or actions")
    actions = _strings(ignore.get("actions"), f"{where}.ignore.actions")
    bad = [action for action in actions if action not in ACTIONS]
    if bad:
        raise ValueError(f"{where}.ignore.actions: {bad} not among {', '.join(ACTIONS)}")
    mediatypes = _strings(ignore.get("mediatypes"), f"{where}.ignore.mediatypes")
    mediatypes += _strings(raw.get("ignoredmediatypes"), f"{where}.ignoredmediatypes")
    # Zero means "the default", as in distribution's EndpointConfig.defaults().
    return Endpoint(
        name=name,
        url=str(url),
        disabled=disabled,
        headers=_headers(raw.get("headers"), f"{where}.headers"),
        timeout=timeout or DEFAULT_TIMEOUT,
        threshold=threshold or DEFAULT_THRESHOLD,
        backoff=backoff or DEFAULT_BACKOFF,
        ignore_mediatypes=frozenset(mediatypes),
        ignore_actions=frozenset(actions),
    )


def parse_endpoints(raw: Any) -> list[Endpoint]:
    """Every configured endpoint, disabled ones included; ValueError names a bad one."""
    if not isinstance(raw, list):
        raise ValueError(f"expected a list of endpoint tables, got {raw!r}")
    endpoints = [parse_endpoint(item, i) for i, item in enumerate(raw)]
    names = [endpoint.name for endpoint in endpoints]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"endpoint names must be unique: {', '.join(duplicates)}")
    return endpoints


def enabled(endpoints: list[Endpoint] | tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    return tuple(endpoint for endpoint in endpoints if not endpoint.disabled)
