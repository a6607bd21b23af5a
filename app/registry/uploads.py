"""Blob upload sessions: start, append chunks, complete with a verified digest, cancel.

State lives in the `upload` table (its size is the truth) and in the driver, so any
worker or instance can continue a session another began. Bytes stream through in
fixed-size chunks and no transaction is open while they do.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO

from app.errors import (
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    InsufficientStorage,
    RangeInvalid,
    SizeInvalid,
)
from app.notifications import events
from app.registry import blobs, paths, queries
from app.registry.context import Context
from app.registry.references import Digest
from app.storage import PathNotFound, StorageFull

CHUNK = 1024 * 1024
# How long a writer keeps an upload without renewing; it renews every quarter of this.
LEASE = timedelta(seconds=15)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UploadState:
    id: str
    size: int
    sha256: str | None = None  # of those `size` bytes, when known


class _HashCache:
    """sha256 states of recent uploads, so that completing an upload streamed through this
    worker needs no second read of its bytes. Only a shortcut: on a miss the bytes are
    hashed from storage, so a session continued elsewhere is still verified."""

    def __init__(self, capacity: int = 64) -> None:
        self._entries: OrderedDict[str, tuple[int, hashlib._Hash]] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def take(self, upload_id: str, size: int) -> hashlib._Hash | None:
        with self._lock:
            entry = self._entries.pop(upload_id, None)
        if entry is None or entry[0] != size:
            return None
        return entry[1]

    def put(self, upload_id: str, size: int, hasher: hashlib._Hash) -> None:
        with self._lock:
            self._entries[upload_id] = (size, hasher)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def drop(self, upload_id: str) -> None:
        with self._lock:
            self._entries.pop(upload_id, None)


_hashes = _HashCache()


def _now() -> datetime:
    return datetime.now(UTC)


class _Lease:
    """The right to write an upload's bytes, held by one request at a time across every
    worker and instance. Without it, two PATCHes on one upload could interleave, and one's
    rollback would cut off the other's bytes. A holder that dies loses it after LEASE."""

    def __init__(self, reg: Context, upload_id: str, token: str) -> None:
        self._reg, self._id, self._token = reg, upload_id, token
        self._renewed = time.monotonic()
        self._held = True

    @classmethod
    def claim(cls, reg: Context, repo: str, upload_id: str) -> tuple[_Lease, UploadState]:
        """Take the lease and read where the upload stands in one statement (one round trip
        per chunk, not two). Errors say why: unknown, expired, or busy with another request."""
        if not _valid_id(upload_id):
            raise BlobUploadUnknown({"upload": upload_id})
        token, now = str(uuid.uuid4()), _now()
        oldest = now - timedelta(seconds=reg.settings.upload_max_age)
        with reg.db.statement() as session:
            row = queries.claim_upload(session, upload_id, repo, token, now, now + LEASE, oldest)
        if row is None:
            status(reg, repo, upload_id)  # unknown or expired: its error says so
            raise RangeInvalid({"upload": upload_id}, message="upload busy or changed")
        return cls(reg, upload_id, token), UploadState(upload_id, row.size, row.sha256)

    def renew(self) -> None:
        """Called while bytes stream: extends the lease (and the session's idle clock)."""
        if time.monotonic() - self._renewed < LEASE.total_seconds() / 4:
            return
        now = _now()
        with self._reg.db.statement() as session:
            kept = queries.renew_upload(session, self._id, self._token, now, now + LEASE)
        if not kept:
            raise _LeaseLost(self._id)
        self._renewed = time.monotonic()

    def finish(self, state: UploadState) -> None:
        """Record the new size (and digest) and let go, in one statement."""
        row = queries.UploadRow(state.size, state.sha256)
        with self._reg.db.statement() as session:
            kept = queries.finish_upload(session, self._id, self._token, row, _now())
        if not kept:
            raise _LeaseLost(self._id)
        self.done()

    def done(self) -> None:
        """The lease ended with the work (finished, or the session is gone): no release."""
        self._held = False

    def release(self) -> None:
        if not self._held:
            return
        with self._reg.db.statement() as session:
            queries.release_upload(session, self._id, self._token)


