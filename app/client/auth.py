"""Credentials and the registry auth handshake: anonymous, Basic, and Docker's bearer tokens.

A registry says how it wants to be spoken to in the `WWW-Authenticate` header of a 401:
`Basic realm=...`, or `Bearer realm=...,service=...,scope=...`, where the realm is a token
endpoint that trades credentials (or none) for a token good for that scope. `Session` keeps
what it learned per registry (the scheme, and tokens per scope until they expire), so only
the first request of each scope pays for the round trip.

With no credentials given, those docker and podman saved are used: $REGISTRY_AUTH_FILE,
${XDG_RUNTIME_DIR}/containers/auth.json, ~/.config/containers/auth.json, then
$DOCKER_CONFIG/config.json or ~/.docker/config.json (podman's order). Credential helpers
(`credsStore`, `credHelpers`) are not run.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from app.client.errors import AuthError

# A token without expires_in lives 60 s (the token spec's default); renewed this early.
DEFAULT_TOKEN_TTL = 60.0
RENEW_BEFORE = 10.0
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" or "bearer", lowercased
    params: dict[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge | None:
        """The first challenge of a WWW-Authenticate header (registries send one)."""
        header = header.strip()
        if not header:
            return None
        scheme, _, rest = header.partition(" ")
        params = {
            key.lower(): (quoted.replace('\\"', '"') if quoted is not None else bare)
            for key, quoted, bare in _PARAM.findall(rest)
        }
        return cls(scheme.lower(), params)


def auth_files() -> Iterator[Path]:
    """Where docker and podman keep saved logins, in the order they are consulted."""
    if os.environ.get("REGISTRY_AUTH_FILE"):
        yield Path(os.environ["REGISTRY_AUTH_FILE"])
    if os.environ.get("XDG_RUNTIME_DIR"):
        yield Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    yield Path(config_home) / "containers" / "auth.json"
    docker_dir = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    yield Path(docker_dir) / "config.json"


def default_auth_file() -> Path:
    """Where `berth login` writes: the first of auth_files() that exists, else podman's
    runtime file when XDG_RUNTIME_DIR is set, else ~/.docker/config.json."""
    files = list(auth_files())
    for path in files:
        if path.is_file():
            return path
    if os.environ.get("REGISTRY_AUTH_FILE"):
        return files[0]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    return files[-1]


def _entry_host(key: str) -> str:
    # Keys are "host[:port]", sometimes a URL ("https://index.docker.io/v1/") or "host/path".
    if "://" in key:
        key = urlsplit(key).netloc
    return key.split("/", 1)[0].lower()


def read_auth_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise AuthError(f"{path}: cannot read saved credentials: {exc}") from exc
    return data if isinstance(data, dict) else {}


def saved_credentials(host: str, files: list[Path] | None = None) -> Credentials | None:
    """Credentials saved for `host` ("host:port") by docker login, podman login or berth login."""
    host = host.lower()
    for path in files if files is not None else auth_files():
        auths = read_auth_file(path).get("auths")
        if not isinstance(auths, dict):
            continue
        for key, entry in auths.items():
            if _entry_host(key) != host or not isinstance(entry, dict):
                continue
            if entry.get("auth"):
                try:
                    raw = base64.b64decode(entry["auth"]).decode()
                except (ValueError, UnicodeDecodeError) as exc:
                    raise AuthError(f"{path}: the entry for {host} is not base64") from exc
                user, sep, password = raw.partition(":")
                if sep:
                    return Credentials(user, password)
            if entry.get("username") and entry.get("password"):
                return Credentials(str(entry["username"]), str(entry["password"]))
    return None


def save_credentials(path: Path, host: str, credentials: Credentials) -> None:
    """Add or replace the entry for `host` (mode 0600; other keys of the file are kept)."""
    data = read_auth_file(path)
    auths = data.setdefault("auths", {})
    raw = f"{credentials.username}:{credentials.password}".encode()
    auths[host] = {"auth": base64.b64encode(raw).decode()}
    _write_private(path, data)


def remove_credentials(path: Path, host: str) -> bool:
    data = read_auth_file(path)
    auths = data.get("auths")
    if not isinstance(auths, dict):
        return False
    doomed = [key for key in auths if _entry_host(key) == host.lower()]
    for key in doomed:
        del auths[key]
    if doomed:
        _write_private(path, data)
    return bool(doomed)


def _write_private(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    os.replace(temp, path)


@dataclass
class _Token:
    value: str
    renew_at: float  # monotonic: a little before it expires (a quarter early for short ones)


class Authenticator:
    """Per registry: the scheme it asked for and bearer tokens per scope (thread-safe)."""

    def __init__(self, credentials: Credentials | None, session: requests.Session) -> None:
        self.credentials = credentials
        self._session = session
        self._challenge: Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        self._lock = threading.Lock()

    def header(self, scope: str) -> str | None:
        """The Authorization header to send for `scope`, from what is known already."""
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return self.credentials.basic_header() if self.credentials else None
        if challenge.scheme == "bearer":
            with self._lock:
                token = self._tokens.get(scope)
            if token is not None and token.renew_at > time.monotonic():
                return f"Bearer {token.value}"
            return self._fetch_token(challenge, scope)
        return None

    def challenged(self, header: str, scope: str) -> str | None:
        """After a 401: learn its challenge; the header to retry with, None if there is none
        worth a retry (no credentials for Basic, an unknown scheme)."""
        challenge = Challenge.parse(header)
        if challenge is None:
            return None
        self._challenge = challenge
        if challenge.scheme == "basic":
            return self.credentials.basic_header() if self.credentials else None
        if challenge.scheme == "bearer":
            # The scope the registry asked for wins (a mount asks for two repositories).
            wanted = challenge.params.get("scope") or scope
            header_ = self._fetch_token(challenge, wanted)
            if wanted != scope:
                with self._lock:
                    if wanted in self._tokens:
                        self._tokens[scope] = self._tokens[wanted]
            return header_
        return None

    def _fetch_token(self, challenge: Challenge, scope: str) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError("the registry's bearer challenge names no realm")
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        params += [("scope", s) for s in scope.split(" ") if s]
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        try:
            response = self._session.get(realm, params=params, auth=auth, timeout=30)
        except requests.RequestException as exc:
            raise AuthError(f"token endpoint {realm}: {exc}") from exc
        if response.status_code != 200:
            raise AuthError(f"token endpoint {realm} answered {response.status_code}")
        try:
            body = response.json()
            value = body.get("token") or body.get("access_token")
            ttl = float(body.get("expires_in") or DEFAULT_TOKEN_TTL)
        except (ValueError, AttributeError, TypeError) as exc:
            raise AuthError(f"token endpoint {realm} gave no token") from exc
        if not isinstance(value, str) or not value:
            raise AuthError(f"token endpoint {realm} gave no token")
        with self._lock:
            margin = min(RENEW_BEFORE, ttl / 4)
            self._tokens[scope] = _Token(value, time.monotonic() + ttl - margin)
        return f"Bearer {value}"
