"""Manifests: parsed for what they reference, stored byte for byte, tagged, deleted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, delete, select

from app.db import locks, queries
from app.db.models import Manifest, ManifestReference, Tag, utcnow
from app.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    Unsupported,
)
from app.registry import events
from app.registry.context import Registry
from app.registry.references import Digest, check_tag, is_digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
IMAGE_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
# Layers that live elsewhere (Windows base layers): their bytes are never pushed.
FOREIGN_LAYERS = {
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}


@dataclass
class ParsedManifest:
    media_type: str
    blobs: list[str] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)
    subject: str | None = None
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None


def _descriptor(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestInvalid({"field": where}, message=f"{where} is not a descriptor")
    digest, size, media_type = value.get("digest"), value.get("size"), value.get("mediaType")
    if not isinstance(digest, str):
        raise ManifestInvalid({"field": where}, message=f"{where} has no digest")
    try:
        Digest.parse(digest)
    except DigestInvalid as exc:
        raise ManifestInvalid(
            {"field": where, "digest": digest}, message=f"{where}: bad digest"
        ) from exc
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid({"field": where}, message=f"{where} has no valid size")
    if media_type is not None and not isinstance(media_type, str):
        raise ManifestInvalid({"field": where}, message=f"{where} has an invalid mediaType")
    return value


def parse(body: bytes, content_type: str | None) -> ParsedManifest:
    """Check a manifest's shape and collect the digests it references."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestInvalid({"reason": str(exc)}, message="manifest is not valid JSON") from exc
    if not isinstance(doc, dict):
        raise ManifestInvalid(message="manifest is not a JSON object")
    declared = doc.get("mediaType")
    header = (content_type or "").split(";")[0].strip() or None
    media_type = declared or header
    if declared and header and declared != header and header != "application/json":
        raise ManifestInvalid(
            {"mediaType": declared, "Content-Type": header},
            message="mediaType does not match Content-Type",
        )
    if media_type not in IMAGE_TYPES | INDEX_TYPES:
        raise ManifestInvalid({"mediaType": media_type}, message="unsupported manifest media type")
    if doc.get("schemaVersion") != 2:
        raise ManifestInvalid(message="schemaVersion must be 2")
    parsed = ParsedManifest(media_type)
    artifact_type = doc.get("artifactType")
    if artifact_type is not None and not isinstance(artifact_type, str):
        raise ManifestInvalid(message="artifactType must be a string")
    annotations = doc.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        raise ManifestInvalid(message="annotations must be an object")
    parsed.annotations = annotations
    if media_type in IMAGE_TYPES:
        config = _descriptor(doc.get("config"), "config")
        parsed.blobs.append(config["digest"])
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise ManifestInvalid(message="layers must be a list")
        for i, layer in enumerate(layers):
            layer = _descriptor(layer, f"layers[{i}]")
            if layer.get("mediaType") in FOREIGN_LAYERS and layer.get("urls"):
                continue
            parsed.blobs.append(layer["digest"])
        parsed.artifact_type = artifact_type or config.get("mediaType")
    else:
        children = doc.get("manifests")
        if not isinstance(children, list):
            raise ManifestInvalid(message="manifests must be a list")
        for i, child in enumerate(children):
            parsed.manifests.append(_descriptor(child, f"manifests[{i}]")["digest"])
        parsed.artifact_type = artifact_type
    if doc.get("subject") is not None:
        parsed.subject = _descriptor(doc["subject"], "subject")["digest"]
    return parsed


@dataclass(frozen=True)
class StoredManifest:
    digest: str
    media_type: str
    payload: bytes
    subject: str | None = None


_MANIFEST_ID = select(Manifest.id).where(
    Manifest.repository_id == bindparam("repo_id"), Manifest.digest == bindparam("digest")
)


