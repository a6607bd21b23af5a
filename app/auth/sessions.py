"""Web UI logins: server-side sessions in the database, shared by every worker and instance.

The browser holds a random id (the cookie); the row holds its sha256, the user, the CSRF
token every state-changing form must carry, and when it expires. Logging out deletes the
row, so a copied cookie dies with the session. Expired rows are swept at each login.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from app.db import Database
from app.db.models import UiSession


@dataclass(frozen=True)
class Session:
    user: str
    csrf_token: str
    expires_at: datetime


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def create(db: Database, user: str, ttl: int) -> tuple[str, Session]:
    """A new session for `user` (credentials already checked): (the cookie's id, the session)."""
    now = datetime.now(UTC)
    session_id = secrets.token_urlsafe(32)
    found = Session(user, secrets.token_urlsafe(32), now + timedelta(seconds=ttl))
    with db.transaction(write=True) as session:
        session.execute(delete(UiSession).where(UiSession.expires_at < now))
        session.add(
            UiSession(
                id_hash=_hash(session_id),
                user=user,
                csrf_token=found.csrf_token,
                created_at=now,
                expires_at=found.expires_at,
            )
        )
    return session_id, found


def lookup(db: Database, session_id: str) -> Session | None:
    """The live session of this cookie value, or None (unknown, expired, or logged out)."""
    if not session_id or len(session_id) > 100:
        return None
    with db.transaction() as session:
        row = session.scalar(select(UiSession).where(UiSession.id_hash == _hash(session_id)))
        if row is None or row.expires_at <= datetime.now(UTC):
            return None
        return Session(row.user, row.csrf_token, row.expires_at)


def end(db: Database, session_id: str) -> None:
    with db.transaction(write=True) as session:
        session.execute(delete(UiSession).where(UiSession.id_hash == _hash(session_id)))