class _LeaseLost(RangeInvalid):
    message = "upload taken over by another request"


@contextlib.contextmanager
def _leased(reg: Context, repo: str, upload_id: str) -> Iterator[tuple[_Lease, UploadState]]:
    lease, state = _Lease.claim(reg, repo, upload_id)
    try:
        yield lease, state
    finally:
        lease.release()


def start(reg: Context, repo: str) -> UploadState:
    # No file yet: the first chunk creates it, so starting a session costs no fsync.
    upload_id = str(uuid.uuid4())
    with reg.db.transaction(write=True, durable=False) as session:
        repo_id = queries.ensure_repository(session, repo)
        queries.start_upload(session, upload_id, repo_id)
    return UploadState(upload_id, 0)


@dataclass(frozen=True)
class Begun:
    """What a POST to the uploads endpoint did: a blob now in the repository (mounted, or
    uploaded whole), or a session for the client to send chunks to."""

    blob: str | None = None  # the digest, when the blob is there already
    session: UploadState | None = None


def begin(
    reg: Context,
    repo: str,
    *,
    mount: Digest | None = None,
    source: str | None = None,
    digest: Digest | None = None,
    body: IO[bytes] | None = None,
    content_length: int | None = None,
    origin: events.RequestInfo | None = None,
) -> Begun:
    """Mount `mount` from `source` (the caller may pull it: the view checked) if it is there;
    else start a session, and with `digest` take the body as the whole blob (a monolithic
    upload). A monolithic upload that fails (a wrong digest, a client gone mid-body) leaves
    no session and no bytes behind."""
    if mount is not None and source and blobs.mount(reg, repo, mount, source, origin):
        return Begun(blob=str(mount))
    state = start(reg, repo)
    if digest is None:
        return Begun(session=state)
    try:
        complete(reg, repo, state.id, digest, body, None, content_length, origin)
    except BaseException:
        _forget(reg, state.id)
        raise
    return Begun(blob=str(digest))


def _valid_id(upload_id: str) -> bool:
    try:
        return str(uuid.UUID(upload_id)) == upload_id
    except ValueError:
        return False


def status(reg: Context, repo: str, upload_id: str) -> UploadState:
    if not _valid_id(upload_id):
        raise BlobUploadUnknown({"upload": upload_id})
    with reg.db.transaction() as session:
        row = queries.upload_status(session, upload_id, repo)
    if row is None:
        raise BlobUploadUnknown({"upload": upload_id})
    if _now() - row.updated_at > timedelta(seconds=reg.settings.upload_max_age):
        raise BlobUploadUnknown({"upload": upload_id}, message="upload session expired")
    return UploadState(upload_id, row.size)


def append(
    reg: Context,
    repo: str,
    upload_id: str,
    body: IO[bytes],
    content_range: tuple[int, int] | None = None,
    content_length: int | None = None,
) -> UploadState:
    """Add one chunk. With a Content-Range it must start where the upload ends; either way
    the chunk lands whole or not at all (a disconnect leaves the upload as it was)."""
    with _leased(reg, repo, upload_id) as (lease, state):
        state = _write_chunk(reg, lease, state, body, content_range, content_length)
        lease.finish(state)
    return state


def _chunk_length(
    size: int, content_range: tuple[int, int] | None, content_length: int | None
) -> int | None:
    """How many bytes the chunk must have (None: whatever the body holds)."""
    if content_range is None:
        return content_length
    start_, end = content_range
    if start_ != size or end < start_:
        raise RangeInvalid({"range": f"{start_}-{end}", "size": size})
    expected = end - start_ + 1
    if content_length is not None and content_length != expected:
        raise SizeInvalid({"content_length": content_length, "range_length": expected})
    return expected