def put(
    reg: Registry,
    repo: str,
    reference: str,
    body: bytes,
    content_type: str | None,
    origin: events.RequestInfo | None = None,
) -> StoredManifest:
    if is_digest(reference):
        wanted = Digest.parse(reference)
        digest = Digest.of(body, wanted.algorithm)
        if digest != wanted:
            raise DigestInvalid(
                {"digest": reference}, message="manifest digest does not match body"
            )
        tag = None
    else:
        tag = check_tag(reference)
        digest = Digest.of(body)
    parsed = parse(body, content_type)
    with reg.db.transaction(write=True) as session:
        repo_id = queries.ensure_repository(session, repo)
        # gc waits for this transaction before deleting any of these (app/db/locks.py).
        locks.share(session, [str(digest), *parsed.blobs, *parsed.manifests])
        missing = queries.missing_blobs(session, repo_id, parsed.blobs)
        missing += queries.missing_manifests(session, repo_id, parsed.manifests)
        if missing:
            raise _unknown_blobs(missing)
        values = {
            "repository_id": repo_id,
            "digest": str(digest),
            "media_type": parsed.media_type,
            "artifact_type": parsed.artifact_type,
            "subject_digest": parsed.subject,
            "annotations": json.dumps(parsed.annotations) if parsed.annotations else None,
            "payload": body,
            "size": len(body),
            "created_at": utcnow(),
        }
        queries.insert_ignore(session, Manifest, values, ["repository_id", "digest"])
        manifest_id = session.scalar(_MANIFEST_ID, {"repo_id": repo_id, "digest": str(digest)})
        refs = [(d, "blob") for d in dict.fromkeys(parsed.blobs)]
        refs += [(d, "manifest") for d in dict.fromkeys(parsed.manifests)]
        if refs:
            rows = [{"manifest_id": manifest_id, "digest": d, "kind": k} for d, k in refs]
            queries.insert_ignore(session, ManifestReference, rows, ["manifest_id", "digest"])
        if tag is not None:
            queries.upsert(
                session,
                Tag,
                {
                    "repository_id": repo_id,
                    "name": tag,
                    "manifest_id": manifest_id,
                    "updated_at": utcnow(),
                },
                ["repository_id", "name"],
                ["manifest_id", "updated_at"],
            )
        pushed = events.manifest_event(
            "push", repo, str(digest), parsed.media_type, body, tag, origin
        )
        events.record(session, reg, [pushed])
    return StoredManifest(str(digest), parsed.media_type, body, parsed.subject)


def _unknown_blobs(missing: list[str]) -> RegistryError:
    # One error entry per missing digest, as the spec asks.
    rest = [ManifestBlobUnknown({"digest": d}) for d in missing[1:]]
    return ManifestBlobUnknown({"digest": missing[0]}, also=rest)


def get(reg: Registry, repo: str, reference: str) -> StoredManifest:
    if is_digest(reference):
        query, key = queries.MANIFEST_BY_DIGEST, str(Digest.parse(reference))
    else:
        query, key = queries.MANIFEST_BY_TAG, check_tag(reference)
    found = reg.db.rows(query, {"repo": repo, "reference": key})
    if not found:
        raise ManifestUnknown({"name": repo, "reference": reference})
    digest, media_type, payload, subject_digest = found[0]
    # bytes(): PostgreSQL's driver returns a bytea as a memoryview.
    return StoredManifest(digest, media_type, bytes(payload), subject_digest)


def delete_reference(
    reg: Registry, repo: str, reference: str, origin: events.RequestInfo | None = None
) -> None:
    """By digest: the manifest and every tag on it go. By tag: only the tag goes."""
    if not reg.settings.delete_enabled:
        raise Unsupported(message="deletion is disabled")
    with reg.db.transaction(write=True) as session:
        repo_id = queries.repository_id(session, repo)
        if repo_id is None:
            raise NameUnknown({"name": repo})
        if is_digest(reference):
            digest = str(Digest.parse(reference))
            manifest_id = session.scalar(
                select(Manifest.id).where(
                    Manifest.repository_id == repo_id, Manifest.digest == digest
                )
            )
            if manifest_id is None:
                raise ManifestUnknown({"name": repo, "reference": reference})
            events.record_manifest_deleted(session, reg, repo, manifest_id, origin)
            session.execute(delete(Tag).where(Tag.manifest_id == manifest_id))
            session.execute(
                delete(ManifestReference).where(ManifestReference.manifest_id == manifest_id)
            )
            session.execute(delete(Manifest).where(Manifest.id == manifest_id))
        else:
            result = session.execute(
                delete(Tag).where(Tag.repository_id == repo_id, Tag.name == check_tag(reference))
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise ManifestUnknown({"name": repo, "reference": reference})
            events.record(session, reg, [events.tag_deleted(repo, reference, origin)])
