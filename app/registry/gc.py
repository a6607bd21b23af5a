"""Online garbage collection: mark from the tags, sweep what nothing keeps, while pushes go on.

First, whole repositories a retention rule gives up (an `Expiry`: the pull-through cache's
repositories nobody pulled for longer than their retention) lose their tags, manifests and
links, each in its own transaction that asks the rule again; their blobs are then garbage
like any other, for the steps below. A dry run removes nothing: it notes their ids in a
temporary table, and every count below leaves them out, as the real run finds them gone.

Mark, in the database: the roots are the tagged manifests and every manifest younger than
the grace period; from a kept manifest, its child manifests (an index's `manifests`) and its
referrers (manifests whose `subject` it is) are kept, and the blobs it names. The kept ids go
into a temporary table of gc's own connection, a step of the walk per statement, and each
sweep reads its candidates against it in keyset batches: gc's memory does not grow with the
registry. Without `delete_untagged` every manifest is a root, so only blobs nothing names go
(and there is nothing to mark).

Sweep, in short batches, each its own transaction:
1. manifests not kept (parents and subjects before the manifests they point at);
2. repository_blob links no surviving manifest of that repository names;
3. blob rows no repository links and no manifest names, then their bytes;
4. blob files in storage without a row (a crash between 3's commit and the bytes' deletion);
5. abandoned upload sessions.
Each delete statement re-checks its conditions (age, tags, references) under an exclusive
digest lock (app/db/locks.py) that pushes hold shared, so a push racing gc either lands
first and is seen, or comes after and finds the thing gone: never a manifest naming a blob
that is not there. Rows go first and bytes after the commit, so a gc killed at any point
leaves at worst files without rows, which the next run's step 4 removes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import locks
from app.errors import DigestInvalid
from app.notifications import events
from app.registry import paths, queries, uploads
from app.registry.context import Context
from app.registry.references import Digest
from app.storage import PathNotFound

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
_T = TypeVar("_T")
_P = ParamSpec("_P")


@dataclass(frozen=True)
class GcOptions:
    dry_run: bool = False
    delete_untagged: bool = False
    # Seconds: anything pushed, mounted or created more recently than this is left alone.
    grace: int = 24 * 3600
    batch_size: int = 500
    # Seconds to pause after each deleting transaction, to go easy on a busy database.
    throttle: float = 0.0


class Expiry(Protocol):
    """Repositories that go whole, whatever their tags say (the cache's retention)."""

    def expired(
        self, session: Session, now: datetime, names: Collection[str] | None = None
    ) -> list[str]:
        """Names of the expired repositories (only among `names`, when given)."""
        ...


@dataclass
class GcReport:
    dry_run: bool = False
    repositories: int = 0  # removed whole by retention (or that would be)
    expired: list[str] = field(default_factory=list)
    manifests_total: int = 0
    manifests_kept: int = 0
    manifests: int = 0  # deleted, or that would be with dry_run
    links: int = 0
    blobs: int = 0
    bytes_freed: int = 0
    orphans: int = 0  # blob files that had no row
    uploads: int = 0
    seconds: float = 0.0


class _Ticker:
    """A line per phase, plus one every few seconds inside a long phase."""

    def __init__(self, sink: Progress | None, every: float = 2.0) -> None:
        self._sink, self._every, self._last = sink, every, time.monotonic()

    def line(self, message: str) -> None:
        self._last = time.monotonic()
        if self._sink is not None:
            self._sink(f"gc: {message}")

    def tick(self, phase: str, done: int, total: int | None = None) -> None:
        if time.monotonic() - self._last >= self._every:
            self.line(f"{phase}: {done}/{total}" if total is not None else f"{phase}: {done}")


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def retrying(work: Callable[[], _T], attempts: int = 5) -> _T:
    """Run one batch again when the database gave up on it (deadlock, busy): every batch
    re-checks its conditions, so repeating it is safe."""
    for attempt in range(attempts):
        try:
            return work()
        except OperationalError as exc:
            if attempt == attempts - 1:
                raise
            log.warning("gc: batch failed (%s), retrying", exc.orig)
            time.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def _delete_bytes(reg: Context, session: Session, digests: Iterable[str]) -> set[str]:
    """Delete the bytes of digests that (still) have no blob row; the caller holds their
    exclusive locks, so no push can link them until the transaction ends."""
    digests = set(digests)
    revived = queries.known_digests(session, list(digests))
    gone = set()
    for digest in digests - revived:
        try:
            reg.driver.delete(paths.blob_dir(Digest.parse(digest)))
        except (PathNotFound, DigestInvalid):
            continue
        gone.add(digest)
    return gone


def free_blobs(
    reg: Context,
    blob_ids: Sequence[int],
    cutoff: datetime,
    batch_size: int = 500,
    throttle: float = 0.0,
    ticker: _Ticker | None = None,
) -> tuple[int, int]:
    """Delete the blobs among blob_ids that no repository links, no manifest names and that
    are older than cutoff: the row in one transaction, the bytes after it committed.
    Returns (blobs deleted, bytes freed)."""
    count = freed = 0
    ids = sorted(set(blob_ids))
    for done, batch in enumerate(_chunks(ids, batch_size)):

        def rows(batch: Sequence[int] = batch) -> list[queries.BlobRecord]:
            with reg.db.transaction(write=True) as session:
                locks.exclusive(session, queries.blob_digests(session, batch))
                return queries.delete_unused_blobs(session, batch, cutoff)

        deleted = retrying(rows)
        if throttle:
            time.sleep(throttle)
        if deleted:
            sizes = {blob.digest: blob.size for blob in deleted}

            def drop_bytes(sizes: dict[str, int] = sizes) -> set[str]:
                with reg.db.transaction(write=True) as session:
                    locks.exclusive(session, sizes)
                    return _delete_bytes(reg, session, sizes)

            gone = retrying(drop_bytes)
            count += len(deleted)
            freed += sum(sizes[d] for d in gone)
            if throttle:
                time.sleep(throttle)
        if ticker is not None:
            ticker.tick("blobs", min((done + 1) * batch_size, len(ids)), len(ids))
    return count, freed


def _expire(
    reg: Context, expiry: Expiry, options: GcOptions, report: GcReport, ticker: _Ticker
) -> None:
    now = datetime.now(UTC)
    with reg.db.transaction() as session:
        names = expiry.expired(session, now)
    if options.dry_run:
        report.expired = names
        report.repositories = len(names)
        return
    for done, name in enumerate(names):

        def remove(name: str = name) -> queries.RemovedRepository | None:
            with reg.db.transaction(write=True) as session:
                # Asked again under the repository's lock: a pull since the mark keeps it.
                if not queries.lock_repository(session, name):
                    return None
                if not expiry.expired(session, datetime.now(UTC), [name]):
                    return None
                removed = queries.remove_repository(session, name)
                if removed is not None:
                    reg.outbox.record(session, [events.repository_deleted(name)])
                return removed

        removed = retrying(remove)
        if removed is not None:
            report.expired.append(name)
            report.repositories += 1
            log.info("gc: %s removed: not pulled within its retention", name)
            for upload_id in removed.upload_ids:
                with contextlib.suppress(PathNotFound):
                    reg.driver.delete(paths.upload_dir(upload_id))
        ticker.tick("retention", done + 1, len(names))
        if options.throttle:
            time.sleep(options.throttle)


class _Reader:
    """Candidate reads on gc's own connection (where the mark lives), each in a short
    transaction of its own: no snapshot is held while the sweeps delete."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def __call__(
        self,
        query: Callable[Concatenate[Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        with self.conn.begin():
            return query(self.conn, *args, **kwargs)


def collect(
    reg: Context,
    options: GcOptions,
    progress: Progress | None = None,
    expiry: Expiry | None = None,
) -> GcReport:
    """One garbage collection run. Safe to run while the registry serves pushes and pulls,
    and to run again after it was killed. `expiry` names repositories to remove first."""
    started = time.monotonic()
    ticker = _Ticker(progress)
    report = GcReport(dry_run=options.dry_run)
    verb = "would delete" if options.dry_run else "deleted"
    cutoff = datetime.now(UTC) - timedelta(seconds=max(options.grace, 0))
    marked = options.delete_untagged  # else every manifest is kept: nothing to mark

    # 0. Repositories past their retention.
    if expiry is not None:
        _expire(reg, expiry, options, report, ticker)
        removal = "would remove" if options.dry_run else "removed"
        ticker.line(f"retention: {removal} {report.repositories} repositories not pulled in time")

    with reg.db.scratch() as conn:
        read = _Reader(conn)
        read(queries.no_jit)
        # A dry run removed nothing: it counts as if the repositories retention would
        # remove were gone, as the real run finds them (their blobs may be freed below).
        gone = options.dry_run and bool(report.expired)
        if gone:
            read(queries.note_gone, report.expired)
        total, tagged = read(queries.manifest_counts, gone)
        kept = read(queries.mark, cutoff, gone) if marked else total
        doomed = read(queries.count_unkept, gone) if marked else 0
        report.manifests_total, report.manifests_kept = total, kept
        ticker.line(f"mark: {total} manifests ({tagged} tagged), {kept} kept, {doomed} to delete")

        # 1. Manifests.
        if options.dry_run or not marked:
            report.manifests = doomed
        else:
            report.manifests = _sweep_manifests(reg, read, cutoff, options, doomed, ticker)
        ticker.line(f"manifests: {verb} {report.manifests} of {doomed}")

        # 2. Links no kept manifest of their repository names.
        seen, after = 0, (0, 0)
        while links := read(queries.unnamed_links, after, cutoff, marked, options.batch_size, gone):
            after, seen = (links[-1].repository_id, links[-1].blob_id), seen + len(links)
            if options.dry_run:
                report.links += len(links)
            else:

                def unlink(links: list[queries.LinkRow] = links) -> int:
                    with reg.db.transaction(write=True) as session:
                        locks.exclusive(session, [link.digest for link in links])
                        pairs = [(link.repository_id, link.blob_id) for link in links]
                        return queries.delete_unnamed_links(session, pairs, cutoff)

                report.links += retrying(unlink)
                if options.throttle:
                    time.sleep(options.throttle)
            ticker.tick("links", seen)
        ticker.line(f"links: {verb} {report.links} of {seen}")

        # 3. Blobs nobody links (but for links step 2 removed) or names any more.
        blobs_total = read(queries.count_blobs)
        seen, after_id = 0, 0
        while blobs := read(
            queries.unused_blobs, after_id, cutoff, marked, options.batch_size, gone
        ):
            after_id, seen = blobs[-1].id, seen + len(blobs)
            if options.dry_run:
                report.blobs += len(blobs)
                report.bytes_freed += sum(blob.size for blob in blobs)
            else:
                count, freed = free_blobs(
                    reg, [blob.id for blob in blobs], cutoff, options.batch_size, options.throttle
                )
                report.blobs, report.bytes_freed = report.blobs + count, report.bytes_freed + freed
            ticker.tick("blobs", seen)
    ticker.line(f"blobs: {verb} {report.blobs} of {blobs_total} ({report.bytes_freed} bytes freed)")

    # 4. Files without a row: what a killed run (or a crashed upload) left behind.
    report.orphans, orphan_bytes = _sweep_orphans(reg, cutoff, options, ticker)
    report.bytes_freed += orphan_bytes
    ticker.line(f"orphaned blob files: {verb} {report.orphans} ({orphan_bytes} bytes)")

    # 5. Abandoned uploads.
    if options.dry_run:
        upload_cutoff = datetime.now(UTC) - timedelta(seconds=reg.settings.upload_max_age)
        with reg.db.transaction() as session:
            report.uploads = queries.count_stale_uploads(session, upload_cutoff)
    else:
        report.uploads = uploads.purge_stale(reg)
    ticker.line(f"uploads: {'would purge' if options.dry_run else 'purged'} {report.uploads}")

    report.seconds = time.monotonic() - started
    ticker.line(f"done in {report.seconds:.1f}s")
    return report


def _sweep_manifests(
    reg: Context, read: _Reader, cutoff: datetime, options: GcOptions, doomed: int, ticker: _Ticker
) -> int:
    """Delete the manifests the mark did not keep, in passes: each delete re-checks that no
    index and no subject still keeps the manifest, so one whose parent or subject comes
    later in a pass (an index pushed first, a referrer's subject) goes in the next."""
    deleted = 0
    while True:
        progress, before = 0, None
        while batch := read(queries.unkept_manifests, before, cutoff, options.batch_size):
            before = batch[-1][0]

            def manifests(batch: list[tuple[int, str]] = batch) -> int:
                with reg.db.transaction(write=True) as session:
                    locks.exclusive(session, [digest for _id, digest in batch])
                    ids = [manifest_id for manifest_id, _digest in batch]
                    return queries.delete_unreferenced_manifests(session, ids, cutoff)

            progress += retrying(manifests)
            ticker.tick("manifests", deleted + progress, doomed)
            if options.throttle:
                time.sleep(options.throttle)
        deleted += progress
        if not progress:
            return deleted


def _sweep_orphans(
    reg: Context, cutoff: datetime, options: GcOptions, ticker: _Ticker
) -> tuple[int, int]:
    """Blob files without a row, older than cutoff: storage is walked, and asked about,
    a batch of digests at a time."""
    count = freed = 0

    def drop(batch: list[tuple[str, int]]) -> None:
        nonlocal count, freed
        if options.dry_run:
            count, freed = count + len(batch), freed + sum(size for _d, size in batch)
            return
        sizes = dict(batch)

        def work() -> set[str]:
            with reg.db.transaction(write=True) as session:
                locks.exclusive(session, sizes)
                return _delete_bytes(reg, session, sizes)

        gone = retrying(work)
        count, freed = count + len(gone), freed + sum(sizes[d] for d in gone)
        ticker.tick("orphaned blob files", count)
        if options.throttle:
            time.sleep(options.throttle)

    orphans: list[tuple[str, int]] = []
    for stored in _batched(paths.stored_blobs(reg.driver.list), options.batch_size):
        with reg.db.transaction() as session:
            known = queries.known_digests(session, [digest for _dir, digest in stored])
        for blob_dir, digest in stored:
            if digest in known:
                continue
            try:
                info = reg.driver.stat(f"{blob_dir}/data")
            except PathNotFound:
                try:
                    info = reg.driver.stat(blob_dir)
                except PathNotFound:
                    continue
            # Young files may belong to an upload completing right now: the grace period
            # covers it.
            if info.mtime < cutoff.timestamp():
                orphans.append((digest, info.size))
        if len(orphans) >= options.batch_size:
            drop(orphans)
            orphans = []
    if orphans:
        drop(orphans)
    return count, freed
