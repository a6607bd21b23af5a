"""Pulls through the cache: what a manifest or blob request for a mirrored name gets.

Cached content is ordinary registry content (repositories named `<prefix>/<remote>`), so a
hit is the content services' own answer. A miss asks the upstream:

- a manifest is fetched whole (they are small), its digest checked, then stored and tagged
  in one short transaction; a tag is trusted for the upstream's `ttl`, then revalidated with
  a HEAD; when the upstream cannot be asked, the cached tag is served with a Warning;
- a blob is fetched by one request at a time across every worker and instance (a row in
  `mirror_fetch` is the single flight): its bytes go to the first client and into storage
  as they arrive, hashed on the way; the last piece reaches the client only once the digest
  is verified, so a corrupt upstream gives a truncated response, never a whole wrong blob,
  and nothing is stored. The others wait for the blob to be in place and read it from there.
  No transaction is open while bytes stream.

Every pull of a cached repository keeps it from retention (app/mirror/retention.py): the
writes above record it in passing, and a manifest answered from the cache records it when
the last record has grown older than the recording interval.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO, cast

import requests
from sqlalchemy.exc import SQLAlchemyError

from app.db import locks
from app.errors import (
    DigestInvalid,
    ManifestInvalid,
    NameInvalid,
    RegistryError,
    TooManyRequests,
    Unavailable,
)
from app.mirror import queries, stats
from app.mirror.client import UpstreamClient
from app.mirror.context import Context
from app.mirror.upstreams import Route, record_interval
from app.notifications import events
from app.registry import blobs, manifests, paths
from app.registry import queries as content
from app.registry.context import Context as ContentContext
from app.registry.queries import StoredManifest
from app.registry.references import Digest, check_tag, is_digest, is_valid_name
from app.storage import FileWriter, PathNotFound

log = logging.getLogger(__name__)
ACCEPT = ", ".join(
    [manifests.OCI_INDEX, manifests.OCI_MANIFEST, manifests.DOCKER_LIST, manifests.DOCKER_MANIFEST]
)
CHUNK = 1024 * 1024
# How long a fetcher keeps the single flight without renewing; it renews every quarter.
LEASE = timedelta(seconds=15)
FOLLOW_LIMIT = 600.0  # seconds a request waits for another's fetch of the same blob
POLL = 0.05
Origin = Callable[[], events.RequestInfo]


def _now() -> datetime:
    return datetime.now(UTC)


def route(reg: Context, name: str, ns: str | None = None) -> Route | None:
    """The upstream `name` comes from; None for Berth's own repositories."""
    found = reg.mirror.route(name, ns)
    if found is None:
        return None
    if found.fallback and content.repository_exists(reg.db, name):
        return None  # Berth's own repository of that name wins over the default upstream
    if not is_valid_name(found.repo):
        raise NameInvalid({"name": found.repo}, message="name too long under the mirror's prefix")
    return found


def _asked(upstream: str, call: Callable[[], requests.Response]) -> requests.Response:
    """An upstream request, its failures counted per OCI code."""
    try:
        return call()
    except RegistryError as exc:
        stats.error(upstream, exc.code)
        raise


# --- manifests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    manifest: StoredManifest
    warning: str | None = None  # a Warning header: a stale tag served unchecked


