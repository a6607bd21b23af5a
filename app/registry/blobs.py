"""Blobs as a repository sees them: linked, readable by range, unlinked on delete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from app.db import locks, queries
from app.errors import BlobUnknown, Unsupported
from app.registry import events, paths
from app.registry.context import Registry
from app.registry.references import Digest, is_valid_name


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int


def stat(reg: Registry, repo: str, digest: Digest) -> BlobInfo:
    found = reg.db.rows(queries.LINKED_BLOB_SIZE, {"repo": repo, "digest": str(digest)})
    if not found:
        raise BlobUnknown({"digest": str(digest)})
    return BlobInfo(str(digest), found[0][0])


def open_blob(reg: Registry, digest: Digest, offset: int = 0) -> BinaryIO:
    return reg.driver.reader(paths.blob_data(digest), offset)


def redirect_url(reg: Registry, digest: Digest) -> str | None:
    """A URL the client may GET the bytes from straight (S3 presigned); None: serve them."""
    return reg.driver.redirect_url(paths.blob_data(digest), "GET")


def delete(
    reg: Registry, repo: str, digest: Digest, origin: events.RequestInfo | None = None
) -> None:
    """Unlink the blob from the repository; its bytes go when garbage collection runs."""
    if not reg.settings.delete_enabled:
        raise Unsupported(message="deletion is disabled")
    with reg.db.transaction(write=True) as session:
        if not queries.unlink_blob(session, repo, str(digest)):
            raise BlobUnknown({"digest": str(digest)})
        events.record(session, reg, [events.blob_event("delete", repo, str(digest), None, origin)])


def mount(
    reg: Registry,
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
        events.record(session, reg, [mounted])
    return True
