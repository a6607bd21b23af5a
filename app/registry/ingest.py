"""Content arriving from outside the HTTP API (`berth import`): blobs whose bytes are put in
place directly, verified first, then linked; manifests stored through app/registry/manifests.

Everything here is idempotent, so an import that stops half-way is finished by running it
again: a blob already stored is only linked, a link or a tag already there is left as is
(its timestamps untouched), a manifest already stored is not stored again.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from app.errors import DigestInvalid
from app.registry import manifests, paths, queries, uploads
from app.registry.context import Context
from app.registry.queries import StoredManifest
from app.registry.references import Digest

CHUNK = 1024 * 1024


def stored_size(reg: Context, digest: Digest) -> int | None:
    """The blob's size when Berth has its row and its bytes, else None."""
    with reg.db.transaction() as session:
        size = queries.blob_size(session, str(digest))
    if size is None or not reg.driver.exists(paths.blob_data(digest)):
        return None
    return size


def linked_size(reg: Context, repo: str, digest: Digest) -> int | None:
    return queries.linked_blob_size(reg.db, repo, str(digest))


def link(reg: Context, repo: str, digest: Digest, size: int) -> None:
    """Link a blob whose bytes Berth holds into `repo`."""
    with reg.db.transaction(write=True) as session:
        repo_id = queries.ensure_repository(session, repo)
        queries.link_blob(session, repo_id, str(digest), size)


def verify_file(path: Path, digest: Digest, size: int | None = None) -> int:
    """Hash a file in chunks; its size, or DigestInvalid when it is not `digest`."""
    hasher, total = digest.hasher(), 0
    with path.open("rb") as stream:
        while data := stream.read(CHUNK):
            hasher.update(data)
            total += len(data)
    if hasher.hexdigest() != digest.hex or (size is not None and total != size):
        raise DigestInvalid({"digest": str(digest), "path": str(path)})
    return total


def hardlink(reg: Context, repo: str, digest: Digest, source: Path) -> bool:
    """Verify `source`, hard-link it in as the blob's bytes and link it into `repo`. False
    when the driver keeps no local files or the file is on another filesystem: copy then."""
    target = reg.driver.local_path(paths.blob_data(digest))
    if target is None:
        return False
    size = verify_file(source, digest)
    target_path = Path(target)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target_path)
    except FileExistsError:
        pass  # the bytes are there already (verified when they came)
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            return False
        raise
    link(reg, repo, digest, size)
    return True


def copy_in(
    reg: Context,
    repo: str,
    digest: Digest,
    size: int,
    opener: Callable[[], IO[bytes]],
) -> None:
    """Stream the bytes in as an upload does (verified over every byte, synced, published,
    linked); a failure leaves nothing behind."""
    with contextlib.closing(opener()) as stream:
        uploads.begin(reg, repo, digest=digest, body=stream, content_length=size)


def stored_manifest(reg: Context, repo: str, reference: str) -> StoredManifest | None:
    if ":" in reference:
        return queries.manifest(reg.db, repo, digest=reference)
    return queries.manifest(reg.db, repo, tag=reference)


def put_manifest(
    reg: Context, repo: str, reference: str, body: bytes, media_type: str | None
) -> bool:
    """Store a manifest (exact bytes) by digest, or tag it; False when it was so already."""
    found = stored_manifest(reg, repo, reference)
    digest = str(Digest.of(body))
    if found is not None and found.digest == digest:
        return False
    manifests.put(reg, repo, reference, body, media_type)
    return True
