"""The `mirror_upstreams` setting, parsed once: each upstream's prefix, URL, credentials, TLS
settings, timeouts and tag TTL, and how a request's repository name finds its upstream.

Pure: no I/O. A bad entry raises ConfigError naming it down to the key
(`mirror_upstreams[1].ttl`), as every structured setting does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from app.config import ConfigError, parse_duration
from app.registry.references import NAME_MAX_LENGTH, is_valid_name

DEFAULT_TTL = 300.0  # seconds a cached tag is served before it is checked upstream again
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 30.0
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
}


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
