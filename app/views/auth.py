"""Access control on /v2 and /api: Basic or Bearer credentials, the rules, and the token endpoint.

With `auth = "none"` (the default) nothing here is installed. Otherwise a before_request hook
maps each request to what it needs -- a login (GET /v2/), the catalog, or actions on one
repository (GET/HEAD: pull; POST/PATCH/PUT: pull and push, as distribution asks;
DELETE: delete, or push for an upload session) -- and answers 401 (with a Basic or Bearer
challenge), 403 DENIED or 429 TOOMANYREQUESTS before any view runs. Every path under /api/
needs an admin.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth

from app.errors import Denied, TooManyRequests, Unauthorized
from app.registry import access, listings, tokens
from app.registry.context import Registry
from app.registry.throttle import FailureLimiter
from app.registry.users import Authenticator
from app.views.base import Response

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)
TOKEN_PATH = "/auth/token"
CATALOG_SCAN = 500  # repositories read per query while filtering the catalog


@dataclass(frozen=True)
class Need:
    kind: str  # "login" | "catalog" | "repository"
    repository: str = ""
    actions: tuple[str, ...] = ()

    def scope(self) -> str:
        if self.kind == "catalog":
            return "registry:catalog:*"
        if self.kind == "repository":
            return f"repository:{self.repository}:{','.join(self.actions)}"
        return ""


@dataclass(frozen=True)
class Caller:
    user: str | None  # None: anonymous
    token: tokens.Claims | None = None  # token mode: what the presented token grants
    authenticated: bool = False  # valid credentials or a valid token were presented


class Guard:
    """Per-app auth state: the policy, the password checker and its cache, the limiter and
    (token mode) the signing key. Thread-safe: gunicorn's threads share one Guard."""

    def __init__(self, reg: Registry) -> None:
        settings = reg.settings
        self.reg = reg
        self.mode = settings.auth
        self.policy = access.policy(settings)
        self.authenticator = Authenticator(reg)
        self.limiter = FailureLimiter(settings.auth_max_failures, settings.auth_failure_window)
        proxies = os.environ.get("BERTH_FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
        self.trusted_proxies = {p.strip() for p in proxies.split(",") if p.strip()}
        self.basic = HTTPBasicAuth(realm=settings.auth_realm)
        self.bearer = HTTPTokenAuth(scheme="Bearer", realm=settings.auth_realm)
        self.basic.verify_password(self._verify_password)
        self.bearer.verify_token(self._verify_token)
        self._basic_login: Callable[[], Any] = self.basic.login_required(optional=True)(
            self.basic.current_user
        )
        self._bearer_login: Callable[[], Any] = self.bearer.login_required(optional=True)(
            self.bearer.current_user
        )
        self._key: tokens.SigningKey | None = None
        self._key_lock = threading.Lock()
        if self.mode == "token" and settings.auth_token_key:
            self._key = tokens.load_key_file(settings.auth_token_key)  # a bad file stops start-up

    # flask-httpauth callbacks
    def _verify_password(self, username: str | None, password: str | None) -> str | None:
        if not username or not password:
            return None
        return username if self.authenticator.verify(username, password) else None

    def _verify_token(self, token: str) -> tokens.Claims | None:
        if not token:
            return None
        settings = self.reg.settings
        try:
            return tokens.verify(
                self.key(), settings.auth_token_issuer, settings.auth_token_service, token
            )
        except tokens.TokenInvalid as exc:
            log.info("rejected a bearer token: %s", exc)
            return None

    def key(self) -> tokens.SigningKey:
        if self._key is not None:
            return self._key
        with self._key_lock:
            if self._key is None:
                self._key = tokens.signing_key(self.reg)
            return self._key

    # credentials
    def basic_caller(self) -> Caller:
        """The Basic credentials of this request: 429 while the address is locked out,
        401 for a wrong password or an unknown user (the same answer for both)."""
        credentials = self.basic.get_auth()
        if credentials is None or (not credentials.username and not credentials.password):
            # containers/image sends an empty `Basic Og==` when it has no credentials.
            return Caller(None)
        address = self.client_address()
        wait = self.limiter.retry_after(address)
        if wait is not None:
            raise TooManyRequests(
                {"retry_after": wait},
                message="too many failed logins from this address",
                headers={"Retry-After": str(wait)},
            )
        user = self._basic_login()
        if user is None:
            self.limiter.fail(address)
            raise self.basic_challenge("invalid username or password")
        return Caller(user, authenticated=True)

    def client_address(self) -> str:
        """Whom to count failures against. Behind a trusted proxy (gunicorn's
        BERTH_FORWARDED_ALLOW_IPS) that is the last X-Forwarded-For hop, the address the proxy
        itself saw; earlier hops are the client's to invent."""
        peer = request.remote_addr or ""
        if "*" in self.trusted_proxies or peer in self.trusted_proxies:
            hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
            if hops[-1]:
                return hops[-1]
        return peer

    def basic_challenge(self, message: str | None = None) -> Unauthorized:
        header = self.basic.authenticate_header()
        return Unauthorized(message=message, headers={"WWW-Authenticate": header})

    def bearer_caller(self, need: Need) -> Caller:
        if self.bearer.get_auth() is None:
            return Caller(None)
        claims = self._bearer_login()
        if claims is None:
            raise self.challenge(need, error="invalid_token", message="invalid or expired token")
        return Caller(claims.subject, claims, authenticated=True)

    def caller(self, need: Need) -> Caller:
        return self.bearer_caller(need) if self.mode == "token" else self.basic_caller()

    def challenge(
        self, need: Need, *, error: str | None = None, message: str | None = None
    ) -> Unauthorized:
        settings = self.reg.settings
        if self.mode == "token":
            realm = settings.auth_token_realm or request.host_url.rstrip("/") + TOKEN_PATH
            header = f'Bearer realm="{realm}",service="{settings.auth_token_service}"'
            if need.scope():
                header += f',scope="{need.scope()}"'
            if error:
                header += f',error="{error}"'
        else:
            header = self.basic.authenticate_header()
        detail = None
        if need.kind != "login":
            type_, name = need.scope().split(":")[:2]
            detail = [{"Type": type_, "Name": name, "Action": a} for a in need.actions or ("*",)]
        return Unauthorized(detail, message=message, headers={"WWW-Authenticate": header})

    # decisions
    def allowed(self, caller: Caller, repository: str) -> frozenset[str]:
        granted = self.policy.allowed(caller.user, repository)
        if self.mode == "token":
            # Both must agree: the token's scope, and the rules as they stand now.
            held = caller.token.actions("repository", repository) if caller.token else frozenset()
            granted &= held
        return granted

    def authorize(self, caller: Caller, need: Need) -> None:
        if need.kind == "login":
            if not caller.authenticated:
                raise self.challenge(need)
            return
        if need.kind == "catalog":
            if self.mode == "token":
                held = caller.token.actions("registry", "catalog") if caller.token else None
                if not held:
                    error = "insufficient_scope" if caller.token else None
                    raise self.challenge(need, error=error)
            elif caller.user is None and not self.policy.anonymous_pull:
                raise self.challenge(need)
            return
        missing = set(need.actions) - self.allowed(caller, need.repository)
        if not missing:
            return
        token_too_narrow = self.mode == "token" and caller.token is not None
        if token_too_narrow and self.policy.may(caller.user, need.repository, need.actions):
            # The rules allow it, the token just does not say so: ask for a new one.
            raise self.challenge(need, error="insufficient_scope")
        if caller.user is None:
            raise self.challenge(need)
        raise Denied(
            {"repository": need.repository, "actions": sorted(missing)},
            message="requested access to the resource is denied",
        )


def guard() -> Guard | None:
    return current_app.extensions.get("berth_auth")


def current_user() -> str | None:
    """The authenticated user of this request, None when anonymous or auth is off."""
    return g.get("auth_user")


def may_pull(repository: str) -> bool:
    """Whether this request's caller may pull `repository` (cross-repository mounts)."""
    gd = guard()
    if gd is None:
        return True
    caller: Caller = g.get("auth_caller") or Caller(None)
    return "pull" in gd.allowed(caller, repository)


def visible_catalog(reg: Registry, last: str | None, fetch: int) -> list[str]:
    """Up to `fetch` repository names after `last`, only those the caller may pull, so that
    pagination still works page by page."""
    gd = guard()
    caller: Caller = g.get("auth_caller") or Caller(None)
    if gd is None or gd.policy.pulls_everything(caller.user):
        return listings.catalog(reg, last, fetch)
    found: list[str] = []
    cursor = last
    while len(found) < fetch:
        page = listings.catalog(reg, cursor, CATALOG_SCAN)
        found += [name for name in page if "pull" in gd.policy.allowed(caller.user, name)]
        if len(page) < CATALOG_SCAN:
            break
        cursor = page[-1]
    return found[:fetch]


def _need() -> Need:
    if request.endpoint == "listings.catalog":
        return Need("catalog")
    name = (request.view_args or {}).get("name")
    if not isinstance(name, str):
        return Need("login")
    if request.method in ("GET", "HEAD", "OPTIONS"):
        actions: tuple[str, ...] = ("pull",)
    elif request.method == "DELETE" and request.endpoint != "uploads.cancel_upload":
        actions = ("delete",)
    else:
        actions = ("pull", "push")
    return Need("repository", name, actions)


def _check_admin(gd: Guard) -> None:
    caller = gd.bearer_caller(Need("login")) if gd.mode == "token" else None
    if caller is None or caller.user is None:
        caller = gd.basic_caller()
    g.auth_user = caller.user
    if caller.user is None:
        raise gd.basic_challenge("admin credentials required")
    if not gd.policy.is_admin(caller.user):
        raise Denied({"user": caller.user}, message="admin rights required")


def _check_access() -> None:
    gd = guard()
    if gd is None:
        return
    path = request.path
    if path.startswith("/api/") or path == "/api":
        _check_admin(gd)
        return
    if path != "/v2" and not path.startswith("/v2/"):
        return
    need = _need()
    caller = gd.caller(need)
    g.auth_caller = caller
    g.auth_user = caller.user
    gd.authorize(caller, need)


@bp.get(TOKEN_PATH)
def issue_token() -> Response:
    """Docker token endpoint: Basic credentials (or none, for anonymous pulls) and `scope`s in,
    a signed JWT granting the allowed part of those scopes out."""
    gd = guard()
    assert gd is not None  # registered in token mode only
    caller = gd.basic_caller()
    if caller.user is None and not gd.policy.anonymous_pull:
        raise gd.basic_challenge()
    settings = gd.reg.settings
    scopes = tokens.parse_scopes(request.args.getlist("scope"))
    granted = tokens.grant(gd.policy, caller.user, scopes)
    token, issued_at = tokens.issue(
        gd.key(),
        settings.auth_token_issuer,
        settings.auth_token_service,
        settings.auth_token_ttl,
        caller.user,
        granted,
    )
    return jsonify(
        token=token,
        access_token=token,
        expires_in=settings.auth_token_ttl,
        issued_at=issued_at.isoformat().replace("+00:00", "Z"),
    )


def init_app(app: Flask) -> None:
    reg: Registry = app.extensions["berth"]
    if reg.settings.auth == "none":
        return
    gd = app.extensions["berth_auth"] = Guard(reg)
    policy = gd.policy
    if not (policy.rules or policy.admin_users or policy.admin_groups or policy.anonymous_pull):
        log.warning("auth = %s but no auth_rules or auth_admins: nobody may do anything", gd.mode)
    app.before_request(_check_access)
    if reg.settings.auth == "token":
        app.register_blueprint(bp)
