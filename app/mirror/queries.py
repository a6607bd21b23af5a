"""The pull-through cache's SQL: the single-flight rows of blob fetches, the tags' last check
against their upstream, the repositories' last pull, and what the cache holds. Typed
results, never raw rows."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.db import Database
from app.db.models import (
    Base,
    Blob,
    Manifest,
    ManifestReference,
    MirrorFetch,
    MirrorRepository,
    MirrorTag,
    Repository,
    RepositoryBlob,
)
from app.db.upserts import insert_ignore, upsert

F = Base.metadata.tables[MirrorFetch.__tablename__]


def _count(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# --- the single flight -----------------------------------------------------------------------

_TAKE = (
    update(F)
    .where(
        F.c.digest == bindparam("d"),
        or_(F.c.owner == bindparam("owner"), F.c.expires_at < bindparam("at")),
    )
    .values(owner=bindparam("owner"), expires_at=bindparam("expires"), started_at=bindparam("at"))
)
_RENEW = (
    update(F)
    .where(F.c.digest == bindparam("d"), F.c.owner == bindparam("owner"))
    .values(expires_at=bindparam("expires"))
)
_RELEASE = delete(F).where(F.c.digest == bindparam("d"), F.c.owner == bindparam("owner"))


def claim_fetch(
    session: Session, digest: str, owner: str, upstream: str, at: datetime, expires: datetime
) -> bool:
    """Become the one fetcher of `digest`: True when nobody holds it, or its holder's lease
    has lapsed (it died, or stalled)."""
    row = {"digest": digest, "owner": owner, "upstream": upstream, "started_at": at}
    insert_ignore(session, MirrorFetch, {**row, "expires_at": expires}, ["digest"])
    params = {"d": digest, "owner": owner, "at": at, "expires": expires}
    return _count(session.execute(_TAKE, params)) > 0


def renew_fetch(session: Session, digest: str, owner: str, expires: datetime) -> bool:
    return _count(session.execute(_RENEW, {"d": digest, "owner": owner, "expires": expires})) > 0


def release_fetch(session: Session, digest: str, owner: str) -> None:
    session.execute(_RELEASE, {"d": digest, "owner": owner})


@dataclass(frozen=True)
class Fetching:
    digest: str
    upstream: str
    started_at: datetime
    expires_at: datetime


def fetches(session: Session) -> list[Fetching]:
    rows = session.execute(select(F.c.digest, F.c.upstream, F.c.started_at, F.c.expires_at))
    return [Fetching(*row) for row in rows]


_HELD = select(F.c.owner).where(F.c.digest == bindparam("d"), F.c.expires_at >= bindparam("at"))


def fetch_held(db: Database, digest: str, at: datetime) -> bool:
    """Whether a live fetch of `digest` is under way (a read: waiting requests poll it)."""
    with db.transaction() as session:
        return session.execute(_HELD, {"d": digest, "at": at}).first() is not None


# --- blobs the cache may link without asking upstream ---------------------------------------


def blob_size(session: Session, digest: str) -> int | None:
    """The size of a blob Berth holds (pushed, or cached for any repository)."""
    return session.scalar(select(Blob.size).where(Blob.digest == digest))


def known_blob_named_here(session: Session, repo: str, digest: str) -> int | None:
    """The size of a blob Berth has whose digest a cached manifest of `repo` names: the
    upstream said it is part of that repository, so linking it reveals nothing new."""
    named = (
        select(1)
        .select_from(ManifestReference)
        .join(Manifest, Manifest.id == ManifestReference.manifest_id)
        .join(Repository, Repository.id == Manifest.repository_id)
        .where(Repository.name == repo, ManifestReference.digest == digest)
        .exists()
    )
    return session.scalar(select(Blob.size).where(Blob.digest == digest, named))


# --- tags: when they were last checked upstream ----------------------------------------------


@dataclass(frozen=True)
class CheckedTag:
    digest: str
    checked_at: datetime


_CHECKED = (
    select(MirrorTag.digest, MirrorTag.checked_at)
    .join(Repository, Repository.id == MirrorTag.repository_id)
    .where(Repository.name == bindparam("repo"), MirrorTag.name == bindparam("tag"))
)


def _moment(raw: Any) -> datetime:
    if isinstance(raw, str):  # SQLite through the raw driver: ISO text, no zone
        raw = datetime.fromisoformat(raw)
    assert isinstance(raw, datetime)
    return raw if raw.tzinfo is not None else raw.replace(tzinfo=UTC)


def checked_tag(db: Database, repo: str, tag: str) -> CheckedTag | None:
    found = db.rows(_CHECKED, {"repo": repo, "tag": tag})
    if not found:
        return None
    digest, checked_at = found[0]
    return CheckedTag(digest, _moment(checked_at))


def mark_checked(session: Session, repo_id: int, tag: str, digest: str, at: datetime) -> None:
    upsert(
        session,
        MirrorTag,
        {"repository_id": repo_id, "name": tag, "digest": digest, "checked_at": at},
        ["repository_id", "name"],
        ["digest", "checked_at"],
    )


# --- repositories: when they were last pulled (retention counts from there) ----------------

_PULLED = (
    select(MirrorRepository.pulled_at)
    .join(Repository, Repository.id == MirrorRepository.repository_id)
    .where(Repository.name == bindparam("repo"))
)


def last_pull(db: Database, repo: str) -> datetime | None:
    """A read on the pull path: most pulls find a recent enough record and write nothing."""
    found = db.rows(_PULLED, {"repo": repo})
    return _moment(found[0][0]) if found else None


def mark_pulled(session: Session, repo_id: int, at: datetime) -> None:
    upsert(
        session,
        MirrorRepository,
        {"repository_id": repo_id, "pulled_at": at},
        ["repository_id"],
        ["pulled_at"],
    )


def mark_pulled_by_name(session: Session, repo: str, at: datetime) -> bool:
    """Record a pull of `repo`; False when the repository is gone (gc removed it)."""
    repo_id = session.scalar(select(Repository.id).where(Repository.name == repo))
    if repo_id is None:
        return False
    mark_pulled(session, repo_id, at)
    return True


@dataclass(frozen=True)
class CachedRepository:
    name: str
    pulled_at: datetime


def _under(prefix: str) -> Any:
    return Repository.name.like(prefix.replace("_", r"\_") + "/%", escape="\\")


def cached_repositories(
    session: Session, prefix: str, names: Collection[str] | None = None
) -> list[CachedRepository]:
    """The cache's repositories under `prefix/` (those it wrote), by name, with their last
    pull; only those among `names` when given."""
    query = (
        select(Repository.name, MirrorRepository.pulled_at)
        .join(MirrorRepository, MirrorRepository.repository_id == Repository.id)
        .where(_under(prefix))
        .order_by(Repository.name)
    )
    if names is not None:
        query = query.where(Repository.name.in_(list(names)))
    return [CachedRepository(name, pulled_at) for name, pulled_at in session.execute(query)]


# --- what the cache holds --------------------------------------------------------------------


@dataclass(frozen=True)
class CacheSize:
    repositories: int
    blobs: int
    bytes: int


def cache_size(session: Session, prefix: str) -> CacheSize:
    """Repositories under `prefix/` and the distinct blobs linked into them."""
    under = _under(prefix)
    repositories = session.scalar(select(func.count()).select_from(Repository).where(under))
    blobs = (
        select(Blob.id, Blob.size)
        .join(RepositoryBlob, RepositoryBlob.blob_id == Blob.id)
        .join(Repository, Repository.id == RepositoryBlob.repository_id)
        .where(under)
        .distinct()
        .subquery()
    )
    count, total = session.execute(
        select(func.count(), func.coalesce(func.sum(blobs.c.size), 0))
    ).one()
    return CacheSize(int(repositories or 0), int(count), int(total))