def _check_stored(reg: Context, upload_id: str, size: int) -> None:
    """The stored bytes must be at least what the database accepted; more is what a crash or
    a lost client left behind, and is cut off."""
    path = paths.upload_data(upload_id)
    try:
        on_disk = reg.driver.stat(path).size
    except PathNotFound:
        on_disk = 0  # no chunk has arrived yet
    if on_disk < size:
        raise BlobUploadInvalid({"upload": upload_id}, message="upload data lost; start again")
    if on_disk > size:
        reg.driver.truncate(path, size)


def _write_chunk(
    reg: Context,
    lease: _Lease,
    state: UploadState,
    body: IO[bytes],
    content_range: tuple[int, int] | None,
    content_length: int | None,
) -> UploadState:
    """Stream one chunk onto the upload's bytes under the lease; returns where the upload
    stands then. The caller records it (or publishes the blob) before the lease goes."""
    upload_id, size = state.id, state.size
    expected = _chunk_length(size, content_range, content_length)
    path = paths.upload_data(upload_id)
    _check_stored(reg, upload_id, size)
    hasher = _hashes.take(upload_id, size)
    if hasher is None and size == 0:
        hasher = Digest("sha256", "").hasher()
    written = 0
    writer = reg.driver.writer(path, append=True)
    try:
        while True:
            limit = CHUNK if expected is None else min(CHUNK, expected - written + 1)
            data = body.read(limit) if limit > 0 else b""
            if not data:
                break
            writer.write(data)
            lease.renew()
            if hasher is not None:
                hasher.update(data)
            written += len(data)
            if expected is not None and written > expected:
                break
        if expected is not None and written != expected:
            raise SizeInvalid({"expected": expected, "received": written})
        writer.commit()
    except _LeaseLost:
        raise  # the bytes are another request's now: leave them alone
    except StorageFull as exc:
        # What was accepted before stays; cancelling the upload frees its space.
        writer.cancel()
        log.warning("upload %s: storage full: %s", upload_id, exc)
        raise InsufficientStorage(
            {"upload": upload_id, "kept": size},
            message="the registry's storage is full; the chunk was not stored",
        ) from exc
    except SizeInvalid:
        writer.cancel()
        raise
    except TimeoutError as exc:  # the server's request_body_timeout: nothing came for long
        writer.cancel()
        raise BlobUploadInvalid(
            {"upload": upload_id, "kept": size},
            status=408,
            message="the chunk stopped arriving; the upload keeps what came before it",
        ) from exc
    except Exception as exc:
        # The client went away or sent a broken body: drop the partial chunk.
        writer.cancel()
        log.info("upload %s: chunk dropped: %r", upload_id, exc)
        raise BlobUploadInvalid({"upload": upload_id}, message="chunk not received whole") from exc
    finally:
        writer.close()
    new_size = size + written
    if hasher is None:
        return UploadState(upload_id, new_size)
    # Cached while the lease is held: nobody else can have written in between.
    _hashes.put(upload_id, new_size, hasher)
    return UploadState(upload_id, new_size, hasher.hexdigest())


def _digest_of(reg: Context, lease: _Lease, state: UploadState, digest: Digest) -> str:
    """The hex digest of the upload's bytes in digest's algorithm: the sha256 recorded with
    the last chunk (whichever worker wrote it), else a read of the bytes. A running hash is
    only ever cached together with that record, so the cache has nothing more to offer."""
    if digest.algorithm == "sha256" and state.sha256 is not None:
        return state.sha256
    hasher = digest.hasher()
    if state.size:
        with reg.driver.reader(paths.upload_data(state.id)) as stream:
            while data := stream.read(CHUNK):
                hasher.update(data)
                lease.renew()
    return hasher.hexdigest()


