"""`berth import registry URL`: every repository of a running registry (or those under a
prefix), copied into Berth through app.client, into the database and storage directly.

Work is one (repository, tag) at a time on a bounded pool of threads. Each copy skips what
Berth already holds (a manifest with everything under it, a blob linked into the
repository, a blob stored for another repository is only linked), so an interrupted import
is finished by running it again, and a second run transfers nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import IO, Any, cast

from app.client import RegistryClient, RemoteRepository, copy, errors
from app.client.copy import CopyReport, ProgressFactory, Store
from app.client.media import Manifest
from app.client.registry import Opener, Progress
from app.errors import ManifestUnknown, RegistryError
from app.registry import ingest, listings
from app.registry.context import Context
from app.registry.references import Digest


class LocalStore:
    """One repository of this Berth, as a copy target (and source), through the content
    services: uploads verify every blob, manifests are checked as a push would be."""

    def __init__(self, reg: Context, repo: str) -> None:
        self.reg, self.repo = reg, repo
        self.label = f"berth:{repo}"

    def manifest(self, reference: str) -> Manifest:
        found = ingest.stored_manifest(self.reg, self.repo, reference)
        if found is None:
            raise errors.ManifestUnknown(404, f"no {reference}", [], "READ", self.label)
        return Manifest(found.digest, found.media_type, found.payload)

    def has_manifest(self, digest: str) -> bool:
        return ingest.stored_manifest(self.reg, self.repo, digest) is not None

    def put_manifest(self, reference: str, manifest: Manifest) -> None:
        ingest.put_manifest(self.reg, self.repo, reference, manifest.body, manifest.media_type)

    def blob_size(self, digest: str) -> int | None:
        parsed = Digest.parse(digest)
        size = ingest.linked_size(self.reg, self.repo, parsed)
        if size is None:
            held = ingest.stored_size(self.reg, parsed)
            if held is not None:  # stored for another repository: a link is enough
                ingest.link(self.reg, self.repo, parsed, held)
                return held
        return size

    def open_blob(self, digest: str, size: int, offset: int = 0) -> Any:
        raise errors.ClientError("reading blobs back out of Berth is done over HTTP")

    def put_blob(
        self, digest: str, size: int, opener: Opener, progress: Progress | None, source: Store
    ) -> None:
        def stream() -> IO[bytes]:
            return cast(IO[bytes], _Counted(opener(0), progress))

        ingest.copy_in(self.reg, self.repo, Digest.parse(digest), size, stream)

    def referrers(self, digest: str) -> list[dict[str, Any]]:
        found = listings.referrers(self.reg, self.repo, Digest.parse(digest), None)
        return [r.descriptor() for r in found]


class _Counted:
    def __init__(self, stream: Any, progress: Progress | None) -> None:
        self._stream, self._progress = stream, progress

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._stream.read(n)
        if data and self._progress is not None:
            self._progress.update(len(data))
        return data

    def close(self) -> None:
        self._stream.close()


@dataclass
class RemoteImportReport:
    repositories: int = 0
    tags: int = 0
    copied: CopyReport = field(default_factory=CopyReport)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        c = self.copied
        return (
            f"imported {self.repositories} repositories, {self.tags} tags: {c.manifests}"
            f" manifests and {c.blobs} blobs ({c.bytes} bytes) copied; already in Berth:"
            f" {c.manifests_present} manifests, {c.blobs_present} blobs;"
            f" {len(self.problems)} problems"
        )


def run(
    reg: Context,
    client: RegistryClient,
    prefix: str = "",
    workers: int = 4,
    dest_prefix: str = "",
    say: Callable[[str], None] = lambda _line: None,
    progress: ProgressFactory | None = None,
) -> RemoteImportReport:
    report = RemoteImportReport()
    lock = threading.Lock()
    prefix = prefix.strip("/")
    repos = [
        r for r in client.catalog(n=1000) if not prefix or r == prefix or r.startswith(prefix + "/")
    ]
    jobs = [(repo, tag) for repo in repos for tag in client.tags(repo, n=1000)]
    report.repositories = len(repos)

    def one(repo: str, tag: str) -> CopyReport:
        target = f"{dest_prefix.strip('/')}/{repo}" if dest_prefix else repo
        return copy(RemoteRepository(client, repo), tag, LocalStore(reg, target), progress=progress)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(one, repo, tag): (repo, tag) for repo, tag in jobs}
        for future in as_completed(futures):
            repo, tag = futures[future]
            try:
                done = future.result()
            except (errors.ClientError, RegistryError, ManifestUnknown) as exc:
                with lock:
                    report.problems.append(f"{repo}:{tag}: {exc}")
                continue
            with lock:
                report.tags += 1
                report.copied.add(done)
            say(f"{repo}:{tag} {done.digest}: {done.manifests} manifests, {done.blobs} blobs")
    return report
