"""Accounts and password checks.

Accounts live in the database (`berth user add`, bcrypt hashes) and, optionally, in an
Apache htpasswd file named by `auth_htpasswd` (bcrypt entries, `htpasswd -B`), so existing
files carry over; a name in both is checked against the database.

bcrypt is slow on purpose, so a client that sends the same Basic credentials with every
request must not pay it every time: `CredentialCache` remembers successful checks for
`auth_cache_ttl` seconds. The cache lives in each process (shared by its threads); a
password change or a deletion drops the user's entries in the process that made it, and
the short lifetime bounds how long other processes may still accept the old password.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
import weakref
from pathlib import Path

import bcrypt
from sqlalchemy import delete, select, update

from app.db import Database
from app.db.models import AuthUser

log = logging.getLogger(__name__)

DEFAULT_COST = 12
BCRYPT_MAX_BYTES = 72  # bcrypt ignores anything past this; refuse rather than truncate
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,254}")  # never ':' (the Basic separator)
_BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")


class UserError(ValueError):
    """A bad name or password, a duplicate or a missing account; the message says which."""


def _secret(password: str) -> bytes:
    return password.encode("utf-8", "surrogateescape")


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UserError(
            f"user name {name!r}: letters, digits and . _ @ + - only, starting with a letter"
            " or digit, at most 255 characters"
        )
    return name


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    if not password:
        raise UserError("the password must not be empty")
    if len(_secret(password)) > BCRYPT_MAX_BYTES:
        raise UserError(f"the password is longer than bcrypt's {BCRYPT_MAX_BYTES} bytes")
    return bcrypt.hashpw(_secret(password), bcrypt.gensalt(cost)).decode()


def check_password(password: str, hashed: str) -> bool:
    secret = _secret(password)
    if not secret or len(secret) > BCRYPT_MAX_BYTES:
        return False
    try:
        return bcrypt.checkpw(secret, hashed.encode())
    except ValueError:  # a malformed hash (a hand-edited htpasswd line, say)
        return False


_dummy_lock = threading.Lock()
_dummies: dict[int, str] = {}
_COST = re.compile(r"\$2[aby]\$(\d\d)\$")


def cost_of(hashed: str) -> int | None:
    match = _COST.match(hashed)
    return int(match.group(1)) if match else None


def _dummy_hash(cost: int) -> str:
    """Checked against when the user is unknown, so that an unknown user and a wrong
    password take the same time and look the same from outside."""
    with _dummy_lock:
        if cost not in _dummies:
            salt = bcrypt.gensalt(cost)
            _dummies[cost] = bcrypt.hashpw(secrets.token_bytes(16), salt).decode()
        return _dummies[cost]


# --- accounts in the database ------------------------------------------------------------


def add(db: Database, name: str, password: str, cost: int = DEFAULT_COST) -> None:
    hashed = hash_password(password, cost)
    with db.transaction(write=True) as session:
        if session.scalar(select(AuthUser.id).where(AuthUser.name == check_name(name))):
            raise UserError(f"user {name!r} already exists")
        session.add(AuthUser(name=name, password_hash=hashed))


def set_password(db: Database, name: str, password: str, cost: int = DEFAULT_COST) -> None:
    hashed = hash_password(password, cost)
    with db.transaction(write=True) as session:
        result = session.execute(
            update(AuthUser).where(AuthUser.name == name).values(password_hash=hashed)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise UserError(f"no user {name!r} in the database")
    forget(name)


def remove(db: Database, name: str) -> None:
    with db.transaction(write=True) as session:
        result = session.execute(delete(AuthUser).where(AuthUser.name == name))
        if result.rowcount == 0:  # type: ignore[attr-defined]
            raise UserError(f"no user {name!r} in the database")
    forget(name)


def names(db: Database) -> list[str]:
    with db.transaction() as session:
        return list(session.scalars(select(AuthUser.name).order_by(AuthUser.name)))


def stored_hash(db: Database, name: str) -> str | None:
    with db.transaction() as session:
        return session.scalar(select(AuthUser.password_hash).where(AuthUser.name == name))


# --- htpasswd ------------------------------------------------------------------------------


class Htpasswd:
    """An Apache htpasswd file, re-read whenever it changes on disk. Only bcrypt entries
    count (as in distribution's htpasswd support); others are skipped with a warning."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._entries: dict[str, str] = {}

    def entries(self) -> dict[str, str]:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError as exc:
            if self._stamp != (0, 0, 0):
                log.warning("htpasswd file %s unreadable: %s", self.path, exc.strerror)
            stamp = (0, 0, 0)
        with self._lock:
            if stamp != self._stamp:
                self._entries = self._read() if stamp != (0, 0, 0) else {}
                self._stamp = stamp
            return self._entries

    def lookup(self, name: str) -> str | None:
        return self.entries().get(name)

    def _read(self) -> dict[str, str]:
        entries: dict[str, str] = {}
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            log.warning("htpasswd file %s unreadable: %s", self.path, exc.strerror)
            return entries
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, hashed = line.partition(":")
            if not sep or not name:
                log.warning("%s:%d: not a NAME:HASH line; skipped", self.path, number)
            elif not hashed.startswith(_BCRYPT_PREFIXES):
                log.warning("%s:%d: %s: not bcrypt (htpasswd -B); skipped", self.path, number, name)
            else:
                entries[name] = hashed
        return entries


# --- checking passwords, with a cache --------------------------------------------------------

_live_caches: weakref.WeakSet[CredentialCache] = weakref.WeakSet()


def forget(name: str) -> None:
    """Drop `name`'s remembered logins in every cache of this process."""
    for cache in list(_live_caches):
        cache.forget(name)


class CredentialCache:
    """Successful (name, password) checks for `ttl` seconds, keyed by an HMAC of the
    credentials under a per-process random key: the map never holds a password, nor a
    fast unsalted hash of one. Failures are never cached."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._entries: dict[bytes, tuple[float, str]] = {}
        _live_caches.add(self)

    def _digest(self, name: str, password: str) -> bytes:
        message = _secret(name) + b"\0" + _secret(password)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def hit(self, name: str, password: str) -> bool:
        if self.ttl <= 0:
            return False
        entry = self._entries.get(self._digest(name, password))
        return entry is not None and entry[0] > time.monotonic()

    def remember(self, name: str, password: str) -> None:
        if self.ttl <= 0:
            return
        now = time.monotonic()
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
                if len(self._entries) >= self.MAX_ENTRIES:
                    self._entries.clear()
            self._entries[self._digest(name, password)] = (now + self.ttl, name)

    def forget(self, name: str) -> None:
        with self._lock:
            self._entries = {k: v for k, v in self._entries.items() if v[1] != name}


class Authenticator:
    """Checks Basic credentials against the database, then the htpasswd file."""

    def __init__(self, db: Database, htpasswd: str = "", cache_ttl: float = 0) -> None:
        self.db = db
        self.cache = CredentialCache(cache_ttl)
        self.htpasswd = Htpasswd(htpasswd) if htpasswd else None
        self._cost = DEFAULT_COST

    def lookup(self, name: str) -> str | None:
        hashed = stored_hash(self.db, name)
        if hashed is None and self.htpasswd is not None:
            hashed = self.htpasswd.lookup(name)
        return hashed

    def verify(self, name: str, password: str) -> bool:
        if not name or not password:
            return False
        if not name.isprintable() or len(name) > 255:
            # No account has such a name (a NUL cannot even reach PostgreSQL): check against
            # the dummy hash, so this answer takes as long as any other wrong password.
            check_password(password, _dummy_hash(self._cost))
            return False
        if self.cache.hit(name, password):
            return True
        hashed = self.lookup(name)
        if hashed is not None:
            # Unknown users are checked at the cost real ones have, so both take as long.
            self._cost = cost_of(hashed) or self._cost
        valid = check_password(password, hashed or _dummy_hash(self._cost)) and hashed is not None
        if valid:
            self.cache.remember(name, password)
        return valid

    def all_names(self) -> list[tuple[str, str]]:
        """(name, where) for every account: "database" or "htpasswd"."""
        found = [(name, "database") for name in names(self.db)]
        known = {name for name, _ in found}
        if self.htpasswd is not None:
            found += [(n, "htpasswd") for n in sorted(self.htpasswd.entries()) if n not in known]
        return found
