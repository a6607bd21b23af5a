"""Deterministic OCI image layouts for end-to-end tests (stdlib only).

`build_oci_layout` writes an image that real clients accept (skopeo `oci:` transport,
`podman pull oci:...`), byte-identical for a given seed, so tests can push it to a registry
and compare what comes back blob by blob. `read_layout` reads any image layout (e.g. one
skopeo wrote) back into the same `OciImage` shape.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MEDIA_TYPE_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

# Fixed timestamps: anything wall-clock based would make digests differ between runs.
_EPOCH_MTIME = 946684800  # 2000-01-01T00:00:00Z; 0 makes some tar readers warn
_CREATED = "2000-01-01T00:00:00Z"
_FILES_PER_LAYER = 3


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    # Sorted keys + compact separators: stable bytes, hence a stable digest.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def blob_path(layout: Path, digest: str) -> Path:
    algo, _, hexpart = digest.partition(":")
    return Path(layout) / "blobs" / algo / hexpart


@dataclass(frozen=True)
class OciImage:
    """One image manifest inside an OCI layout directory."""

    path: Path
    tag: str | None
    manifest_digest: str
    manifest_size: int
    manifest_media_type: str
    config_digest: str
    layer_digests: list[str]
    # Uncompressed-tar digests; empty when read from a layout whose config we did not parse.
    diff_ids: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        """containers-transports reference, e.g. for `skopeo copy` or `podman pull`."""
        return f"oci:{self.path}:{self.tag}" if self.tag else f"oci:{self.path}"

    def blob_digests(self) -> list[str]:
        """Config + layer digests: what a registry stores under /blobs/."""
        return [self.config_digest, *self.layer_digests]

    def all_digests(self) -> list[str]:
        """Manifest + config + layers: every content-addressed object of the image."""
        return [self.manifest_digest, *self.blob_digests()]

    def read_blob(self, digest: str) -> bytes:
        return blob_path(self.path, digest).read_bytes()

    def manifest_bytes(self) -> bytes:
        return self.read_blob(self.manifest_digest)

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_bytes())

    def config(self) -> dict[str, Any]:
        return json.loads(self.read_blob(self.config_digest))


def _write_blob(layout: Path, data: bytes) -> str:
    digest = sha256_digest(data)
    dest = blob_path(layout, digest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        dest.write_bytes(data)
    return digest


def _layer_tar(rng: random.Random, index: int, size: int) -> bytes:
    """An uncompressed tar of a directory with a few files totalling ~`size` random bytes."""
    buf = io.BytesIO()
    # USTAR: no PAX headers carrying atime/ctime, so output depends only on our inputs.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        dirname = f"layer{index}"
        info = tarfile.TarInfo(dirname)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _EPOCH_MTIME
        tar.addfile(info)
        base, extra = divmod(size, _FILES_PER_LAYER)
        for n in range(_FILES_PER_LAYER):
            payload = rng.randbytes(base + (1 if n < extra else 0))
            info = tarfile.TarInfo(f"{dirname}/file{n}.bin")
            info.size, info.mode, info.mtime = len(payload), 0o644, _EPOCH_MTIME
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def build_oci_layout(
    path: Path,
    tag: str = "latest",
    layers: int = 3,
    layer_size: int = 256 * 1024,
    seed: int = 0,
) -> OciImage:
    """Write a single-platform linux/amd64 image into an OCI layout at `path`.

    Same (layers, layer_size, seed) -> byte-identical blobs and manifest digest. If `path`
    already holds a layout, the image is added to it (an existing entry with the same tag is
    replaced), so one layout can carry several tags/seeds.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    rng = random.Random(seed)

    layer_descs: list[dict[str, Any]] = []
    diff_ids: list[str] = []
    for i in range(layers):
        tar_bytes = _layer_tar(rng, i, layer_size)
        diff_ids.append(sha256_digest(tar_bytes))  # podman checks these after decompressing
        gz = gzip.compress(tar_bytes, compresslevel=6, mtime=0)  # mtime=0: stable gzip header
        layer_descs.append(
            {
                "mediaType": MEDIA_TYPE_OCI_LAYER_GZIP,
                "digest": _write_blob(path, gz),
                "size": len(gz),
            }
        )

    config = {
        "created": _CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"berth.test.seed": str(seed)},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        # One history entry per layer keeps `podman history`/image-spec validators happy.
        "history": [
            {"created": _CREATED, "created_by": f"berth test layer {i} (seed {seed})"}
            for i in range(layers)
        ],
    }
    config_bytes = canonical_json(config)
    config_digest = _write_blob(path, config_bytes)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_MANIFEST,
        "config": {
            "mediaType": MEDIA_TYPE_OCI_CONFIG,
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": layer_descs,
    }
    manifest_bytes = canonical_json(manifest)
    manifest_digest = _write_blob(path, manifest_bytes)

    index_file = path / "index.json"
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": []}
    if index_file.exists():
        index = json.loads(index_file.read_text())
        index["manifests"] = [
            m
            for m in index.get("manifests", [])
            if m.get("annotations", {}).get(ANNOTATION_REF_NAME) != tag
        ]
    index["manifests"].append(
        {
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {ANNOTATION_REF_NAME: tag},
        }
    )
    index_file.write_bytes(canonical_json(index))

    return OciImage(
        path=path,
        tag=tag,
        manifest_digest=manifest_digest,
        manifest_size=len(manifest_bytes),
        manifest_media_type=MEDIA_TYPE_OCI_MANIFEST,
        config_digest=config_digest,
        layer_digests=[d["digest"] for d in layer_descs],
        diff_ids=diff_ids,
    )


