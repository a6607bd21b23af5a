"""Online garbage collection: mark from the tags, sweep what nothing keeps, while pushes go on.

First, whole repositories a retention rule gives up (an `Expiry`: the pull-through cache's
repositories nobody pulled for longer than their retention) lose their tags, manifests and
links, each in its own transaction that asks the rule again; their blobs are then garbage
like any other, for the steps below.

Mark (one read of the metadata, no payloads): the roots are the tagged manifests and every
manifest younger than the grace period; from a kept manifest, its child manifests (an index's
`manifests`) and its referrers (manifests whose `subject` it is) are kept, and the blobs it
names. Without `delete_untagged` every manifest is a root, so only blobs nothing names go.

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
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import locks
from app.errors import DigestInvalid
from app.notifications import events
from app.registry import paths, queries, uploads
from app.registry.context import Context
from app.registry.queries import ManifestGraph
from app.registry.references import Digest
from app.storage import PathNotFound

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
_T = TypeVar("_T")


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

    def tick(self, phase: str, done: int, total: int) -> None:
        if time.monotonic() - self._last >= self._every:
            self.line(f"{phase}: {done}/{total}")


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


def _mark(graph: ManifestGraph, delete_untagged: bool) -> set[int]:
    if not delete_untagged:
        return set(graph.repo)
    referrers: dict[tuple[int, str], list[int]] = defaultdict(list)
    for manifest_id, subject in graph.subject.items():
        referrers[(graph.repo[manifest_id], subject)].append(manifest_id)
    kept = (graph.tagged | graph.young) & set(graph.repo)
    stack = list(kept)
    while stack:
        manifest_id = stack.pop()
        reached = [
            graph.child(manifest_id, digest)
            for digest, kind in graph.refs.get(manifest_id, ())
            if kind == "manifest"
        ]
        reached += referrers.get((graph.repo[manifest_id], graph.digest[manifest_id]), [])
        for other in reached:
            if other is not None and other not in kept:
                kept.add(other)
                stack.append(other)
    return kept


def _deletion_order(graph: ManifestGraph, doomed: set[int]) -> list[list[int]]:
    """Layers of doomed manifests: an index before its children, a subject before its
    referrers, since each one's delete re-checks that nothing still points at it."""
    before: dict[int, list[int]] = defaultdict(list)
    for manifest_id in doomed:
        for digest, kind in graph.refs.get(manifest_id, ()):
            child = graph.child(manifest_id, digest) if kind == "manifest" else None
            if child in doomed:
                before[child].append(manifest_id)
        subject = graph.subject.get(manifest_id)
        target = graph.child(manifest_id, subject) if subject else None
        if target in doomed:
            before[manifest_id].append(target)
    depth: dict[int, int] = {}
    for start in doomed:
        stack = [start]
        while stack:  # digests make the graph acyclic, so this terminates
            node = stack[-1]
            pending = [p for p in before.get(node, ()) if p not in depth]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            depth[node] = 1 + max((depth[p] for p in before.get(node, ())), default=-1)
    layers: dict[int, list[int]] = defaultdict(list)
    for manifest_id in sorted(doomed):
        layers[depth[manifest_id]].append(manifest_id)
    return [layers[d] for d in sorted(layers)]


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

    # 0. Repositories past their retention.
    if expiry is not None:
        _expire(reg, expiry, options, report, ticker)
        gone = "would remove" if options.dry_run else "removed"
        ticker.line(f"retention: {gone} {report.repositories} repositories not pulled in time")

    with reg.db.transaction() as session:
        graph = queries.manifest_graph(session, cutoff)
    kept = _mark(graph, options.delete_untagged)
    doomed = set(graph.repo) - kept
    report.manifests_total, report.manifests_kept = len(graph.repo), len(kept)
    ticker.line(
        f"mark: {len(graph.repo)} manifests ({len(graph.tagged)} tagged), {len(kept)} kept,"
        f" {len(doomed)} to delete"
    )

    # 1. Manifests.
    if options.dry_run:
        report.manifests = len(doomed)
    else:
        layers = _deletion_order(graph, doomed)
        done = 0
        for layer in layers:
            for batch in _chunks(layer, options.batch_size):

                def manifests(batch: Sequence[int] = batch) -> int:
                    with reg.db.transaction(write=True) as session:
                        locks.exclusive(session, [graph.digest[m] for m in batch])
                        return queries.delete_unreferenced_manifests(session, batch, cutoff)

                report.manifests += retrying(manifests)
                done += len(batch)
                ticker.tick("manifests", done, len(doomed))
                if options.throttle:
                    time.sleep(options.throttle)
    ticker.line(f"manifests: {verb} {report.manifests} of {len(doomed)}")

    # 2. Links no kept manifest of their repository names.
    named = {(graph.repo[m], digest) for m in kept for digest, _kind in graph.refs.get(m, ())}
    named_anywhere = {digest for _repo, digest in named}
    with reg.db.transaction() as session:
        links, blobs = queries.links_and_blobs(session)
    doomed_links = [
        (link.repository_id, link.blob_id)
        for link in links
        if link.created_at < cutoff and (link.repository_id, link.digest) not in named
    ]
    if options.dry_run:
        report.links = len(doomed_links)
    else:
        digest_of = {link.blob_id: link.digest for link in links}
        for done, pairs in enumerate(_chunks(doomed_links, options.batch_size)):

            def unlink(pairs: Sequence[tuple[int, int]] = pairs) -> int:
                with reg.db.transaction(write=True) as session:
                    locks.exclusive(session, [digest_of[blob_id] for _r, blob_id in pairs])
                    return queries.delete_unnamed_links(session, pairs, cutoff)

            report.links += retrying(unlink)
            ticker.tick(
                "links", min((done + 1) * options.batch_size, len(doomed_links)), len(doomed_links)
            )
            if options.throttle:
                time.sleep(options.throttle)
    ticker.line(f"links: {verb} {report.links} of {len(doomed_links)}")

    # 3. Blobs nobody links or names any more.
    remaining_links: dict[int, int] = defaultdict(int)
    for link in links:
        remaining_links[link.blob_id] += 1
    for _repo, blob_id in doomed_links:
        remaining_links[blob_id] -= 1
    doomed_blobs = [
        (blob.id, blob.size)
        for blob in blobs
        if remaining_links[blob.id] <= 0
        and blob.digest not in named_anywhere
        and blob.created_at < cutoff
    ]
    if options.dry_run:
        report.blobs = len(doomed_blobs)
        report.bytes_freed = sum(size for _id, size in doomed_blobs)
    else:
        report.blobs, report.bytes_freed = free_blobs(
            reg,
            [blob_id for blob_id, _size in doomed_blobs],
            cutoff,
            options.batch_size,
            options.throttle,
            ticker,
        )
    ticker.line(f"blobs: {verb} {report.blobs} of {len(blobs)} ({report.bytes_freed} bytes freed)")

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


