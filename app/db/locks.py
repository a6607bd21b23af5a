"""Digest locks: how online garbage collection and pushes agree on what may be deleted.

A push (manifest PUT, upload completion, cross-repository mount) takes a SHARED lock on every
digest its transaction depends on; garbage collection takes an EXCLUSIVE lock on the digests
it is about to delete and only then re-checks, in a fresh statement of the same transaction,
that nothing references them. So each push either commits before gc looks (and gc sees its
rows) or starts after gc committed (and sees the deletion, e.g. MANIFEST_BLOB_UNKNOWN).

PostgreSQL: transaction-scoped advisory locks keyed by the digest. They lock a digest even
where no row exists yet (a blob whose row gc just deleted, bytes about to go), which row locks
(`FOR SHARE`) cannot, and they make READ COMMITTED's next statement see what the other side
committed. SQLite: every writing transaction is BEGIN IMMEDIATE, one writer at a time, which
serializes the two sides already, so these are no-ops there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger

_SHARED = text("SELECT pg_advisory_xact_lock_shared(k) FROM unnest(:keys) AS k").bindparams(
    bindparam("keys", type_=ARRAY(BigInteger))
)
_EXCLUSIVE = text("SELECT pg_advisory_xact_lock(k) FROM unnest(:keys) AS k").bindparams(
    bindparam("keys", type_=ARRAY(BigInteger))
)


def digest_key(digest: str) -> int:
    """A 63-bit lock key. Collisions only make two unrelated digests wait for each other."""
    _, _, hex_ = digest.partition(":")
    try:
        return int(hex_[:15], 16)
    except ValueError:
        return int.from_bytes(hashlib.sha256(digest.encode()).digest()[:7], "big")


def _keys(digests: Iterable[str]) -> list[int]:
    # One global order, so two transactions locking overlapping sets never deadlock.
    return sorted({digest_key(d) for d in digests})


def share(session: Session, digests: Iterable[str]) -> None:
    """Hold these digests until the transaction ends: gc cannot delete them meanwhile."""
    keys = _keys(digests)
    if keys and session.get_bind().dialect.name == "postgresql":
        session.execute(_SHARED, {"keys": keys})


def exclusive(session: Session, digests: Iterable[str]) -> None:
    """Wait for every push holding one of these digests, and keep new ones out until commit."""
    keys = _keys(digests)
    if keys and session.get_bind().dialect.name == "postgresql":
        session.execute(_EXCLUSIVE, {"keys": keys})