def read_layout(path: Path, tag: str | None = None) -> OciImage:
    """Read back the image tagged `tag` (or the only image) from an OCI layout.

    Works on layouts written by skopeo/podman (`oci:DIR:TAG`); accepts OCI and Docker
    schema2 image manifests. Image indexes are rejected: tests copy single images.
    """
    path = Path(path)
    index = json.loads((path / "index.json").read_text())
    entries = index.get("manifests", [])
    if tag is not None:
        entries = [e for e in entries if e.get("annotations", {}).get(ANNOTATION_REF_NAME) == tag]
    if len(entries) != 1:
        raise ValueError(f"{path}: expected exactly one manifest for tag {tag!r}, got {entries}")
    desc = entries[0]
    manifest_bytes = blob_path(path, desc["digest"]).read_bytes()
    manifest = json.loads(manifest_bytes)
    media_type = manifest.get("mediaType") or desc.get("mediaType", "")
    if media_type in (MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_LIST):
        raise ValueError(f"{path}: {desc['digest']} is an index, not an image manifest")
    config_digest = manifest["config"]["digest"]
    config = json.loads(blob_path(path, config_digest).read_bytes())
    return OciImage(
        path=path,
        tag=desc.get("annotations", {}).get(ANNOTATION_REF_NAME),
        manifest_digest=desc["digest"],
        manifest_size=len(manifest_bytes),
        manifest_media_type=media_type,
        config_digest=config_digest,
        layer_digests=[layer["digest"] for layer in manifest["layers"]],
        diff_ids=list(config.get("rootfs", {}).get("diff_ids", [])),
    )


def verify_layout(path: Path) -> list[str]:
    """Problems with a layout's blob store: files whose content doesn't match their name."""
    problems = []
    for blob in sorted((Path(path) / "blobs").glob("*/*")):
        actual = sha256_digest(blob.read_bytes())
        if blob.parent.name == "sha256" and actual != f"sha256:{blob.name}":
            problems.append(f"{blob}: content hashes to {actual}")
    return problems


def layout_differences(expected: OciImage, actual: OciImage) -> list[str]:
    """Byte-for-byte comparison of two images (e.g. before/after a registry round trip).

    Returns human-readable differences; an empty list means identical manifest digest and
    identical bytes for the manifest, config and every layer.
    """
    diffs: list[str] = []
    if expected.manifest_digest != actual.manifest_digest:
        diffs.append(f"manifest digest {expected.manifest_digest} != {actual.manifest_digest}")
    if expected.all_digests() != actual.all_digests():
        diffs.append(f"digest lists differ: {expected.all_digests()} != {actual.all_digests()}")
    for digest in dict.fromkeys(expected.all_digests()):
        try:
            same = expected.read_blob(digest) == actual.read_blob(digest)
        except FileNotFoundError as exc:
            diffs.append(f"{digest}: missing ({exc.filename})")
            continue
        if not same:
            diffs.append(f"{digest}: bytes differ")
    return diffs
