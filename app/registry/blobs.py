"""Blobs as a repository sees them: linked, readable by range, unlinked on delete."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from app.db import locks
from app.errors import BlobUnknown, Unsupported
from app.notifications import events
from app.registry import offload, paths, queries
from app.registry.context import Context
from app.registry.references import Digest, is_valid_name

Origin = Callable[[], events.RequestInfo]


@dataclass(frozen=True)
class Delivery:
    """How a blob's bytes reach the client: exactly one of these is set."""

    offload: dict[str, str] | None = None  # headers for the front end, which sends the file
    redirect: str | None = None  # a URL the client fetches the bytes from (S3 presigned)
    stream: BinaryIO | None = None  # Berth sends them itself


@dataclass(frozen=True)
class Download:
    """A blob found in a repository; `deliver` hands out its bytes."""

    reg: Context
    repo: str
    digest: Digest
    size: int

    def deliver(self, start: int = 0, pulled_by: Origin | None = None) -> Delivery:
        """The bytes from `start` on. A download from the start is a pull, and `pulled_by`
        (who asked; called only when an endpoint listens) gets its event; one resumed
        further on is not another pull."""
        reg, digest = self.reg, str(self.digest)
        if start == 0 and pulled_by is not None:
            size = self.size
            reg.outbox.publish(
                reg.db, lambda: events.blob_event("pull", self.repo, digest, size, pulled_by())
            )
        headers = offload.headers(reg, self.digest)
        if headers is not None:
            return Delivery(offload=headers)
        url = reg.driver.redirect_url(paths.blob_data(self.digest), "GET")
        if url is not None:
            return Delivery(redirect=url)
        return Delivery(stream=reg.driver.reader(paths.blob_data(self.digest), start))


def find(reg: Context, repo: str, digest: Digest) -> Download:
    """A blob linked into `repo`, else BLOB_UNKNOWN."""
    size = queries.linked_blob_size(reg.db, repo, str(digest))
    if size is None:
        raise BlobUnknown({"digest": str(digest)})
    return Download(reg, repo, digest, size)


def delete(
    reg: Context, repo: str, digest: Digest, origin: events.RequestInfo | None = None
) -> None:
    """Unlink the blob from the repository; its bytes go when garbage collection runs."""
    if not reg.settings.delete_enabled:
        raise Unsupported(message="deletion is disabled")
    with reg.db.transaction(write=True) as session:
        if not queries.unlink_blob(session, repo, str(digest)):
            raise BlobUnknown({"digest": str(digest)})
        reg.outbox.record(session, [events.blob_event("delete", repo, str(digest), None, origin)])


def mount(
    reg: Context,
    repo: str,
    digest: Digest,
    source: str,
    origin: events.RequestInfo | None = None,
) -> bool:
    """Link a blob from another repository; False (fall back to an upload) if it is not there."""
    if not is_valid_name(source):
        return False
    with reg.db.transaction(write=True) as session:
        locks.share(session, [str(digest)])  # gc must not free it between look-up and link
        blob = queries.linked_blob(session, source, str(digest))
        if blob is None:
            return False
        repo_id = queries.ensure_repository(session, repo)
        queries.link_blob(session, repo_id, blob.digest, blob.size)
        mounted = events.blob_event("mount", repo, blob.digest, blob.size, origin, source)
        reg.outbox.record(session, [mounted])
    return True
