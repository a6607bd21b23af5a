"""select()-based queries and race-free upserts shared by the registry services."""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import and_, bindparam, delete, exists, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import locks
from app.db.models import Base, Blob, Manifest, Repository, RepositoryBlob, Tag, utcnow


# Building a statement costs more than running it on a warm connection (~0.5 ms against
# ~0.1 ms for an upsert on SQLite), so the statements of every push are built once and run
# with parameters.
@functools.cache
def _insert(dialect: str, model: type[Base], keys: tuple[str, ...], update: tuple[str, ...]):
    # The Table, not the mapped class: plain Core, and a list of rows is one executemany.
    stmt = (postgresql if dialect == "postgresql" else sqlite).insert(model.__table__)
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=keys)
    return stmt.on_conflict_do_update(
        index_elements=keys, set_={col: stmt.excluded[col] for col in update}
    )


def insert_ignore(
    session: Session,
    model: type[Base],
    values: dict[str, Any] | list[dict[str, Any]],
    keys: list[str],
) -> None:
    """INSERT ... ON CONFLICT DO NOTHING: concurrent pushes of the same thing both succeed."""
    stmt = _insert(session.get_bind().dialect.name, model, tuple(keys), ())
    session.execute(stmt, values)


def upsert(
    session: Session, model: type[Base], values: dict[str, Any], keys: list[str], update: list[str]
) -> None:
    """INSERT ... ON CONFLICT DO UPDATE: the last writer of a tag wins, nobody fails."""
    stmt = _insert(session.get_bind().dialect.name, model, tuple(keys), tuple(update))
    session.execute(stmt, values)


REPOSITORY_ID = select(Repository.id).where(Repository.name == bindparam("repo"))
# FOR KEY SHARE (PostgreSQL): a push waits for a repository delete in progress
# (app/registry/repositories.py), then starts a new repository instead of failing.
_REPOSITORY_ID_KEY_SHARE = REPOSITORY_ID.with_for_update(read=True, key_share=True)


def repository_id(session: Session, name: str) -> int | None:
    return session.scalar(REPOSITORY_ID, {"repo": name})


def ensure_repository(session: Session, name: str) -> int:
    repo_id = session.scalar(_REPOSITORY_ID_KEY_SHARE, {"repo": name})
    if repo_id is None:
        insert_ignore(session, Repository, {"name": name}, ["name"])
        repo_id = session.scalar(_REPOSITORY_ID_KEY_SHARE, {"repo": name})
    assert repo_id is not None
    return repo_id


def linked_blob(session: Session, repo_name: str, digest: str) -> Blob | None:
    return session.scalar(
        select(Blob)
        .join(RepositoryBlob, RepositoryBlob.blob_id == Blob.id)
        .join(Repository, Repository.id == RepositoryBlob.repository_id)
        .where(Repository.name == repo_name, Blob.digest == digest)
    )


def blob_by_digest(session: Session, digest: str) -> Blob | None:
    return session.scalar(select(Blob).where(Blob.digest == digest))


_BLOB_ID = select(Blob.id).where(Blob.digest == bindparam("digest"))


def link_blob(session: Session, repo_id: int, digest: str, size: int) -> None:
    # Garbage collection cannot delete this blob until the transaction ends (app/db/locks.py).
    locks.share(session, [digest])
    insert_ignore(session, Blob, {"digest": digest, "size": size}, ["digest"])
    blob_id = session.scalar(_BLOB_ID, {"digest": digest})
    # A link pushed again is new again: gc's grace period counts from the latest push.
    upsert(
        session,
        RepositoryBlob,
        {"repository_id": repo_id, "blob_id": blob_id, "created_at": utcnow()},
        ["repository_id", "blob_id"],
        ["created_at"],
    )


def unlink_blob(session: Session, repo_name: str, digest: str) -> bool:
    blob_id = select(Blob.id).where(Blob.digest == digest).scalar_subquery()
    repo_id = select(Repository.id).where(Repository.name == repo_name).scalar_subquery()
    result = session.execute(
        delete(RepositoryBlob).where(
            RepositoryBlob.blob_id == blob_id, RepositoryBlob.repository_id == repo_id
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


_LINKED_DIGESTS = (
    select(Blob.digest)
    .join(RepositoryBlob, RepositoryBlob.blob_id == Blob.id)
    .where(
        RepositoryBlob.repository_id == bindparam("repo_id"),
        Blob.digest.in_(bindparam("digests", expanding=True)),
    )
)
_MANIFEST_DIGESTS = select(Manifest.digest).where(
    Manifest.repository_id == bindparam("repo_id"),
    Manifest.digest.in_(bindparam("digests", expanding=True)),
)


def missing_blobs(session: Session, repo_id: int, digests: list[str]) -> list[str]:
    if not digests:
        return []
    found = set(session.scalars(_LINKED_DIGESTS, {"repo_id": repo_id, "digests": digests}))
    return [d for d in dict.fromkeys(digests) if d not in found]


def missing_manifests(session: Session, repo_id: int, digests: list[str]) -> list[str]:
    if not digests:
        return []
    found = set(session.scalars(_MANIFEST_DIGESTS, {"repo_id": repo_id, "digests": digests}))
    return [d for d in dict.fromkeys(digests) if d not in found]


# The hot read paths (every pull) as statements built once: constructing a select() costs
# more than running it on a warm connection.
_MANIFEST_COLUMNS = (
    Manifest.digest,
    Manifest.media_type,
    Manifest.payload,
    Manifest.subject_digest,
)
MANIFEST_BY_TAG = (
    select(*_MANIFEST_COLUMNS)
    .join(Tag, Tag.manifest_id == Manifest.id)
    .join(Repository, Repository.id == Tag.repository_id)
    .where(Repository.name == bindparam("repo"), Tag.name == bindparam("reference"))
)
MANIFEST_BY_DIGEST = (
    select(*_MANIFEST_COLUMNS)
    .join(Repository, Repository.id == Manifest.repository_id)
    .where(Repository.name == bindparam("repo"), Manifest.digest == bindparam("reference"))
)
LINKED_BLOB_SIZE = (
    select(Blob.size)
    .join(RepositoryBlob, RepositoryBlob.blob_id == Blob.id)
    .join(Repository, Repository.id == RepositoryBlob.repository_id)
    .where(Repository.name == bindparam("repo"), Blob.digest == bindparam("digest"))
)

# Tag names are never empty, so `> ""` is "from the start"; the limit is always bound.
TAG_PAGE = (
    select(Tag.name)
    .where(Tag.repository_id == REPOSITORY_ID.scalar_subquery(), Tag.name > bindparam("last"))
    .order_by(Tag.name)
    .limit(bindparam("limit"))
)
NO_LIMIT = 2**62


def repository_names(session: Session, last: str | None, limit: int | None) -> list[str]:
    """Repositories that hold something: a manifest or at least one linked blob."""
    has_content = or_(
        exists().where(Manifest.repository_id == Repository.id),
        exists().where(RepositoryBlob.repository_id == Repository.id),
    )
    query = select(Repository.name).where(has_content).order_by(Repository.name)
    if last is not None:
        query = query.where(Repository.name > last)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def referrers(
    session: Session, repo_name: str, subject: str, artifact_type: str | None
) -> list[Manifest]:
    query = (
        select(Manifest)
        .join(Repository, Repository.id == Manifest.repository_id)
        .where(Repository.name == repo_name, Manifest.subject_digest == subject)
        .order_by(Manifest.id)
    )
    if artifact_type is not None:
        query = query.where(and_(Manifest.artifact_type == artifact_type))
    return list(session.scalars(query))