def complete(
    reg: Context,
    repo: str,
    upload_id: str,
    digest: Digest,
    body: IO[bytes] | None = None,
    content_range: tuple[int, int] | None = None,
    content_length: int | None = None,
    origin: events.RequestInfo | None = None,
) -> UploadState:
    """Take the last chunk, verify the digest over every byte, then make the blob visible;
    one lease from the first byte of the last chunk to the publish."""
    with _leased(reg, repo, upload_id) as (lease, state):
        if body is not None:
            state = _write_chunk(reg, lease, state, body, content_range, content_length)
        else:
            _check_stored(reg, upload_id, state.size)
        if _digest_of(reg, lease, state, digest) != digest.hex:
            _forget(reg, upload_id)
            lease.done()
            raise DigestInvalid({"digest": str(digest)})
        if state.size:
            # The bytes reach the disk before the publish transaction, which holds SQLite's
            # write lock (and gc's digest lock): a 64 MiB layer's fsync takes ~80 ms here.
            reg.driver.sync(paths.upload_data(upload_id))
        _publish(reg, repo, upload_id, digest, state.size, origin)
        lease.done()  # the session row went with the publish
    _remove_bytes(reg, upload_id)
    return state


def _publish(
    reg: Context,
    repo: str,
    upload_id: str,
    digest: Digest,
    size: int,
    origin: events.RequestInfo | None,
) -> None:
    """Link the verified blob into the repository and move its bytes into place.

    Not durable on its own (Database.transaction): a blob matters once a manifest names
    it, and the manifest's durable commit flushes the database's log up to itself, this
    link included. A database crash in between loses a link no manifest needs yet, and the
    client's manifest PUT then says which blob to push again (MANIFEST_BLOB_UNKNOWN); the
    bytes left without a row are gc's orphans."""
    target = paths.blob_data(digest)
    with reg.db.transaction(write=True, durable=False) as session:
        repo_id = queries.ensure_repository(session, repo)
        queries.link_blob(session, repo_id, str(digest), size)
        # Under link_blob's digest lock: gc cannot delete these bytes before we commit.
        if reg.driver.exists(target):
            pass  # the same bytes are there already
        elif size == 0:
            reg.driver.put_content(target, b"")  # an empty blob never got a chunk
        else:
            reg.driver.move(paths.upload_data(upload_id), target)
        queries.forget_upload(session, upload_id)
        push = events.blob_event("push", repo, str(digest), size, origin)
        reg.outbox.record(session, [push])


def cancel(reg: Context, repo: str, upload_id: str) -> None:
    status(reg, repo, upload_id)
    _forget(reg, upload_id)


def _forget(reg: Context, upload_id: str) -> None:
    with reg.db.statement() as session:
        queries.forget_upload(session, upload_id)
    _remove_bytes(reg, upload_id)


def _remove_bytes(reg: Context, upload_id: str) -> None:
    _hashes.drop(upload_id)
    with contextlib.suppress(PathNotFound):
        reg.driver.delete(paths.upload_dir(upload_id))


def purge_stale(reg: Context, max_age: int | None = None) -> int:
    """Forget upload sessions idle for longer than max_age and delete their bytes, as well as
    upload files the database does not know (a crash between file and row). Returns how
    many uploads' bytes went."""
    cutoff = _now() - timedelta(seconds=reg.settings.upload_max_age if max_age is None else max_age)
    with reg.db.transaction(write=True) as session:
        stale, known = queries.forget_stale_uploads(session, cutoff)
    for upload_id in stale:
        _remove_bytes(reg, upload_id)
    try:
        on_disk = [path.rsplit("/", 1)[-1] for path in reg.driver.list(paths.UPLOADS_ROOT)]
    except PathNotFound:
        on_disk = []
    orphans = 0
    for upload_id in set(on_disk) - known - set(stale):
        try:
            if reg.driver.stat(paths.upload_data(upload_id)).mtime > cutoff.timestamp():
                continue  # a session being created right now: its row may not be visible yet
        except PathNotFound:
            # No data file yet: start() may be writing it; the directory's age tells.
            with contextlib.suppress(PathNotFound):
                if reg.driver.stat(paths.upload_dir(upload_id)).mtime > cutoff.timestamp():
                    continue
        _remove_bytes(reg, upload_id)
        orphans += 1
    return len(stale) + orphans
