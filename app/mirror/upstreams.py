"""The `mirror_upstreams` setting, parsed once: each upstream's prefix, URL, credentials, TLS
settings, timeouts, tag TTL and retention, and how a request's repository name finds its
upstream.

Pure: no I/O. A bad entry raises ConfigError naming it down to the key
(`mirror_upstreams[1].ttl`), as every structured setting does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.config import ConfigError, parse_duration
from app.registry.references import NAME_MAX_LENGTH, is_valid_name

DEFAULT_TTL = 300.0  # seconds a cached tag is served before it is checked upstream again
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
# A pull is recorded at most this often per repository and worker; a tenth of a shorter
# retention, so that "unpulled for the retention" stays true to within a tenth.
PULL_RECORD_INTERVAL = 3600.0
_KEYS = {
    "prefix",
    "url",
    "username",
    "password",
    "ca_file",
    "insecure",
    "ttl",
    "connect_timeout",
    "read_timeout",
    "default",
    "retention",
    "retention_rules",
}
_RULE_KEYS = {"repository", "retention"}


def record_interval(retention: float | None) -> float:
    """Seconds between two recordings of a repository's last pull."""
    return PULL_RECORD_INTERVAL if retention is None else min(PULL_RECORD_INTERVAL, retention / 10)


@dataclass(frozen=True)
class RetentionRule:
    """Cached repositories matching `pattern` (Berth's names, an fnmatch glob whose `*` also
    crosses `/`) are removed after `retention` seconds unpulled; None keeps them."""

    pattern: str
    retention: float | None

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)


@dataclass(frozen=True)
class Upstream:
    prefix: str  # "docker.io": Berth's names under "docker.io/" come from here
    url: str  # "https://registry-1.docker.io", no trailing slash
    username: str = ""
    password: str = ""
    ca_file: str = ""  # PEM bundle to verify the upstream's certificate with
    insecure: bool = False  # skip certificate verification
    ttl: float = DEFAULT_TTL
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    default: bool = False  # unprefixed names that are not Berth's own come from here
    retention: float | None = None  # seconds unpulled before gc removes a cached repository
    retention_rules: tuple[RetentionRule, ...] = ()  # per repository; the first match wins

    def retention_for(self, name: str) -> float | None:
        """How long cached repository `name` may stay unpulled; None: for ever."""
        rule = next((r for r in self.retention_rules if r.matches(name)), None)
        return rule.retention if rule is not None else self.retention

    @property
    def retains(self) -> bool:
        """Whether any of its cached repositories can expire."""
        return self.retention is not None or any(r.retention for r in self.retention_rules)

    def __repr__(self) -> str:  # never the password, not even in a traceback
        return f"Upstream(prefix={self.prefix!r}, url={self.url!r})"


@dataclass(frozen=True)
class Route:
    """Where a request's repository lives: `repo` in Berth's cache, `remote` upstream."""

    upstream: Upstream
    repo: str
    remote: str
    # An unprefixed name sent to the default upstream: Berth's own repository of that name,
    # if there is one, wins (the caller checks; it takes a query).
    fallback: bool = False


def _string(entry: dict[str, Any], key: str, where: str, default: str = "") -> str:
    value = entry.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}.{key}: {value!r} is not a string")
    return value


def _bool(entry: dict[str, Any], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key}: {value!r} is not a boolean (true/false)")
    return value


def _seconds(entry: dict[str, Any], key: str, where: str, default: float) -> float:
    if key not in entry:
        return default
    return parse_duration(entry[key], f"{where}.{key}")


def _retention(raw: Any, where: str) -> float | None:
    if raw == "off":
        return None
    seconds = parse_duration(raw, where)
    if seconds <= 0:
        raise ConfigError(f'{where}: must be positive, or "off"')
    return seconds


