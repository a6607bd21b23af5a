"""Deleting a whole repository: its tags, manifests, blob links and upload sessions in one
transaction, then the blobs that no other repository uses (bytes of shared blobs stay)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete as sql_delete
from sqlalchemy import select

from app.db.models import Blob, Manifest, ManifestReference, Repository, RepositoryBlob, Tag, Upload
from app.errors import NameUnknown, Unsupported
from app.registry import events, gc, paths
from app.registry.context import Registry
from app.registry.references import check_name
from app.storage import PathNotFound


@dataclass(frozen=True)
class DeletedRepository:
    name: str
    tags: int
    manifests: int
    blobs_unlinked: int
    uploads: int
    blobs_freed: int
    bytes_freed: int


@dataclass(frozen=True)
class _Removed:
    tags: int
    manifests: int
    links: int
    blob_ids: list[int]
    upload_ids: list[str]


def _remove_rows(reg: Registry, name: str, origin: events.RequestInfo | None = None) -> _Removed:
    with reg.db.transaction(write=True) as session:
        # FOR UPDATE waits for pushes into this repository in flight (ensure_repository holds
        # FOR KEY SHARE); pushes arriving later wait, then start a new, empty repository.
        repo_id = session.scalar(
            select(Repository.id).where(Repository.name == name).with_for_update()
        )
        if repo_id is None:
            raise NameUnknown({"name": name})
        manifest_ids = select(Manifest.id).where(Manifest.repository_id == repo_id)
        named = select(ManifestReference.digest).where(
            ManifestReference.manifest_id.in_(manifest_ids)
        )
        blob_ids = set(
            session.scalars(
                select(RepositoryBlob.blob_id).where(RepositoryBlob.repository_id == repo_id)
            )
        )
        blob_ids.update(session.scalars(select(Blob.id).where(Blob.digest.in_(named))))
        upload_ids = list(session.scalars(select(Upload.id).where(Upload.repository_id == repo_id)))
        tags = session.execute(sql_delete(Tag).where(Tag.repository_id == repo_id)).rowcount
        session.execute(
            sql_delete(ManifestReference).where(ManifestReference.manifest_id.in_(manifest_ids))
        )
        manifests = session.execute(
            sql_delete(Manifest).where(Manifest.repository_id == repo_id)
        ).rowcount
        links = session.execute(
            sql_delete(RepositoryBlob).where(RepositoryBlob.repository_id == repo_id)
        ).rowcount
        session.execute(sql_delete(Upload).where(Upload.repository_id == repo_id))
        session.execute(sql_delete(Repository).where(Repository.id == repo_id))
        events.record(session, reg, [events.repository_deleted(name, origin)])
    return _Removed(tags, manifests, links, sorted(blob_ids), upload_ids)


def delete(
    reg: Registry, name: str, batch_size: int = 500, origin: events.RequestInfo | None = None
) -> DeletedRepository:
    """Behind the delete switch, like every other delete."""
    if not reg.settings.delete_enabled:
        raise Unsupported(message="deletion is disabled")
    check_name(name)
    removed = gc.retrying(lambda: _remove_rows(reg, name, origin))
    for upload_id in removed.upload_ids:
        with contextlib.suppress(PathNotFound):
            reg.driver.delete(paths.upload_dir(upload_id))
    # No grace period here: what the repository alone used goes now. A push elsewhere that
    # needs one of these blobs holds its digest lock, so free_blobs sees its link and keeps it.
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    freed, nbytes = gc.free_blobs(reg, removed.blob_ids, cutoff, batch_size)
    return DeletedRepository(
        name,
        removed.tags,
        removed.manifests,
        removed.links,
        len(removed.upload_ids),
        freed,
        nbytes,
    )