def manifest(
    reg: Context,
    name: str,
    reference: str,
    ns: str | None = None,
    pulled_by: Origin | None = None,
    client_has: Callable[[str], bool] | None = None,
) -> Served:
    """A manifest by tag or digest, through the cache when `name` is mirrored."""
    where = route(reg, name, ns)
    if where is None:
        return Served(manifests.get(reg, name, reference, pulled_by, client_has))
    prefix = where.upstream.prefix
    warning = None
    if is_digest(reference):
        digest = Digest.parse(reference)
        if content.manifest(reg.db, where.repo, digest=str(digest)) is None:
            stats.miss(prefix, "manifest")
            _fetch_manifest(reg, where, str(digest), digest)
        else:
            stats.hit(prefix, "manifest")
    else:
        tag = check_tag(reference)
        cached = content.manifest(reg.db, where.repo, tag=tag)
        if cached is not None and _fresh(reg, where, tag, cached.digest):
            stats.hit(prefix, "manifest")
        else:
            try:
                _revalidate(reg, where, tag, cached)
            except (Unavailable, TooManyRequests) as exc:
                if cached is None:
                    raise
                stats.stale(prefix)
                log.warning(
                    "mirror: serving %s:%s unchecked (stale): upstream %s: %s",
                    where.repo, tag, prefix, exc.message,
                )  # fmt: skip
                warning = f'110 berth "stale: upstream {prefix} could not be asked; {exc.message}"'
    served = Served(manifests.get(reg, where.repo, reference, pulled_by, client_has), warning)
    _record_pull(reg, where)
    return served


def _record_pull(reg: Context, where: Route) -> None:
    """Keep the repository from retention: a read at most once per interval per worker, a
    write only when the database's record is older than the interval."""
    pulls = reg.mirror.pulls
    interval = record_interval(where.upstream.retention_for(where.repo))
    if not pulls.due(where.repo, interval):
        return
    now = _now()
    try:
        last = queries.last_pull(reg.db, where.repo)
        if last is not None and (age := (now - last).total_seconds()) < interval:
            pulls.noted(where.repo, max(age, 0.0))
            return
        with reg.db.transaction(write=True) as session:
            recorded = queries.mark_pulled_by_name(session, where.repo, now)
    except SQLAlchemyError as exc:  # bookkeeping (gc may be removing it): served all the same
        log.warning("mirror: could not record a pull of %s: %s", where.repo, exc)
        return
    if recorded:
        pulls.noted(where.repo)


def _fresh(reg: Context, where: Route, tag: str, digest: str) -> bool:
    checked = queries.checked_tag(reg.db, where.repo, tag)
    if checked is None or checked.digest != digest:
        return False
    return (_now() - checked.checked_at).total_seconds() < where.upstream.ttl


def _revalidate(reg: Context, where: Route, tag: str, cached: StoredManifest | None) -> None:
    """Ask the upstream what the tag names now: the same digest -> trusted for another ttl;
    another -> fetched and retagged."""
    client, prefix = reg.mirror.client(where.upstream), where.upstream.prefix
    if cached is not None:
        head = _asked(
            prefix,
            lambda: client.get(where.remote, "manifests", tag, accept=ACCEPT, method="HEAD"),
        )
        head.close()
        if head.headers.get("Docker-Content-Digest") == cached.digest:
            stats.hit(prefix, "manifest")
            with reg.db.transaction(write=True) as session:
                repo_id = content.ensure_repository(session, where.repo)
                queries.mark_checked(session, repo_id, tag, cached.digest, _now())
                queries.mark_pulled(session, repo_id, _now())
            reg.mirror.pulls.noted(where.repo)
            return
    stats.miss(prefix, "manifest")
    _fetch_manifest(reg, where, tag, None)


