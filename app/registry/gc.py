"""Online garbage collection: mark from the tags, sweep what nothing keeps, while pushes go on.

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

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, delete, exists, func, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import locks
from app.db.models import Blob, Manifest, ManifestReference, RepositoryBlob, Tag, Upload
from app.errors import DigestInvalid
from app.registry import paths, uploads
from app.registry.context import Registry
from app.registry.references import Digest
from app.storage import PathNotFound

log = logging.getLogger(__name__)

M = Manifest.__table__
R = ManifestReference.__table__
L = RepositoryBlob.__table__
B = Blob.__table__
T = Tag.__table__

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


@dataclass
class GcReport:
    dry_run: bool = False
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


@dataclass
class _Graph:
    """What marking needs of every manifest, loaded without payloads."""

    repo: dict[int, int] = field(default_factory=dict)
    digest: dict[int, str] = field(default_factory=dict)
    subject: dict[int, str] = field(default_factory=dict)
    young: set[int] = field(default_factory=set)
    tagged: set[int] = field(default_factory=set)
    refs: dict[int, list[tuple[str, str]]] = field(default_factory=lambda: defaultdict(list))
    by_digest: dict[tuple[int, str], int] = field(default_factory=dict)

    def child(self, manifest_id: int, digest: str) -> int | None:
        return self.by_digest.get((self.repo[manifest_id], digest))


def _aware(moment: datetime) -> datetime:
    # SQLite hands timestamps back without a zone; they were written in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


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


def _load(session: Session, cutoff: datetime) -> _Graph:
    graph = _Graph()
    rows = session.execute(
        select(M.c.id, M.c.repository_id, M.c.digest, M.c.subject_digest, M.c.created_at)
    )
    for manifest_id, repo_id, digest, subject, created_at in rows:
        graph.repo[manifest_id] = repo_id
        graph.digest[manifest_id] = digest
        graph.by_digest[(repo_id, digest)] = manifest_id
        if subject:
            graph.subject[manifest_id] = subject
        if _aware(created_at) >= cutoff:
            graph.young.add(manifest_id)
    for manifest_id, digest, kind in session.execute(select(R.c.manifest_id, R.c.digest, R.c.kind)):
        graph.refs[manifest_id].append((digest, kind))
    graph.tagged = set(session.scalars(select(T.c.manifest_id).distinct()))
    return graph


def _mark(graph: _Graph, delete_untagged: bool) -> set[int]:
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


def _deletion_order(graph: _Graph, doomed: set[int]) -> list[list[int]]:
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


def _delete_manifests(session: Session, ids: Sequence[int], cutoff: datetime) -> int:
    parent, subject = M.alias("parent"), M.alias("subject")
    named_by_parent = (
        select(1)
        .select_from(R.join(parent, parent.c.id == R.c.manifest_id))
        .where(
            R.c.digest == M.c.digest,
            R.c.kind == "manifest",
            parent.c.repository_id + 0 == M.c.repository_id,
        )
    )
    subject_here = select(1).where(
        subject.c.repository_id == M.c.repository_id, subject.c.digest == M.c.subject_digest
    )
    statement = (
        delete(M)
        .where(
            M.c.id.in_(ids),
            M.c.created_at < cutoff,
            ~exists().where(T.c.manifest_id == M.c.id),
            ~exists(named_by_parent),
            or_(M.c.subject_digest.is_(None), ~exists(subject_here)),
        )
        .returning(M.c.id)
    )
    deleted = list(session.scalars(statement))
    # The foreign keys cascade too; explicit, so nothing depends on the SQLite pragma.
    if deleted:
        session.execute(delete(R).where(R.c.manifest_id.in_(deleted)))
    return len(deleted)


def _delete_links(session: Session, pairs: Sequence[tuple[int, int]], cutoff: datetime) -> int:
    by_repo: dict[int, list[int]] = defaultdict(list)
    for repo_id, blob_id in pairs:
        by_repo[repo_id].append(blob_id)
    # Per repository, so that SQLite looks each link up by its key instead of scanning.
    wanted = or_(
        *(
            and_(L.c.repository_id == repo_id, L.c.blob_id.in_(blob_ids))
            for repo_id, blob_ids in by_repo.items()
        )
    )
    # From the blob's digest to the few manifests naming it; "+ 0" keeps SQLite from
    # walking every manifest of the repository instead.
    still_named = (
        select(1)
        .select_from(B.join(R, R.c.digest == B.c.digest).join(M, M.c.id == R.c.manifest_id))
        .where(B.c.id == L.c.blob_id, M.c.repository_id + 0 == L.c.repository_id)
    )
    statement = (
        delete(L)
        .where(wanted, L.c.created_at < cutoff, ~exists(still_named))
        .returning(L.c.blob_id)
    )
    return len(list(session.scalars(statement)))


def _delete_bytes(reg: Registry, session: Session, digests: Iterable[str]) -> set[str]:
    """Delete the bytes of digests that (still) have no blob row; the caller holds their
    exclusive locks, so no push can link them until the transaction ends."""
    digests = set(digests)
    revived = set(session.scalars(select(B.c.digest).where(B.c.digest.in_(digests))))
    gone = set()
    for digest in digests - revived:
        try:
            reg.driver.delete(paths.blob_dir(Digest.parse(digest)))
        except (PathNotFound, DigestInvalid):
            continue
        gone.add(digest)
    return gone


def free_blobs(
    reg: Registry,
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

        def rows(batch: Sequence[int] = batch) -> list[Any]:
            with reg.db.transaction(write=True) as session:
                digests = session.scalars(select(B.c.digest).where(B.c.id.in_(batch)))
                locks.exclusive(session, list(digests))
                statement = (
                    delete(B)
                    .where(
                        B.c.id.in_(batch),
                        B.c.created_at < cutoff,
                        ~exists().where(L.c.blob_id == B.c.id),
                        ~exists().where(R.c.digest == B.c.digest),
                    )
                    .returning(B.c.digest, B.c.size)
                )
                return list(session.execute(statement))

        deleted = retrying(rows)
        if throttle:
            time.sleep(throttle)
        if deleted:
            sizes = {digest: size for digest, size in deleted}

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


def collect(reg: Registry, options: GcOptions, progress: Progress | None = None) -> GcReport:
    """One garbage collection run. Safe to run while the registry serves pushes and pulls,
    and to run again after it was killed."""
    started = time.monotonic()
    ticker = _Ticker(progress)
    report = GcReport(dry_run=options.dry_run)
    verb = "would delete" if options.dry_run else "deleted"
    cutoff = datetime.now(UTC) - timedelta(seconds=max(options.grace, 0))

    with reg.db.transaction() as session:
        graph = _load(session, cutoff)
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
                        return _delete_manifests(session, batch, cutoff)

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
        links = session.execute(
            select(L.c.repository_id, L.c.blob_id, B.c.digest, L.c.created_at).join(
                B, B.c.id == L.c.blob_id
            )
        ).all()
        blobs = session.execute(select(B.c.id, B.c.digest, B.c.size, B.c.created_at)).all()
    doomed_links = [
        (repo_id, blob_id)
        for repo_id, blob_id, digest, created_at in links
        if _aware(created_at) < cutoff and (repo_id, digest) not in named
    ]
    if options.dry_run:
        report.links = len(doomed_links)
    else:
        digest_of = {blob_id: digest for _r, blob_id, digest, _c in links}
        for done, batch in enumerate(_chunks(doomed_links, options.batch_size)):

            def unlink(batch: Sequence[tuple[int, int]] = batch) -> int:
                with reg.db.transaction(write=True) as session:
                    locks.exclusive(session, [digest_of[blob_id] for _r, blob_id in batch])
                    return _delete_links(session, batch, cutoff)

            report.links += retrying(unlink)
            ticker.tick(
                "links", min((done + 1) * options.batch_size, len(doomed_links)), len(doomed_links)
            )
            if options.throttle:
                time.sleep(options.throttle)
    ticker.line(f"links: {verb} {report.links} of {len(doomed_links)}")

    # 3. Blobs nobody links or names any more.
    remaining_links = defaultdict(int)
    for _repo, blob_id, _digest, _created in links:
        remaining_links[blob_id] += 1
    for _repo, blob_id in doomed_links:
        remaining_links[blob_id] -= 1
    doomed_blobs = [
        (blob_id, size)
        for blob_id, digest, size, created_at in blobs
        if remaining_links[blob_id] <= 0
        and digest not in named_anywhere
        and _aware(created_at) < cutoff
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
            report.uploads = session.scalar(
                select(func.count()).select_from(Upload).where(Upload.updated_at < upload_cutoff)
            )
    else:
        report.uploads = uploads.purge_stale(reg)
    ticker.line(f"uploads: {'would purge' if options.dry_run else 'purged'} {report.uploads}")

    report.seconds = time.monotonic() - started
    ticker.line(f"done in {report.seconds:.1f}s")
    return report


def _sweep_orphans(
    reg: Registry, cutoff: datetime, options: GcOptions, ticker: _Ticker
) -> tuple[int, int]:
    with reg.db.transaction() as session:
        known = set(session.scalars(select(B.c.digest)))
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