def _sweep_orphans(
    reg: Context, cutoff: datetime, options: GcOptions, ticker: _Ticker
) -> tuple[int, int]:
    with reg.db.transaction() as session:
        known = queries.known_digests(session)
    orphans: list[tuple[str, int]] = []
    for blob_dir, digest in paths.stored_blobs(reg.driver.list):
        if digest in known:
            continue
        try:
            info = reg.driver.stat(f"{blob_dir}/data")
        except PathNotFound:
            try:
                info = reg.driver.stat(blob_dir)
            except PathNotFound:
                continue
        # Young files may belong to an upload completing right now: the grace period covers it.
        if info.mtime < cutoff.timestamp():
            orphans.append((digest, info.size))
    if options.dry_run:
        return len(orphans), sum(size for _d, size in orphans)
    count = freed = 0
    for done, batch in enumerate(_chunks(orphans, options.batch_size)):
        sizes = dict(batch)

        def drop(sizes: dict[str, int] = sizes) -> set[str]:
            with reg.db.transaction(write=True) as session:
                locks.exclusive(session, sizes)
                return _delete_bytes(reg, session, sizes)

        gone = retrying(drop)
        count += len(gone)
        freed += sum(sizes[d] for d in gone)
        ticker.tick(
            "orphaned blob files", min((done + 1) * options.batch_size, len(orphans)), len(orphans)
        )
        if options.throttle:
            time.sleep(options.throttle)
    return count, freed