def _fetch_manifest(reg: Context, where: Route, reference: str, wanted: Digest | None) -> None:
    client, prefix = reg.mirror.client(where.upstream), where.upstream.prefix
    response = _asked(
        prefix,
        lambda: client.get(where.remote, "manifests", reference, accept=ACCEPT, stream=True),
    )
    limit = reg.settings.max_manifest_size
    try:
        body = bytearray()
        for piece in response.iter_content(64 * 1024):
            body += piece
            if len(body) > limit:
                raise ManifestInvalid(
                    {"upstream": prefix, "limit": limit},
                    message=f"upstream {prefix} sent a manifest over {limit} bytes",
                    status=502,
                )
    except requests.RequestException as exc:
        raise client.unreachable(exc) from exc
    finally:
        response.close()
    payload = bytes(body)
    digest = Digest.of(payload, wanted.algorithm if wanted else "sha256")
    declared = response.headers.get("Docker-Content-Digest", "")
    if (wanted is not None and digest != wanted) or (
        wanted is None and declared.startswith("sha256:") and declared != str(digest)
    ):
        stats.error(prefix, DigestInvalid.code)
        log.error(
            "mirror: upstream %s sent a manifest for %s:%s hashing to %s: not stored",
            prefix, where.remote, reference, digest,
        )  # fmt: skip
        raise DigestInvalid(
            {"upstream": prefix, "reference": reference, "received": str(digest)},
            message=f"upstream {prefix} sent a manifest that does not match its digest",
            status=502,
        )
    try:
        parsed = manifests.parse(payload, response.headers.get("Content-Type"))
    except ManifestInvalid as exc:
        raise ManifestInvalid(
            {"upstream": prefix, "reason": exc.message},
            message=f"upstream {prefix} sent a manifest Berth cannot cache: {exc.message}",
            status=502,
        ) from exc
    new = parsed.row(digest, payload)
    tag = None if wanted is not None else reference
    with reg.db.transaction(write=True) as session:
        repo_id = content.ensure_repository(session, where.repo)
        locks.share(session, [str(digest)])  # gc waits for this transaction
        # No check that the blobs are here: the cache fetches them when they are asked for.
        content.store_manifest(session, repo_id, new, [tag] if tag is not None else [])
        if tag is not None:
            queries.mark_checked(session, repo_id, tag, str(digest), _now())
        queries.mark_pulled(session, repo_id, _now())
    reg.mirror.pulls.noted(where.repo)
    stats.fetched(prefix, len(payload))


# --- blobs -----------------------------------------------------------------------------------


def blob(reg: Context, name: str, digest: Digest, ns: str | None = None) -> blobs.Download:
    """A blob of `name`, through the cache when it is mirrored: in the cache already (or
    known to Berth and named by a cached manifest of the repository), else one the upstream
    has, fetched when its bytes are asked for."""
    where = route(reg, name, ns)
    if where is None:
        return blobs.find(reg, name, digest)
    prefix = where.upstream.prefix
    size = content.linked_blob_size(reg.db, where.repo, str(digest))
    if size is None:
        with reg.db.transaction() as session:
            known = queries.known_blob_named_here(session, where.repo, str(digest))
        if known is not None:
            size = _link(reg, where.repo, digest)
    if size is not None:
        stats.hit(prefix, "blob")
        return blobs.Download(reg, where.repo, digest, size)
    stats.miss(prefix, "blob")
    client = reg.mirror.client(where.upstream)
    head = _asked(prefix, lambda: client.get(where.remote, "blobs", str(digest), method="HEAD"))
    head.close()
    try:
        size = int(head.headers["Content-Length"])
    except (KeyError, ValueError) as exc:
        raise Unavailable(
            {"upstream": prefix}, message=f"upstream {prefix} gave no size for {digest}"
        ) from exc
    return Pending(reg, where.repo, digest, size, client, where)


def _link(reg: ContentContext, repo: str, digest: Digest) -> int | None:
    """Link a blob Berth holds already into `repo`; its size, or None when it has no row or
    no bytes (gc got there first). A read first: waiting requests call this often."""
    with reg.db.transaction() as session:
        if queries.blob_size(session, str(digest)) is None:
            return None
    with reg.db.transaction(write=True) as session:
        locks.share(session, [str(digest)])  # gc cannot take it between look-up and link
        size = queries.blob_size(session, str(digest))
        if size is None or not reg.driver.exists(paths.blob_data(digest)):
            return None
        repo_id = content.ensure_repository(session, repo)
        content.link_blob(session, repo_id, str(digest), size)
        queries.mark_pulled(session, repo_id, _now())
    return size


