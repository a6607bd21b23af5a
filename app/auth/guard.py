"""The guard: who a request's caller is, and whether they may do what the request needs.

Framework-free: the view layer (app/views/auth.py) reads the Authorization header and the
peer address into `Presented` and maps the route to a `Need`; the guard answers with a
`Caller`, or raises 401 (with a Basic or Bearer challenge), 403 DENIED or 429
TOOMANYREQUESTS. One Guard per process, built by the composition root; thread-safe
(gunicorn's threads share it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from app.auth import tokens
from app.auth.policy import Policy
from app.auth.throttle import FailureLimiter
from app.auth.users import Authenticator
from app.config import Settings
from app.db import Database
from app.errors import Denied, TooManyRequests, Unauthorized

log = logging.getLogger(__name__)
TOKEN_PATH = "/auth/token"


@dataclass(frozen=True)
class Need:
    kind: str  # "login" | "catalog" | "repository"
    repository: str = ""
    actions: tuple[str, ...] = ()
    # Also worth asking for, not required: a mount's source (`repository:FROM:pull`), so a
    # client that requests exactly the challenged scope gets a token that mounts.
    wanted: tuple[str, ...] = ()

    def scope(self) -> str:
        """The challenge's scope: what is needed, then what is wanted, space-separated."""
        if self.kind == "catalog":
            return "registry:catalog:*"
        if self.kind == "repository":
            return " ".join(
                (f"repository:{self.repository}:{','.join(self.actions)}", *self.wanted)
            )
        return ""


@dataclass(frozen=True)
class Presented:
    """What a request brought: credentials of the mode's scheme, and where it came from."""

    basic: tuple[str, str] | None = None  # (username, password) of a Basic header
    token: str | None = None  # a Bearer header's token
    peer: str = ""  # the connection's address
    forwarded_for: str = ""  # X-Forwarded-For as received
    host_url: str = ""  # scheme://host/ the client used: the default token realm
    # An Authorization header that is neither Basic with strict base64 nor (where tokens
    # are issued) Bearer: refused, not taken as anonymous.
    malformed: bool = False


@dataclass(frozen=True)
class Caller:
    user: str | None  # None: anonymous
    token: tokens.Claims | None = None  # token mode: what the presented token grants
    authenticated: bool = False  # valid credentials or a valid token were presented


ANONYMOUS = Caller(None)


