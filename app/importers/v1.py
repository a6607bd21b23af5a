"""`berth import v1`: the storage of the old v1 registry (docker-registry 0.x), each tag
turned into a Docker schema 2 image.

    images/<id>/json        the image's v1 JSON (parent, created, config, container_config)
    images/<id>/layer       its filesystem change as a tar (gzipped or not)
    images/<id>/ancestry    JSON list of ids, the image first, its base last
    repositories/<namespace>/<repo>/tag_<name>    the image id the tag points at

For a tag, the chain from the base up becomes the layers (a gzipped layer is kept as it is,
an uncompressed one is gzipped, deterministically, so that a second run makes the same
bytes and finds them stored), and the top image's JSON the config: its settings, rootfs
diff_ids, and one history entry per v1 image (what created it, when, empty_layer where
the v1 layer was empty). Blobs go in through the upload service; the manifest through
app/registry/manifests. Repositories keep their v1 name, `library/` included.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from app.client.media import DOCKER_MANIFEST
from app.errors import RegistryError
from app.registry import ingest
from app.registry.context import Context
from app.registry.references import Digest, is_tag, is_valid_name

CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
CHUNK = 1024 * 1024
_ID = re.compile(r"[0-9a-f]{64}")
# An empty tar (two zero blocks, or nothing): a v1 image that changed only metadata.
_EMPTY_TAR_MAX = 1024


class NotAV1Store(ValueError):
    pass


@dataclass(frozen=True)
class Layer:
    digest: str  # of the gzipped blob
    size: int
    diff_id: str  # of the uncompressed tar
    path: Path  # the gzipped bytes (the v1 file itself, or a temporary one)


@dataclass
class V1Report:
    repositories: int = 0
    tags: int = 0
    tags_present: int = 0
    blobs: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self, dry_run: bool) -> str:
        verb = "would import" if dry_run else "imported"
        return (
            f"{verb} {self.tags} tags of {self.repositories} repositories ({self.blobs} blobs,"
            f" {self.bytes} bytes); {self.tags_present} tags already in Berth;"
            f" {len(self.problems)} problems"
        )


class V1Store:
    def __init__(self, path: Path) -> None:
        self.root = Path(path)
        if not (self.root / "repositories").is_dir() or not (self.root / "images").is_dir():
            raise NotAV1Store(f"{path}: no images/ and repositories/ of a v1 registry")

    def tags(self) -> list[tuple[str, str, str]]:
        """(repository, tag, image id) of every tag."""
        found = []
        base = self.root / "repositories"
        for tag_file in sorted(base.glob("**/tag_*")):
            repo = tag_file.parent.relative_to(base).as_posix()
            tag = tag_file.name.removeprefix("tag_")
            found.append((repo, tag, tag_file.read_text().strip()))
        return found

    def image(self, image_id: str) -> dict[str, Any]:
        if not _ID.fullmatch(image_id):
            raise ValueError(f"{image_id!r} is not a v1 image id")
        doc = json.loads((self.root / "images" / image_id / "json").read_text())
        if not isinstance(doc, dict):
            raise ValueError(f"image {image_id}: json is not an object")
        return doc

    def chain(self, image_id: str) -> list[str]:
        """Ids from the base image up to `image_id`."""
        ancestry = self.root / "images" / image_id / "ancestry"
        if ancestry.is_file():
            ids = json.loads(ancestry.read_text())
        else:  # walk the parents
            ids, current = [], image_id
            while current:
                ids.append(current)
                current = self.image(current).get("parent") or ""
        if not ids or ids[0] != image_id or not all(_ID.fullmatch(str(i)) for i in ids):
            raise ValueError(f"image {image_id}: malformed ancestry")
        return [str(i) for i in reversed(ids)]

    def layer_file(self, image_id: str) -> Path:
        return self.root / "images" / image_id / "layer"


class _Converter:
    def __init__(self, store: V1Store, scratch: Path) -> None:
        self.store, self.scratch = store, scratch
        self.layers: dict[str, Layer | None] = {}  # per v1 id; None: an empty layer

    def layer(self, image_id: str) -> Layer | None:
        if image_id not in self.layers:
            self.layers[image_id] = self._convert(image_id)
        return self.layers[image_id]

    def _convert(self, image_id: str) -> Layer | None:
        source = self.store.layer_file(image_id)
        if not source.is_file():
            return None
        with source.open("rb") as stream:
            compressed = stream.read(2) == b"\x1f\x8b"
        diff = hashlib.sha256()
        if compressed:
            with gzip.open(source, "rb") as tar:
                size = _feed(tar, diff)
            if size <= _EMPTY_TAR_MAX:
                return None
            return Layer(_file_digest(source), source.stat().st_size, _hex(diff), source)
        if source.stat().st_size <= _EMPTY_TAR_MAX:
            return None
        target = self.scratch / f"{image_id}.tar.gz"
        # mtime=0 and a fixed level: the same tar always gives the same blob.
        with (
            source.open("rb") as tar,
            target.open("wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as out,
        ):
            while data := tar.read(CHUNK):
                diff.update(data)
                out.write(data)
        return Layer(_file_digest(target), target.stat().st_size, _hex(diff), target)


def _feed(stream: IO[bytes] | gzip.GzipFile, hasher: Any) -> int:
    total = 0
    while data := stream.read(CHUNK):
        hasher.update(data)
        total += len(data)
    return total


def _hex(hasher: Any) -> str:
    return f"sha256:{hasher.hexdigest()}"


def _file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as stream:
        _feed(stream, hasher)
    return _hex(hasher)


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    return lambda: path.open("rb")


def _canonical(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def build_image(
    store: V1Store, converter: _Converter, image_id: str
) -> tuple[bytes, bytes, list[Layer]]:
    """(manifest, config, layers) of the schema 2 image for v1 image `image_id`."""
    chain = store.chain(image_id)
    top = store.image(image_id)
    layers: list[Layer] = []
    history = []
    for v1_id in chain:
        v1 = store.image(v1_id)
        layer = converter.layer(v1_id)
        cmd = (v1.get("container_config") or {}).get("Cmd") or []
        entry: dict[str, Any] = {"created": v1.get("created", "1970-01-01T00:00:00Z")}
        if cmd:
            entry["created_by"] = " ".join(str(c) for c in cmd)
        if v1.get("author"):
            entry["author"] = v1["author"]
        if v1.get("comment"):
            entry["comment"] = v1["comment"]
        if layer is None:
            entry["empty_layer"] = True
        else:
            layers.append(layer)
        history.append(entry)
    config: dict[str, Any] = {
        key: top[key]
        for key in (
            "architecture",
            "author",
            "config",
            "container",
            "container_config",
            "created",
            "docker_version",
            "os",
            "variant",
        )
        if top.get(key) is not None
    }
    config.setdefault("architecture", "amd64")
    config.setdefault("os", "linux")
    config["rootfs"] = {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]}
    config["history"] = history
    config_bytes = _canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {
            "mediaType": CONFIG_TYPE,
            "size": len(config_bytes),
            "digest": f"sha256:{hashlib.sha256(config_bytes).hexdigest()}",
        },
        "layers": [
            {"mediaType": LAYER_TYPE, "size": layer.size, "digest": layer.digest}
            for layer in layers
        ],
    }
    return json.dumps(manifest, indent=3).encode(), config_bytes, layers


def run(reg: Context, store: V1Store, dry_run: bool = False, say: Any = None) -> V1Report:
    report = V1Report()
    repos: set[str] = set()
    scratch = Path(tempfile.mkdtemp(prefix="berth-v1-"))
    try:
        converter = _Converter(store, scratch)
        for repo, tag, image_id in store.tags():
            if not is_valid_name(repo) or not is_tag(tag):
                report.problems.append(f"{repo}:{tag}: not a valid name or tag; skipped")
                continue
            repos.add(repo)
            try:
                _import_tag(reg, store, converter, repo, tag, image_id, dry_run, report, say)
            except (OSError, ValueError, RegistryError) as exc:
                report.problems.append(f"{repo}:{tag} ({image_id[:12]}): {exc}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.repositories = len(repos)
    return report


def _import_tag(
    reg: Context,
    store: V1Store,
    converter: _Converter,
    repo: str,
    tag: str,
    image_id: str,
    dry_run: bool,
    report: V1Report,
    say: Any,
) -> None:
    manifest, config, layers = build_image(store, converter, image_id)
    found = ingest.stored_manifest(reg, repo, tag)
    if found is not None and found.digest == str(Digest.of(manifest)):
        report.tags_present += 1
        return
    report.tags += 1
    if say is not None:
        say(f"{repo}:{tag} <- v1 {image_id[:12]} ({len(layers)} layers)")
    if dry_run:
        return
    config_digest = Digest.of(config)
    if ingest.linked_size(reg, repo, config_digest) is None:
        path = converter.scratch / f"config-{config_digest.hex}"
        path.write_bytes(config)
        ingest.copy_in(reg, repo, config_digest, len(config), lambda: path.open("rb"))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    for layer in layers:
        digest = Digest.parse(layer.digest)
        if ingest.linked_size(reg, repo, digest) is not None:
            continue
        held = ingest.stored_size(reg, digest)
        if held is not None:
            ingest.link(reg, repo, digest, held)
            continue
        ingest.copy_in(reg, repo, digest, layer.size, _opener(layer.path))
        report.blobs += 1
        report.bytes += layer.size
    ingest.put_manifest(reg, repo, tag, manifest, DOCKER_MANIFEST)
