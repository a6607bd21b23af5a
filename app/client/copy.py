"""Copying images between stores: registries, OCI layout directories, Berth's own storage.

A store is anything with the small `Store` interface below. `copy` moves one image, or a
whole index with every platform, and with each manifest the referrers that point at it
(signatures, SBOMs), children before parents so the target can check every reference as it
arrives. Blobs the target already has are skipped, and so is a manifest it already holds
(with everything under it), so copying again after an interruption does only what is left.
"""

from __future__ import annotations

import platform as _platform
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.client import errors
from app.client.media import Manifest
from app.client.registry import Opener, Progress, Readable, RegistryClient


class Bar(Progress, Protocol):
    def close(self) -> None: ...


# (label, total bytes) -> a progress bar; None: no progress shown.
ProgressFactory = Callable[[str, int], Bar]


class Store(Protocol):
    """One repository's worth of content: manifests by tag or digest, blobs by digest."""

    label: str

    def manifest(self, reference: str) -> Manifest:
        """Raises errors.ManifestUnknown when there is none."""

    def has_manifest(self, digest: str) -> bool: ...

    def put_manifest(self, reference: str, manifest: Manifest) -> None: ...

    def blob_size(self, digest: str) -> int | None: ...

    def open_blob(self, digest: str, size: int, offset: int = 0) -> Readable: ...

    def put_blob(
        self, digest: str, size: int, opener: Opener, progress: Progress | None, source: Store
    ) -> None: ...

    def referrers(self, digest: str) -> list[dict[str, Any]]: ...


@dataclass
class CopyReport:
    manifests: int = 0  # copied
    manifests_present: int = 0  # already in the target
    blobs: int = 0
    blobs_present: int = 0
    bytes: int = 0
    digest: str = ""  # of the top manifest copied
    copied: list[str] = field(default_factory=list)

    def add(self, other: CopyReport) -> None:
        self.manifests += other.manifests
        self.manifests_present += other.manifests_present
        self.blobs += other.blobs
        self.blobs_present += other.blobs_present
        self.bytes += other.bytes


def host_platform() -> tuple[str, str]:
    machine = _platform.machine().lower()
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(machine, machine)
    return "linux", arch


def copy(
    src: Store,
    reference: str,
    dst: Store,
    dst_reference: str | None = None,
    *,
    all_platforms: bool = True,
    platform: tuple[str, str] | None = None,
    referrers: bool = True,
    progress: ProgressFactory | None = None,
) -> CopyReport:
    """Copy `reference` of `src` to `dst` as `dst_reference` (default: the same tag, or by
    digest). An index is copied whole with all_platforms; otherwise only the image for
    `platform` ((os, architecture), default this machine's) is, and tagged by itself."""
    top = src.manifest(reference)
    if top.is_index and not all_platforms:
        top = src.manifest(_pick_platform(top, platform or host_platform()))
        if ":" in (dst_reference or reference):
            dst_reference = top.digest
    target = dst_reference or (top.digest if ":" in reference else reference)
    report = CopyReport(digest=top.digest)
    _Copier(src, dst, referrers, progress, report).manifest(top, target)
    return report


def _pick_platform(index: Manifest, wanted: tuple[str, str]) -> str:
    for child in index.children():
        plat = child.get("platform") or {}
        if (plat.get("os"), plat.get("architecture")) == wanted:
            return str(child["digest"])
    raise errors.ClientError(f"index {index.digest} has no image for {wanted[0]}/{wanted[1]}")


class _Copier:
    def __init__(
        self,
        src: Store,
        dst: Store,
        referrers: bool,
        progress: ProgressFactory | None,
        report: CopyReport,
    ) -> None:
        self.src, self.dst = src, dst
        self.with_referrers = referrers
        self.progress = progress
        self.report = report
        self.done: set[str] = set()

    def manifest(self, manifest: Manifest, reference: str) -> None:
        if manifest.digest not in self.done:
            self.done.add(manifest.digest)
            if self.dst.has_manifest(manifest.digest):
                self.report.manifests_present += 1
            else:
                for child in manifest.children():
                    digest = str(child["digest"])
                    self.manifest(self.src.manifest(digest), digest)
                for blob in manifest.blobs():
                    self.blob(str(blob["digest"]), int(blob["size"]))
                self.dst.put_manifest(manifest.digest, manifest)
                self.report.manifests += 1
                self.report.copied.append(manifest.digest)
            if self.with_referrers:
                for referrer in self.src.referrers(manifest.digest):
                    digest = str(referrer["digest"])
                    self.manifest(self.src.manifest(digest), digest)
        if reference != manifest.digest:
            self.dst.put_manifest(reference, manifest)

    def blob(self, digest: str, size: int) -> None:
        if digest in self.done:
            return
        self.done.add(digest)
        if self.dst.blob_size(digest) is not None:
            self.report.blobs_present += 1
            return
        bar = self.progress(digest[7:19], size) if self.progress is not None else None
        try:
            self.dst.put_blob(
                digest, size, lambda offset: self.src.open_blob(digest, size, offset), bar, self.src
            )
        finally:
            if bar is not None:
                bar.close()
        self.report.blobs += 1
        self.report.bytes += size


class RemoteRepository:
    """A repository of a registry, as a Store."""

    def __init__(self, client: RegistryClient, name: str) -> None:
        self.client, self.name = client, name
        self.label = f"{client.host}/{name}"
        self.chunk_size: int | None = None  # None: one PUT per blob
        self._referrers_api: bool | None = None

    def manifest(self, reference: str) -> Manifest:
        return self.client.get_manifest(self.name, reference)

    def has_manifest(self, digest: str) -> bool:
        return self.client.head_manifest(self.name, digest) is not None

    def put_manifest(self, reference: str, manifest: Manifest) -> None:
        pushed = self.client.push_manifest(self.name, reference, manifest)
        subject = manifest.subject()
        if subject and not pushed.subject_recorded and not self._has_referrers_api(subject):
            self.client.add_to_referrers_tag(self.name, subject, manifest.descriptor())

    def _has_referrers_api(self, subject: str) -> bool:
        if self._referrers_api is None:
            self._referrers_api = self.client.has_referrers_api(self.name, subject)
        return self._referrers_api

    def blob_size(self, digest: str) -> int | None:
        return self.client.head_blob(self.name, digest)

    def open_blob(self, digest: str, size: int, offset: int = 0) -> Readable:
        return self.client.open_blob(self.name, digest, offset, size)

    def put_blob(
        self, digest: str, size: int, opener: Opener, progress: Progress | None, source: Store
    ) -> None:
        mount_from = None
        if isinstance(source, RemoteRepository) and source.client.url == self.client.url:
            mount_from = source.name
        self.client.upload_blob(
            self.name,
            opener,
            digest,
            size,
            chunk_size=self.chunk_size,
            progress=progress,
            mount_from=mount_from,
        )

    def referrers(self, digest: str) -> list[dict[str, Any]]:
        return self.client.referrers(self.name, digest)
