"""An upstream registry's HTTP client: Basic credentials, or Docker's bearer token flow with
the realm, service and scope the upstream's challenge names; its answers mapped onto the OCI
errors Berth's own clients understand.

requests, already Berth's dependency (webhook delivery uses it): a Session per upstream keeps
connections alive and is safe to share between a worker's threads for plain requests.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from app.errors import (
    BlobUnknown,
    Denied,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    TooManyRequests,
    Unavailable,
)
from app.mirror.upstreams import Upstream

log = logging.getLogger(__name__)
_PARAM = re.compile(r'(\w+)\s*=\s*(?:"([^"]*)"|([^\s,]+))')
_TOKEN_MARGIN = 10.0  # seconds: a token this close to expiry is fetched anew
USER_AGENT = "berth-mirror/0.1"


@dataclass(frozen=True)
class Challenge:
    scheme: str  # "basic" | "bearer" | "" (none given)
    params: Mapping[str, str]


def parse_challenge(header: str) -> Challenge:
    """`Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"`."""
    header = header.strip()
    if not header:
        return Challenge("", {})
    scheme, _, rest = header.partition(" ")
    params = {m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
              for m in _PARAM.finditer(rest)}  # fmt: skip
    return Challenge(scheme.lower(), params)


class UpstreamClient:
    """One upstream's connections and tokens, shared by a worker's threads."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        self._session.verify = upstream.ca_file or not upstream.insecure
        self._timeout = (upstream.connect_timeout, upstream.read_timeout)
        self._lock = threading.Lock()
        self._scheme = ""  # learnt from the first challenge: credentials sent up front after
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expires at)

    # --- requests --------------------------------------------------------------------------

    def get(
        self,
        remote: str,
        kind: str,
        reference: str,
        *,
        accept: str | None = None,
        method: str = "GET",
        stream: bool = False,
    ) -> requests.Response:
        """`method /v2/<remote>/<kind>/<reference>` upstream; a 2xx response, or the
        RegistryError that tells Berth's client what went wrong (naming the upstream)."""
        url = f"{self.upstream.url}/v2/{remote}/{kind}/{reference}"
        headers = {"Accept": accept} if accept else {}
        scope = f"repository:{remote}:pull"
        response = self._send(method, url, headers, scope, stream)
        if response.status_code < 300:
            return response
        try:
            raise self._error(response, remote, kind, reference)
        finally:
            response.close()

    def ping(self) -> str:
        """How the upstream's GET /v2/ answers: "up", or why not."""
        try:
            response = self._session.get(
                f"{self.upstream.url}/v2/", timeout=self._timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            return f"down ({exc.__class__.__name__})"
        response.close()
        if response.status_code in (200, 401):
            return "up"
        return f"down (GET /v2/ answered {response.status_code})"

    def _send(
        self, method: str, url: str, headers: dict[str, str], scope: str, stream: bool
    ) -> requests.Response:
        response = self._attempt(method, url, {**headers, **self._credentials(scope)}, stream)
        if response.status_code != 401:
            return response
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        response.close()
        if challenge.scheme == "basic" and self.upstream.username:
            self._scheme = "basic"
        elif challenge.scheme == "bearer" and "realm" in challenge.params:
            self._scheme = "bearer"
            self._fetch_token(challenge, challenge.params.get("scope") or scope)
        else:
            return response  # no way to authenticate: the caller maps the 401
        return self._attempt(method, url, {**headers, **self._credentials(scope)}, stream)

    def _attempt(
        self, method: str, url: str, headers: dict[str, str], stream: bool
    ) -> requests.Response:
        try:
            return self._session.request(
                method, url, headers=headers, stream=stream, timeout=self._timeout
            )
        except requests.RequestException as exc:
            raise self.unreachable(exc) from exc

    def unreachable(self, exc: Exception) -> Unavailable:
        upstream = self.upstream
        log.warning("upstream %s (%s) unreachable: %r", upstream.prefix, upstream.url, exc)
        return Unavailable(
            {"upstream": upstream.prefix, "url": upstream.url, "reason": exc.__class__.__name__},
            message=f"upstream {upstream.prefix} ({upstream.url}) is unreachable",
        )

    # --- credentials -----------------------------------------------------------------------

    def _credentials(self, scope: str) -> dict[str, str]:
        if self._scheme == "basic":
            return {"Authorization": _basic(self.upstream.username, self.upstream.password)}
        if self._scheme == "bearer":
            with self._lock:
                cached = self._tokens.get(scope)
            if cached is not None and cached[1] > time.monotonic():
                return {"Authorization": f"Bearer {cached[0]}"}
        return {}

    def _fetch_token(self, challenge: Challenge, scope: str) -> None:
        params = {"service": challenge.params.get("service", ""), "scope": scope}
        auth = None
        if self.upstream.username:
            auth = (self.upstream.username, self.upstream.password)
        realm = challenge.params["realm"]
        try:
            response = self._session.get(realm, params=params, auth=auth, timeout=self._timeout)
        except requests.RequestException as exc:
            raise self.unreachable(exc) from exc
        if response.status_code in (401, 403):
            raise Denied(
                {"upstream": self.upstream.prefix},
                message=f"upstream {self.upstream.prefix}'s token service refused Berth's"
                f" credentials ({response.status_code})",
            )
        body: Any = None
        with contextlib.suppress(ValueError):
            body = response.json() if response.status_code == 200 else None
        token = None
        if isinstance(body, dict):
            token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise Unavailable(
                {"upstream": self.upstream.prefix, "status": response.status_code},
                message=f"upstream {self.upstream.prefix}'s token service gave no token",
            )
        lifetime = body.get("expires_in", 60)
        lifetime = lifetime if isinstance(lifetime, int | float) and lifetime > 0 else 60
        with self._lock:
            self._tokens[scope] = (token, time.monotonic() + max(lifetime - _TOKEN_MARGIN, 1))

    # --- errors ----------------------------------------------------------------------------

    def _error(
        self, response: requests.Response, remote: str, kind: str, reference: str
    ) -> RegistryError:
        status, name = response.status_code, self.upstream.prefix
        detail = {"upstream": name, "repository": remote, "status": status}
        if status == 404:
            what = {"manifests": ManifestUnknown, "blobs": BlobUnknown}.get(kind, NameUnknown)
            if _upstream_codes(response) & {"NAME_UNKNOWN"}:
                what = NameUnknown
            return what(detail, message=f"{remote}:{reference} not found at upstream {name}")
        if status in (401, 403):
            return Denied(detail, message=f"upstream {name} refused access to {remote} ({status})")
        if status == 429:
            headers = {}
            if response.headers.get("Retry-After"):
                headers["Retry-After"] = response.headers["Retry-After"]
            return TooManyRequests(
                detail, message=f"upstream {name} is rate limiting Berth", headers=headers
            )
        log.warning("upstream %s answered %s for %s/%s/%s", name, status, remote, kind, reference)
        return Unavailable(detail, message=f"upstream {name} answered {status}")


def _upstream_codes(response: requests.Response) -> set[str]:
    try:
        body = response.json()
    except ValueError:
        return set()
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return set()
    return {
        str(e["code"]) for e in errors if isinstance(e, dict) and isinstance(e.get("code"), str)
    }


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
