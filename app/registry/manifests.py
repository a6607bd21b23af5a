"""Manifests: parsed for what they reference, stored byte for byte, tagged, deleted."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.db import locks
from app.errors import (
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    RegistryError,
    Unsupported,
)
from app.notifications import events
from app.registry import queries
from app.registry.context import Context
from app.registry.queries import StoredManifest
from app.registry.references import Digest, check_tag, is_digest, is_tag

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

    def row(self, digest: Digest, payload: bytes) -> queries.NewManifest:
        """What the database keeps of this manifest (queries.store_manifest)."""
        return queries.NewManifest(
            digest=str(digest),
            media_type=self.media_type,
            artifact_type=self.artifact_type,
            subject=self.subject,
            annotations=self.annotations,
            payload=payload,
            blobs=self.blobs,
            manifests=self.manifests,
        )


# Limits checked before anything is written (the database has column limits, and PostgreSQL
# text cannot hold NUL): sizes fit in int64, media types are at most 255 characters (RFC 6838:
# a type and a subtype of 127 each) and printable.
MAX_SIZE = 2**63 - 1
MAX_MEDIA_TYPE = 255
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def _media_type(value: Any, field: str, where: str | None = None) -> str | None:
    """A media type's value, checked; errors name `where` (the descriptor) or the field."""
    if value is None:
        return None
    if not isinstance(value, str):
        message = f"{where} has an invalid mediaType" if where else f"{field} must be a string"
        raise ManifestInvalid({"field": where or field}, message=message)
    if len(value) > MAX_MEDIA_TYPE or not _PRINTABLE.fullmatch(value):
        raise ManifestInvalid(
            {"field": where or field},
            message=f"{field} must be at most {MAX_MEDIA_TYPE} printable ASCII characters",
        )
    return value


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Parsers disagree on which of two equal keys wins, so a registry and a client could
    disagree on what an image holds: such a document is refused."""
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise _DuplicateKey(key)
        doc[key] = value
    return doc


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
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        raise ManifestInvalid({"field": where}, message=f"{where} has no valid size")
    _media_type(media_type, f"{where}.mediaType", where)
    return value


def parse(body: bytes, content_type: str | None) -> ParsedManifest:
    """Check a manifest's shape and collect the digests it references."""
    try:
        doc = json.loads(body, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ManifestInvalid(
            {"key": str(exc)}, message=f"manifest has the key {str(exc)!r} twice"
        ) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        # ValueError: malformed JSON, and integers past the interpreter's digit limit.
        raise ManifestInvalid({"reason": str(exc)}, message="manifest is not valid JSON") from exc
    except RecursionError as exc:  # nested deeper than the parser's stack allows
        raise ManifestInvalid(message="manifest is nested too deeply") from exc
    if not isinstance(doc, dict):
        raise ManifestInvalid(message="manifest is not a JSON object")
    declared = _media_type(doc.get("mediaType"), "mediaType")
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
    artifact_type = _media_type(doc.get("artifactType"), "artifactType")
    annotations = doc.get("annotations")
    if annotations is not None and not (
        isinstance(annotations, dict) and all(isinstance(v, str) for v in annotations.values())
    ):
        raise ManifestInvalid(message="annotations must be an object of strings")
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


def put(
    reg: Context,
    repo: str,
    reference: str,
    body: bytes,
    content_type: str | None,
    origin: events.RequestInfo | None = None,
    tags: Sequence[str] = (),
) -> StoredManifest:
    """Store a manifest under a tag or a digest. `tags` (OCI's `?tag=` parameters on a push
    by digest) tags it under each of them too, in the same transaction."""
    names = [check_tag(tag) for tag in dict.fromkeys(tags)]
    if is_digest(reference):
        wanted = Digest.parse(reference)
        digest = Digest.of(body, wanted.algorithm)
        if digest != wanted:
            raise DigestInvalid(
                {"digest": reference}, message="manifest digest does not match body"
            )
    else:
        names = [check_tag(reference), *(name for name in names if name != reference)]
        digest = Digest.of(body)
    parsed = parse(body, content_type)
    new = parsed.row(digest, body)
    with reg.db.transaction(write=True) as session:
        repo_id = queries.ensure_repository(session, repo)
        # gc waits for this transaction before deleting any of these (app/db/locks.py).
        locks.share(session, [str(digest), *parsed.blobs, *parsed.manifests])
        missing = queries.missing_blobs(session, repo_id, parsed.blobs)
        missing += queries.missing_manifests(session, repo_id, parsed.manifests)
        if missing:
            raise _unknown_blobs(missing)
        queries.store_manifest(session, repo_id, new, names)
        # One push event per tag, as distribution sends it; by digest alone, one untagged.
        tagged: list[str | None] = [*names] or [None]
        pushed = [
            events.manifest_event("push", repo, str(digest), parsed.media_type, body, tag, origin)
            for tag in tagged
        ]
        reg.outbox.record(session, pushed)
    return StoredManifest(str(digest), parsed.media_type, body, parsed.subject, tuple(names))


def _unknown_blobs(missing: list[str]) -> RegistryError:
    # One error entry per missing digest, as the spec asks.
    rest = [ManifestBlobUnknown({"digest": d}) for d in missing[1:]]
    return ManifestBlobUnknown({"digest": missing[0]}, also=rest)


def get(
    reg: Context,
    repo: str,
    reference: str,
    pulled_by: Callable[[], events.RequestInfo] | None = None,
    client_has: Callable[[str], bool] | None = None,
) -> StoredManifest:
    """A manifest by tag or digest. With `pulled_by` (a GET: who asked, called only when an
    endpoint listens) this is a pull and gets its event, unless the client already holds
    this digest (`client_has`, its If-None-Match): then nothing was pulled."""
    if is_digest(reference):
        found = queries.manifest(reg.db, repo, digest=str(Digest.parse(reference)))
    else:
        # A reference that cannot be a tag names no manifest (a PUT to it is TAG_INVALID).
        found = queries.manifest(reg.db, repo, tag=reference) if is_tag(reference) else None
    if found is None:
        raise ManifestUnknown({"name": repo, "reference": reference})
    if pulled_by is not None and not (client_has is not None and client_has(found.digest)):
        tag = None if is_digest(reference) else reference
        reg.outbox.publish(
            reg.db,
            lambda: events.manifest_event(
                "pull", repo, found.digest, found.media_type, found.payload, tag, pulled_by()
            ),
        )
    return found


def delete_reference(
    reg: Context, repo: str, reference: str, origin: events.RequestInfo | None = None
) -> None:
    """By digest: the manifest and every tag on it go. By tag: only the tag goes."""
    if not reg.settings.delete_enabled:
        raise Unsupported(message="deletion is disabled")
    with reg.db.transaction(write=True) as session:
        repo_id = queries.repository_id(session, repo)
        if repo_id is None:
            raise NameUnknown({"name": repo})
        if is_digest(reference):
            doomed = queries.manifest_to_delete(session, repo_id, str(Digest.parse(reference)))
            if doomed is None:
                raise ManifestUnknown({"name": repo, "reference": reference})
            # The manifest's delete event, then one per tag that goes with it (distribution
            # untags too, and says so).
            gone = events.manifest_event(
                "delete", repo, doomed.digest, doomed.media_type, None, origin=origin
            )
            gone["target"]["size"] = gone["target"]["length"] = doomed.size
            untagged = [events.tag_deleted(repo, tag, origin) for tag in doomed.tags]
            reg.outbox.record(session, [gone, *untagged])
            queries.delete_manifest(session, doomed.id)
        else:
            if not is_tag(reference) or not queries.delete_tag(session, repo_id, reference):
                raise ManifestUnknown({"name": repo, "reference": reference})
            reg.outbox.record(session, [events.tag_deleted(repo, reference, origin)])