@dataclass(frozen=True)
class Pending(blobs.Download):
    """A blob the upstream has (its HEAD said so, and its size) and the cache does not yet."""

    client: UpstreamClient | None = None
    where: Route | None = None

    def deliver(self, start: int = 0, pulled_by: Origin | None = None) -> blobs.Delivery:
        """Fetch it (one request across every worker and instance) and tee it to this
        client; or wait for the fetch another request is running and serve it from storage."""
        assert self.client is not None and self.where is not None
        deadline = time.monotonic() + FOLLOW_LIMIT
        while True:
            size = content.linked_blob_size(self.reg.db, self.repo, str(self.digest))
            if size is None:
                # The upstream said the blob is in this repository: bytes fetched for another
                # repository (or pushed) are as good.
                size = _link(self.reg, self.repo, self.digest)
            if size is not None:
                return blobs.Download(self.reg, self.repo, self.digest, size).deliver(
                    start, pulled_by
                )
            held = queries.fetch_held(self.reg.db, str(self.digest), _now())
            fetch = None
            if not held:
                fetch = _Fetch.claim(self.reg, self.client, self.where, self.digest, self.size)
            if fetch is not None and fetch.landed():
                continue  # a fetch finished between our look and our claim
            if fetch is not None:
                tee = fetch.start()
                if start == 0 and self.size > 0:
                    if pulled_by is not None:
                        self._pulled(pulled_by)
                    return blobs.Delivery(stream=cast(BinaryIO, tee))
                tee.drain()  # a range from the middle: fetch it all, then serve the range
                continue
            if time.monotonic() > deadline:
                raise Unavailable(
                    {"digest": str(self.digest)},
                    message="timed out waiting for another request's fetch of this blob",
                )
            time.sleep(POLL)

    def _pulled(self, pulled_by: Origin) -> None:
        repo, digest, size = self.repo, str(self.digest), self.size
        self.reg.outbox.publish(
            self.reg.db, lambda: events.blob_event("pull", repo, digest, size, pulled_by())
        )


class CorruptUpstream(Exception):
    """Raised into a response already under way: the connection is cut before its end."""


class _Fetch:
    """The single flight of one blob: held in `mirror_fetch` by this request."""

    def __init__(self, reg: ContentContext, client: UpstreamClient, where: Route,
                 digest: Digest, size: int, owner: str) -> None:  # fmt: skip
        self.reg, self.client, self.where = reg, client, where
        self.digest, self.size, self.owner = digest, size, owner
        self.renewed = time.monotonic()

    @classmethod
    def claim(cls, reg: ContentContext, client: UpstreamClient, where: Route, digest: Digest,
              size: int) -> _Fetch | None:  # fmt: skip
        owner, now = str(uuid.uuid4()), _now()
        with reg.db.transaction(write=True) as session:
            mine = queries.claim_fetch(
                session, str(digest), owner, where.upstream.prefix, now, now + LEASE
            )
        return cls(reg, client, where, digest, size, owner) if mine else None

    def landed(self) -> bool:
        """Whether the blob arrived after all (a fetch published between the caller's look
        and its claim); then the claim is let go."""
        with self.reg.db.transaction() as session:
            there = queries.blob_size(session, str(self.digest)) is not None
        if there:
            self.release()
        return there

    def renew(self) -> None:
        if time.monotonic() - self.renewed < LEASE.total_seconds() / 4:
            return
        with self.reg.db.transaction(write=True) as session:
            kept = queries.renew_fetch(session, str(self.digest), self.owner, _now() + LEASE)
        if not kept:
            raise CorruptUpstream(f"fetch of {self.digest} taken over by another request")
        self.renewed = time.monotonic()

    def release(self) -> None:
        with self.reg.db.transaction(write=True) as session:
            queries.release_fetch(session, str(self.digest), self.owner)

    def start(self) -> _Tee:
        """The upstream GET; its errors (before any byte) are the client's answer."""
        prefix = self.where.upstream.prefix
        try:
            response = _asked(
                prefix,
                lambda: self.client.get(self.where.remote, "blobs", str(self.digest), stream=True),
            )
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) != self.size:
                response.close()
                raise Unavailable(
                    {"upstream": prefix, "digest": str(self.digest)},
                    message=f"upstream {prefix} changed the size of {self.digest}",
                )
        except BaseException:
            self.release()
            raise
        return _Tee(self, response)


