"""Manifest media types (as app/registry/manifests.py accepts them) and descriptors."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (*IMAGE_TYPES, *INDEX_TYPES)
# Layers whose bytes live elsewhere (Windows base layers) are never copied when they have urls.
FOREIGN_LAYERS = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)
REF_NAME = "org.opencontainers.image.ref.name"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@dataclass(frozen=True)
class Manifest:
    """A manifest's exact bytes, its digest and media type."""

    digest: str
    media_type: str
    body: bytes

    @classmethod
    def of(cls, body: bytes, media_type: str | None = None) -> Manifest:
        return cls(digest_of(body), media_type or media_type_of(body), body)

    @property
    def size(self) -> int:
        return len(self.body)

    def json(self) -> dict[str, Any]:
        doc = json.loads(self.body)
        return doc if isinstance(doc, dict) else {}

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def descriptor(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        doc = self.json()
        artifact_type = doc.get("artifactType") or (doc.get("config") or {}).get("mediaType")
        if artifact_type and not self.is_index:
            entry["artifactType"] = artifact_type
        elif doc.get("artifactType"):
            entry["artifactType"] = doc["artifactType"]
        if doc.get("annotations"):
            entry["annotations"] = doc["annotations"]
        return entry

    def blobs(self) -> list[dict[str, Any]]:
        """Descriptors of the blobs an image manifest needs in its repository (config,
        then layers; foreign layers with urls left out)."""
        if self.is_index:
            return []
        doc = self.json()
        found = [doc["config"]] if isinstance(doc.get("config"), dict) else []
        for layer in doc.get("layers") or []:
            if layer.get("mediaType") in FOREIGN_LAYERS and layer.get("urls"):
                continue
            found.append(layer)
        return found

    def children(self) -> list[dict[str, Any]]:
        return list(self.json().get("manifests") or []) if self.is_index else []

    def subject(self) -> str | None:
        subject = self.json().get("subject")
        return subject.get("digest") if isinstance(subject, dict) else None


def media_type_of(body: bytes) -> str:
    """The mediaType a manifest declares; for an old one without it, guessed from its shape."""
    try:
        doc = json.loads(body)
    except ValueError:
        return ""
    if not isinstance(doc, dict):
        return ""
    if isinstance(doc.get("mediaType"), str):
        return str(doc["mediaType"])
    return OCI_INDEX if "manifests" in doc else OCI_MANIFEST


def referrers_tag(digest: str) -> str:
    """The OCI 1.1 fallback tag under which a registry without the referrers API keeps them."""
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm}-{hex_}"[:128]
