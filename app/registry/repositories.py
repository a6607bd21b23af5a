"""Deleting a whole repository: its tags, manifests, blob links and upload sessions in one
transaction, then the blobs that no other repository uses (bytes of shared blobs stay)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.errors import NameUnknown, Unsupported
from app.notifications import events
from app.registry import gc, paths, queries
from app.registry.context import Context
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


def _remove_rows(
    reg: Context, name: str, origin: events.RequestInfo | None = None
) -> queries.RemovedRepository:
    with reg.db.transaction(write=True) as session:
        removed = queries.remove_repository(session, name)
        if removed is None:
            raise NameUnknown({"name": name})
        reg.outbox.record(session, [events.repository_deleted(name, origin)])
    return removed


def delete(
    reg: Context, name: str, batch_size: int = 500, origin: events.RequestInfo | None = None
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
