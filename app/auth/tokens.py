"""Docker token authentication: scopes, grants, and signed JWTs.

The token endpoint turns Basic credentials plus requested scopes
(`repository:team/app:pull,push`, `registry:catalog:*`) into a JWT whose `access` claim holds
what the rules allow of that request, never more. /v2 then checks the token's signature,
audience, issuer and lifetime, and what it grants.

Tokens are signed with an asymmetric key (ES256 by default, RS256/ES384 from a PEM file):
the key named by `auth_token_key`, or one generated on first start and kept in the
database, so every worker and every instance on that database signs and checks alike.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app.auth.policy import ACTIONS, Policy
from app.config import ConfigError
from app.db import Database
from app.db.models import AuthSigningKey
from app.db.upserts import insert_ignore
from app.errors import NameInvalid, RegistryError
from app.registry.references import is_valid_name

GENERATED_KEY = "default"
LEEWAY = 10  # seconds of clock skew tolerated between instances
_SCOPE = re.compile(r"(?P<type>[a-z0-9]+)(?:\([a-z0-9]+\))?:(?P<name>.+):(?P<actions>[a-z*,]*)")


class ScopeInvalid(RegistryError):
    code, status, message = "SCOPE_INVALID", 400, "malformed scope"


class TokenInvalid(Exception):
    """A bad, expired or foreign token; the message says why (logged, not shown)."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private_key: Any = field(repr=False)

    @property
    def public_key(self) -> Any:
        return self.private_key.public_key()


@dataclass(frozen=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"


@dataclass(frozen=True)
class Claims:
    subject: str | None  # None: an anonymous token
    access: dict[tuple[str, str], frozenset[str]]

    def actions(self, type_: str, name: str) -> frozenset[str]:
        return self.access.get((type_, name), frozenset())


# --- keys ----------------------------------------------------------------------------------


# jwt and cryptography are imported where they are used: together ~20 MiB a server with
# auth = "none" or plain basic never needs (docs/performance.md, memory).


def key_id(public_key: Any) -> str:
    """libtrust's key ID (what distribution matches a token's `kid` against)."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(encoded[i : i + 4] for i in range(0, 48, 4))


def _algorithm(private_key: Any) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(private_key, rsa.RSAPrivateKey):
        return "RS256"
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if private_key.curve.name in curves:
            return curves[private_key.curve.name]
    raise ValueError("the token key must be an RSA key or an EC key on P-256, P-384 or P-521")


def _from_pem(pem: bytes) -> SigningKey:
    from cryptography.hazmat.primitives import serialization

    private_key = serialization.load_pem_private_key(pem, password=None)
    return SigningKey(key_id(private_key.public_key()), _algorithm(private_key), private_key)


def generate_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_key = ec.generate_private_key(ec.SECP256R1())
    return private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def load_key_file(path: str) -> SigningKey:
    try:
        return _from_pem(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"auth_token_key: cannot read {path}: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"auth_token_key: {path}: {exc}") from exc


def stored_key(db: Database) -> SigningKey:
    """The key kept in the database, made by whichever worker or instance starts first."""
    with db.transaction() as session:
        row = session.get(AuthSigningKey, GENERATED_KEY)
    if row is None:
        with db.transaction(write=True) as session:
            values = {"name": GENERATED_KEY, "algorithm": "ES256", "private_key": generate_pem()}
            # Workers start together: the first insert wins and everyone reads that one back.
            insert_ignore(session, AuthSigningKey, values, ["name"])
            row = session.scalar(select(AuthSigningKey).where(AuthSigningKey.name == GENERATED_KEY))
    assert row is not None
    return _from_pem(row.private_key.encode())


# --- scopes and grants ---------------------------------------------------------------------


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """`scope` query parameters; one parameter may hold several scopes separated by spaces."""
    scopes = []
    for value in values:
        for text in value.split():
            match = _SCOPE.fullmatch(text)
            if not match:
                raise ScopeInvalid({"scope": text})
            actions = frozenset(a for a in match["actions"].split(",") if a)
            if match["type"] == "repository" and not is_valid_name(match["name"]):
                raise NameInvalid({"scope": text})
            scopes.append(Scope(match["type"], match["name"], actions))
    return scopes


def grant(policy: Policy, user: str | None, scopes: Iterable[Scope]) -> list[dict[str, Any]]:
    """The `access` claim: each requested scope cut down to what the rules allow `user`."""
    granted: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        if scope.type == "repository":
            wanted = ACTIONS if "*" in scope.actions else scope.actions
            actions = wanted & policy.allowed(user, scope.name)
        elif scope.type == "registry" and scope.name == "catalog":
            # Listing is filtered repository by repository; being allowed to ask is enough.
            allowed = user is not None or policy.anonymous_pull
            actions = frozenset({"*"}) if allowed and scope.actions else frozenset()
        else:
            continue
        if actions:
            granted.setdefault((scope.type, scope.name), set()).update(actions)
    return [
        {"type": type_, "name": name, "actions": sorted(actions)}
        for (type_, name), actions in granted.items()
    ]


# --- tokens --------------------------------------------------------------------------------


def issue(
    key: SigningKey,
    issuer: str,
    service: str,
    ttl: int,
    subject: str | None,
    access: list[dict[str, Any]],
    now: float | None = None,
) -> tuple[str, datetime]:
    now = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "sub": subject or "",
        "aud": service,
        "exp": now + ttl,
        "nbf": now - LEEWAY,
        "iat": now,
        "jti": secrets.token_urlsafe(16),
        "access": access,
    }
    import jwt

    token = jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})
    return token, datetime.fromtimestamp(now, UTC)


def verify(key: SigningKey, issuer: str, service: str, token: str) -> Claims:
    import jwt

    try:
        claims = jwt.decode(
            token,
            key.public_key,
            algorithms=[key.algorithm],  # never the algorithm the token names
            audience=service,
            issuer=issuer,
            leeway=LEEWAY,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenInvalid(str(exc)) from exc
    access: dict[tuple[str, str], frozenset[str]] = {}
    entries = claims.get("access") or []
    if not isinstance(entries, list):
        raise TokenInvalid("access claim is not a list")
    for entry in entries:
        try:
            type_, name, actions = entry["type"], entry["name"], entry["actions"]
            if not all(isinstance(x, str) for x in (type_, name, *actions)):
                raise TypeError
        except (KeyError, TypeError) as exc:
            raise TokenInvalid(f"malformed access entry {entry!r}") from exc
        access[(type_, name)] = access.get((type_, name), frozenset()) | frozenset(actions)
    subject = claims["sub"] if isinstance(claims["sub"], str) and claims["sub"] else None
    return Claims(subject, access)