class _Tee:
    """A file-like read of an upstream response that writes every byte to storage and hashes
    it; the last piece is held back until the digest is verified and the blob published."""

    def __init__(self, fetch: _Fetch, response: requests.Response) -> None:
        self.fetch = fetch
        self.response = response
        self.pieces: Iterator[bytes] = response.iter_content(CHUNK)
        self.temp = str(uuid.uuid4())
        self.writer: FileWriter = fetch.reg.driver.writer(paths.upload_data(self.temp))
        self.hasher = fetch.digest.hasher()
        self.received = 0
        self.held = b""
        self.ready = bytearray()
        self.finished = False
        self.closed = False

    def __enter__(self) -> _Tee:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def read(self, n: int = -1) -> bytes:
        while not self.finished and (n < 0 or len(self.ready) < n):
            self._pull()
        if n < 0:
            n = len(self.ready)
        out = bytes(self.ready[:n])
        del self.ready[:n]
        return out

    def drain(self) -> None:
        with self:
            while not self.finished:
                self._pull()

    def _pull(self) -> None:
        fetch = self.fetch
        try:
            piece = next(self.pieces, b"")
        except (requests.RequestException, OSError) as exc:
            self._abort(f"upstream read failed: {exc!r}")
            raise CorruptUpstream(f"upstream {fetch.where.upstream.prefix} went away") from exc
        if piece:
            self.writer.write(piece)
            self.hasher.update(piece)
            self.received += len(piece)
            try:
                fetch.renew()
            except CorruptUpstream as exc:
                self._abort(str(exc))
                raise
            self.ready += self.held
            self.held = piece
            return
        self._finish()
        self.ready += self.held
        self.held = b""

    def _finish(self) -> None:
        fetch, prefix = self.fetch, self.fetch.where.upstream.prefix
        if self.received != fetch.size or self.hasher.hexdigest() != fetch.digest.hex:
            stats.error(prefix, DigestInvalid.code)
            log.error(
                "mirror: upstream %s sent %d bytes for %s (expected %d) hashing to %s:%s:"
                " nothing stored",
                prefix, self.received, fetch.digest, fetch.size, fetch.digest.algorithm,
                self.hasher.hexdigest(),
            )  # fmt: skip
            self._abort("digest mismatch")
            raise CorruptUpstream(f"upstream {prefix} sent wrong bytes for {fetch.digest}")
        reg, temp = fetch.reg, paths.upload_data(self.temp)
        self.writer.commit()
        self.writer.close()
        if self.received:
            reg.driver.sync(temp)
        target = paths.blob_data(fetch.digest)
        with reg.db.transaction(write=True) as session:
            repo_id = content.ensure_repository(session, fetch.where.repo)
            content.link_blob(session, repo_id, str(fetch.digest), self.received)
            queries.mark_pulled(session, repo_id, _now())
            if not reg.driver.exists(target):  # under link_blob's digest lock
                if self.received:
                    reg.driver.move(temp, target)
                else:
                    reg.driver.put_content(target, b"")
            queries.release_fetch(session, str(fetch.digest), fetch.owner)
        self._remove_temp()
        self.finished = True
        self.response.close()
        stats.fetched(prefix, self.received)

    def _abort(self, why: str) -> None:
        if self.finished:
            return
        self.finished = True
        log.info("mirror: fetch of %s abandoned: %s", self.fetch.digest, why)
        self.writer.cancel()
        self.writer.close()
        self.response.close()
        self._remove_temp()
        self.fetch.release()

    def _remove_temp(self) -> None:
        with contextlib.suppress(PathNotFound):
            self.fetch.reg.driver.delete(paths.upload_dir(self.temp))

    def close(self) -> None:
        """The client is done (or gone): an unfinished fetch is abandoned, and the next
        request for the blob fetches it anew."""
        if not self.closed:
            self.closed = True
            self._abort("the client went away")
