"""`berth import distribution`: the reference registry's filesystem storage, loaded into
Berth's database and storage directly (no HTTP).

distribution keeps, under <root>/docker/registry/v2:

    blobs/sha256/<hh>/<hex>/data                        every blob and manifest, by digest
    repositories/<name>/_layers/sha256/<hex>/link       blobs linked into the repository
    repositories/<name>/_manifests/revisions/sha256/<hex>/link    its manifests
    repositories/<name>/_manifests/tags/<tag>/current/link        what each tag points at

Each repository is imported blobs first (each verified against its digest, then hard-linked
or copied in), then its manifests, children before the indexes that list them, each stored
byte for byte through app/registry/manifests (which checks every reference), then its tags.
Whatever Berth already holds is skipped, so a second run finishes an interrupted one and
changes nothing that was done.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.client.media import MANIFEST_TYPES, Manifest, media_type_of
from app.errors import RegistryError
from app.registry import ingest
from app.registry.context import Context
from app.registry.references import Digest, is_tag, is_valid_name


class NotADistributionStore(ValueError):
    pass


class DistributionStore:
    """Read-only view of a reference registry's storage directory."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        for candidate in (path / "docker" / "registry" / "v2", path / "registry" / "v2", path):
            if (candidate / "repositories").is_dir() or (candidate / "blobs").is_dir():
                self.root = candidate
                break
        else:
            raise NotADistributionStore(f"{path}: no docker/registry/v2 with repositories/")

    def repositories(self) -> list[str]:
        base = self.root / "repositories"
        found = []
        if not base.is_dir():
            return []
        stack = [base]
        while stack:
            directory = stack.pop()
            children = sorted(p for p in directory.iterdir() if p.is_dir())
            if any(p.name in ("_manifests", "_layers") for p in children):
                found.append(directory.relative_to(base).as_posix())
            stack += [p for p in children if not p.name.startswith("_")]
        return sorted(found)

    def _repo(self, name: str) -> Path:
        return self.root / "repositories" / name

    @staticmethod
    def _read_link(path: Path) -> Digest | None:
        try:
            return Digest.parse(path.read_text().strip())
        except (OSError, RegistryError):
            return None

    def _links(self, directory: Path) -> list[Digest]:
        found = []
        if not directory.is_dir():
            return []
        for algorithm in sorted(directory.iterdir()):
            for entry in sorted(algorithm.iterdir()) if algorithm.is_dir() else []:
                digest = self._read_link(entry / "link")
                if digest is not None:
                    found.append(digest)
        return found

    def layers(self, repo: str) -> list[Digest]:
        return self._links(self._repo(repo) / "_layers")

    def revisions(self, repo: str) -> list[Digest]:
        return self._links(self._repo(repo) / "_manifests" / "revisions")

    def tags(self, repo: str) -> dict[str, Digest]:
        base = self._repo(repo) / "_manifests" / "tags"
        found = {}
        for tag_dir in sorted(base.iterdir()) if base.is_dir() else []:
            digest = self._read_link(tag_dir / "current" / "link")
            if digest is not None:
                found[tag_dir.name] = digest
        return found

    def blob(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex[:2] / digest.hex / "data"


@dataclass
class ImportReport:
    repositories: int = 0
    tags: int = 0
    tags_present: int = 0
    manifests: int = 0
    manifests_present: int = 0
    blobs: int = 0
    blobs_present: int = 0
    bytes: int = 0
    linked: int = 0  # of the blobs: hard-linked rather than copied
    problems: list[str] = field(default_factory=list)

    def summary(self, dry_run: bool) -> str:
        verb = "would import" if dry_run else "imported"
        return (
            f"{verb} {self.repositories} repositories: {self.tags} tags, {self.manifests}"
            f" manifests, {self.blobs} blobs ({self.bytes} bytes); already in Berth:"
            f" {self.tags_present} tags, {self.manifests_present} manifests,"
            f" {self.blobs_present} blobs; {len(self.problems)} problems"
        )


@dataclass(frozen=True)
class ImportOptions:
    hardlink: bool = False
    dry_run: bool = False
    repositories: tuple[str, ...] = ()  # only these (default: every one)


Say = Callable[[str], None]
Bytes = Callable[[int], None]


def plan_bytes(store: DistributionStore, reg: Context, repos: list[str]) -> int:
    """Bytes of the blobs not yet in Berth: what a progress bar counts towards."""
    total, seen = 0, set()
    for repo in repos:
        for digest in store.layers(repo):
            if digest in seen:
                continue
            seen.add(digest)
            if ingest.linked_size(reg, repo, digest) is None:
                with contextlib.suppress(OSError):
                    total += store.blob(digest).stat().st_size
    return total


def run(
    reg: Context,
    store: DistributionStore,
    options: ImportOptions,
    say: Say = lambda _line: None,
    moved: Bytes = lambda _n: None,
) -> ImportReport:
    report = ImportReport()
    repos = [
        r for r in store.repositories() if not options.repositories or r in options.repositories
    ]
    for repo in repos:
        if not is_valid_name(repo):
            report.problems.append(f"{repo}: not a valid repository name; skipped")
            continue
        report.repositories += 1
        _import_repository(reg, store, repo, options, report, say, moved)
    return report


def _import_repository(
    reg: Context,
    store: DistributionStore,
    repo: str,
    options: ImportOptions,
    report: ImportReport,
    say: Say,
    moved: Bytes,
) -> None:
    loaded: dict[Digest, Manifest] = {}
    for digest in store.revisions(repo):
        manifest = _read_manifest(store, repo, digest, report)
        if manifest is not None:
            loaded[digest] = manifest
    wanted: dict[Digest, None] = dict.fromkeys(store.layers(repo))
    for manifest in loaded.values():
        for blob in manifest.blobs():
            wanted[Digest.parse(str(blob["digest"]))] = None
    for digest in wanted:
        _import_blob(reg, store, repo, digest, options, report, moved)
    for manifest in _children_first(loaded):
        if ingest.stored_manifest(reg, repo, manifest.digest) is not None:
            report.manifests_present += 1
            continue
        report.manifests += 1
        if options.dry_run:
            say(f"{repo}@{manifest.digest}: {manifest.media_type} ({manifest.size} bytes)")
            continue
        try:
            ingest.put_manifest(reg, repo, manifest.digest, manifest.body, manifest.media_type)
        except RegistryError as exc:
            report.manifests -= 1
            report.problems.append(f"{repo}@{manifest.digest}: {exc.code}: {exc.message}")
    for tag, digest in store.tags(repo).items():
        if not is_tag(tag) or digest not in loaded:
            report.problems.append(f"{repo}:{tag}: no importable manifest {digest}; skipped")
            continue
        found = ingest.stored_manifest(reg, repo, tag)
        if found is not None and found.digest == str(digest):
            report.tags_present += 1
            continue
        report.tags += 1
        if options.dry_run:
            say(f"{repo}:{tag} -> {digest}")
            continue
        manifest = loaded[digest]
        try:
            ingest.put_manifest(reg, repo, tag, manifest.body, manifest.media_type)
        except RegistryError as exc:
            report.tags -= 1
            report.problems.append(f"{repo}:{tag}: {exc.code}: {exc.message}")


def _read_manifest(
    store: DistributionStore, repo: str, digest: Digest, report: ImportReport
) -> Manifest | None:
    try:
        body = store.blob(digest).read_bytes()
    except OSError:
        report.problems.append(f"{repo}@{digest}: manifest data missing from blobs/")
        return None
    if Digest.of(body, digest.algorithm) != digest:
        report.problems.append(f"{repo}@{digest}: manifest bytes do not match their digest")
        return None
    media_type = media_type_of(body)
    if media_type not in MANIFEST_TYPES:
        try:
            version = json.loads(body).get("schemaVersion")
        except (ValueError, AttributeError):
            version = None
        kind = "a schema 1 manifest" if version == 1 else f"media type {media_type!r}"
        report.problems.append(f"{repo}@{digest}: {kind}, which Berth does not store; skipped")
        return None
    return Manifest(str(digest), media_type, body)


def _children_first(loaded: dict[Digest, Manifest]) -> Iterator[Manifest]:
    """Images, then indexes once every child they list has been given (or is not here)."""
    pending = dict(loaded)
    given: set[str] = set()
    while pending:
        ready = [
            d
            for d, m in pending.items()
            if all(
                c.get("digest") in given or Digest.parse(str(c["digest"])) not in pending
                for c in m.children()
            )
        ]
        if not ready:  # a cycle cannot be stored anyway; let the checks say why
            ready = list(pending)
        for digest in ready:
            given.add(str(digest))
            yield pending.pop(digest)


def _import_blob(
    reg: Context,
    store: DistributionStore,
    repo: str,
    digest: Digest,
    options: ImportOptions,
    report: ImportReport,
    moved: Bytes,
) -> None:
    if ingest.linked_size(reg, repo, digest) is not None:
        report.blobs_present += 1
        return
    source = store.blob(digest)
    try:
        size = source.stat().st_size
    except OSError:
        report.problems.append(f"{repo}: blob {digest} is linked but its data is missing")
        return
    report.blobs += 1
    report.bytes += size
    if options.dry_run:
        return
    try:
        held = ingest.stored_size(reg, digest)
        if held is not None:
            ingest.link(reg, repo, digest, held)  # in Berth already, for another repository
        elif options.hardlink and ingest.hardlink(reg, repo, digest, source):
            report.linked += 1
        else:
            ingest.copy_in(reg, repo, digest, size, lambda: source.open("rb"))
    except RegistryError as exc:
        report.blobs -= 1
        report.bytes -= size
        report.problems.append(f"{repo}: blob {digest}: {exc.code}: {exc.message}")
        return
    moved(size)