class Guard:
    """Per-process auth state: the policy, the password checker and its cache, the limiter
    and (token mode) the signing key."""

    def __init__(self, settings: Settings, db: Database, policy: Policy) -> None:
        self.settings = settings
        self.db = db
        self.mode = settings.auth
        self.policy = policy
        # Docker asks for credentials only when GET /v2/ is challenged, and after a Basic
        # challenge it refuses to go on without any: an anonymous pull cannot follow one.
        # So with anonymous pulls on, basic mode challenges with Bearer too, and its token
        # endpoint gives anonymous callers pull tokens and checks everyone else's password
        # (docker login keeps failing on a wrong one); Basic credentials sent up front are
        # taken as before.
        self.issues_tokens = self.mode == "token" or policy.anonymous_pull
        self.authenticator = Authenticator(db, settings.auth_htpasswd, settings.auth_cache_ttl)
        self.limiter = FailureLimiter(db, settings.auth_max_failures, settings.auth_failure_window)
        self.trusted_proxies = settings.trusted_proxies()
        self._key: tokens.SigningKey | None = None
        self._key_lock = threading.Lock()
        if self.mode == "token" and settings.auth_token_key:
            self._key = tokens.load_key_file(settings.auth_token_key)  # a bad file stops start-up

    def key(self) -> tokens.SigningKey:
        if self._key is not None:
            return self._key
        with self._key_lock:
            if self._key is None:
                self._key = tokens.stored_key(self.db)
            return self._key

    # --- credentials -----------------------------------------------------------------------

    def basic_caller(self, presented: Presented) -> Caller:
        """The Basic credentials of this request: 429 while the address is locked out,
        401 for a wrong password or an unknown user (the same answer for both)."""
        if presented.malformed or (presented.token is not None and presented.basic is None):
            # Where basic_caller is asked, a Bearer header is no credential either.
            raise self.basic_challenge("malformed Authorization header")
        if presented.basic is None or presented.basic == ("", ""):
            # containers/image sends an empty `Basic Og==` when it has no credentials.
            return ANONYMOUS
        username, password = presented.basic
        address = self.client_address(presented)
        wait = self.limiter.retry_after(address, username)
        if wait is not None:
            raise TooManyRequests(
                {"retry_after": wait},
                message="too many failed logins from this address",
                headers={"Retry-After": str(wait)},
            )
        if not (username and password and self.authenticator.verify(username, password)):
            self.limiter.fail(address, username)
            raise self.basic_challenge("invalid username or password")
        return Caller(username, authenticated=True)

    def client_address(self, presented: Presented) -> str:
        """Whom to count failures against. Behind a trusted proxy (forwarded_allow_ips) that
        is the last X-Forwarded-For hop, the address the proxy itself saw; earlier hops are
        the client's to invent."""
        if "*" in self.trusted_proxies or presented.peer in self.trusted_proxies:
            hops = [h.strip() for h in presented.forwarded_for.split(",")]
            if hops[-1]:
                return hops[-1]
        return presented.peer

    def bearer_caller(self, presented: Presented, need: Need) -> Caller:
        if presented.malformed:
            raise self.challenge(
                need, presented, error="invalid_request", message="malformed Authorization header"
            )
        if presented.token is None:
            return ANONYMOUS
        claims = self._verify_token(presented.token)
        if claims is None:
            raise self.challenge(
                need, presented, error="invalid_token", message="invalid or expired token"
            )
        return Caller(claims.subject, claims, authenticated=True)

    def _verify_token(self, token: str) -> tokens.Claims | None:
        if not token:
            return None
        try:
            return tokens.verify(
                self.key(), self.settings.auth_token_issuer, self.settings.auth_token_service, token
            )
        except tokens.TokenInvalid as exc:
            log.info("rejected a bearer token: %s", exc)
            return None

    def caller(self, presented: Presented, need: Need) -> Caller:
        if self.mode == "token" or (self.issues_tokens and presented.token is not None):
            return self.bearer_caller(presented, need)
        return self.basic_caller(presented)

    # --- challenges ------------------------------------------------------------------------

    def basic_challenge(self, message: str | None = None) -> Unauthorized:
        header = f'Basic realm="{self.settings.auth_realm}"'
        return Unauthorized(message=message, headers={"WWW-Authenticate": header})

    def challenge(
        self,
        need: Need,
        presented: Presented,
        *,
        error: str | None = None,
        message: str | None = None,
    ) -> Unauthorized:
        settings = self.settings
        if self.issues_tokens:
            realm = settings.auth_token_realm or presented.host_url.rstrip("/") + TOKEN_PATH
            header = f'Bearer realm="{realm}",service="{settings.auth_token_service}"'
            if need.scope():
                header += f',scope="{need.scope()}"'
            if error:
                header += f',error="{error}"'
        else:
            header = f'Basic realm="{settings.auth_realm}"'
        detail = None
        if need.kind != "login":
            type_, name = need.scope().split(" ")[0].split(":")[:2]
            detail = [{"Type": type_, "Name": name, "Action": a} for a in need.actions or ("*",)]
        return Unauthorized(detail, message=message, headers={"WWW-Authenticate": header})

    # --- decisions -------------------------------------------------------------------------

    def allowed(self, caller: Caller, repository: str) -> frozenset[str]:
        granted = self.policy.allowed(caller.user, repository)
        if self.mode == "token" or caller.token is not None:
            # Both must agree: the token's scope, and the rules as they stand now.
            held = caller.token.actions("repository", repository) if caller.token else frozenset()
            granted &= held
        return granted

    def authorize(self, caller: Caller, need: Need, presented: Presented) -> None:
        if need.kind == "login":
            if not caller.authenticated:
                raise self.challenge(need, presented)
            return
        if need.kind == "catalog":
            if self.mode == "token" or caller.token is not None:
                held = caller.token.actions("registry", "catalog") if caller.token else None
                if not held:
                    error = "insufficient_scope" if caller.token else None
                    raise self.challenge(need, presented, error=error)
            elif caller.user is None and not self.policy.anonymous_pull:
                raise self.challenge(need, presented)
            return
        missing = set(need.actions) - self.allowed(caller, need.repository)
        if not missing:
            return
        token_too_narrow = caller.token is not None
        if token_too_narrow and self.policy.may(caller.user, need.repository, need.actions):
            # The rules allow it, the token just does not say so: ask for a new one.
            raise self.challenge(need, presented, error="insufficient_scope")
        if caller.user is None:
            raise self.challenge(need, presented)
        raise Denied(
            {"repository": need.repository, "actions": sorted(missing)},
            message="requested access to the resource is denied",
        )

    def admin(self, presented: Presented) -> Caller:
        """The caller of an /api/ request, who must be an administrator. A bearer token is
        taken in token mode, Basic credentials otherwise (and as a fallback)."""
        bearer = self.mode == "token" or (self.issues_tokens and presented.token is not None)
        caller = self.bearer_caller(presented, Need("login")) if bearer else None
        if caller is None or caller.user is None:
            caller = self.basic_caller(presented)
        if caller.user is None:
            raise self.basic_challenge("admin credentials required")
        if not self.policy.is_admin(caller.user):
            raise Denied({"user": caller.user}, message="admin rights required")
        return caller

    def issue_token(self, presented: Presented, scope_values: Iterable[str]) -> dict[str, Any]:
        """Docker's token endpoint: Basic credentials (or none, for anonymous pulls) and
        scopes in, a signed JWT granting the allowed part of those scopes out."""
        caller = self.basic_caller(presented)
        if caller.user is None and not self.policy.anonymous_pull:
            raise self.basic_challenge()
        settings = self.settings
        granted = tokens.grant(self.policy, caller.user, tokens.parse_scopes(scope_values))
        token, issued_at = tokens.issue(
            self.key(),
            settings.auth_token_issuer,
            settings.auth_token_service,
            settings.auth_token_ttl,
            caller.user,
            granted,
        )
        return {
            "token": token,
            "access_token": token,
            "expires_in": settings.auth_token_ttl,
            "issued_at": issued_at.isoformat().replace("+00:00", "Z"),
        }


@dataclass(frozen=True)
class Access:
    """What the guard decided about one request, kept for the view: who the caller is, and
    what else they may see (a mount's source repository, the catalog's entries)."""

    guard: Guard | None = None  # None: access control is off
    caller: Caller = ANONYMOUS

    @property
    def user(self) -> str | None:
        return self.caller.user

    def may_pull(self, repository: str) -> bool:
        return self.guard is None or "pull" in self.guard.allowed(self.caller, repository)

    def catalog_filter(self) -> Callable[[str], bool] | None:
        """None when every repository is visible; else a test for each name."""
        guard = self.guard
        if guard is None or guard.policy.pulls_everything(self.caller.user):
            return None
        user = self.caller.user
        return lambda name: "pull" in guard.policy.allowed(user, name)


OPEN = Access()