def _retention_rules(raw: Any, where: str) -> tuple[RetentionRule, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of tables, got {raw!r}")
    rules = []
    for i, rule in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(rule, dict):
            raise ConfigError(f"{at}: expected a table, got {rule!r}")
        unknown = sorted(set(rule) - _RULE_KEYS)
        if unknown:
            raise ConfigError(f"{at}.{unknown[0]}: unknown key (known: repository, retention)")
        pattern = rule.get("repository")
        if not isinstance(pattern, str) or not pattern.strip():
            raise ConfigError(f'{at}.repository: must be a glob such as "docker.io/library/*"')
        if "retention" not in rule:
            raise ConfigError(f'{at}.retention: must be set (a duration, or "off")')
        rules.append(
            RetentionRule(pattern.strip(), _retention(rule["retention"], f"{at}.retention"))
        )
    return tuple(rules)


def parse_upstream(entry: Any, where: str) -> Upstream:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a table, got {entry!r}")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(sorted(_KEYS))})")
    prefix = _string(entry, "prefix", where).strip("/")
    if not prefix:
        raise ConfigError(f'{where}.prefix: must be set (e.g. "docker.io")')
    if not is_valid_name(prefix) or len(prefix) > NAME_MAX_LENGTH // 2:
        raise ConfigError(f"{where}.prefix: {prefix!r} is not a repository name prefix")
    url = _string(entry, "url", where).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}.url: {url!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigError(f"{where}.url: {url!r} must be the registry's root (no path or query)")
    username = _string(entry, "username", where)
    password = _string(entry, "password", where)
    if bool(username) != bool(password):
        raise ConfigError(f"{where}.password: username and password go together")
    upstream = Upstream(
        prefix=prefix,
        url=url,
        username=username,
        password=password,
        ca_file=_string(entry, "ca_file", where),
        insecure=_bool(entry, "insecure", where),
        ttl=_seconds(entry, "ttl", where, DEFAULT_TTL),
        connect_timeout=_seconds(entry, "connect_timeout", where, DEFAULT_CONNECT_TIMEOUT),
        read_timeout=_seconds(entry, "read_timeout", where, DEFAULT_READ_TIMEOUT),
        default=_bool(entry, "default", where),
        retention=_retention(entry["retention"], f"{where}.retention")
        if "retention" in entry
        else None,
        retention_rules=_retention_rules(
            entry.get("retention_rules", []), f"{where}.retention_rules"
        ),
    )
    for key in ("connect_timeout", "read_timeout"):
        if getattr(upstream, key) <= 0:
            raise ConfigError(f"{where}.{key}: must be positive")
    return upstream


def parse_upstreams(raw: Sequence[Any]) -> tuple[Upstream, ...]:
    """Every entry of `mirror_upstreams`; prefixes must not nest, one default at most."""
    upstreams = tuple(parse_upstream(e, f"mirror_upstreams[{i}]") for i, e in enumerate(raw))
    for i, upstream in enumerate(upstreams):
        for j, other in enumerate(upstreams[:i]):
            if _nested(upstream.prefix, other.prefix):
                raise ConfigError(
                    f"mirror_upstreams[{i}].prefix: {upstream.prefix!r} overlaps"
                    f" mirror_upstreams[{j}].prefix {other.prefix!r}"
                )
            if upstream.default and other.default:
                raise ConfigError(
                    f"mirror_upstreams[{i}].default: mirror_upstreams[{j}] is the default already"
                )
    return upstreams


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


@dataclass(frozen=True)
class Upstreams:
    """The configured upstreams and the routing of names onto them."""

    all: tuple[Upstream, ...] = ()

    @property
    def default(self) -> Upstream | None:
        return next((u for u in self.all if u.default), None)

    def owner(self, name: str) -> Upstream | None:
        """The upstream whose prefix `name` lies under (Berth's cache of it), if any."""
        return next((u for u in self.all if name.startswith(u.prefix + "/")), None)

    def by_namespace(self, ns: str) -> Upstream | None:
        """containerd's `?ns=docker.io`: the upstream mounted under that prefix."""
        ns = ns.strip().strip("/").lower()
        return next((u for u in self.all if u.prefix == ns), None)

    def route(self, name: str, ns: str | None = None) -> Route | None:
        """Where `name` (as a request names it) is served from; None: Berth's own.

        A name under a prefix belongs to that upstream. Else containerd's `ns` picks the
        upstream (its mirror requests carry the name as the upstream knows it), else the
        default upstream takes it, unless Berth has a repository of that name."""
        owner = self.owner(name)
        if owner is not None:
            return Route(owner, name, name[len(owner.prefix) + 1 :])
        upstream = self.by_namespace(ns) if ns else None
        fallback = False
        if upstream is None:
            upstream, fallback = self.default, True
        if upstream is None:
            return None
        return Route(upstream, f"{upstream.prefix}/{name}", name, fallback)
