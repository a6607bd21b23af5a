"""Browsing the content, for the web UI (app/ui/): repository summaries, tag pages and a
manifest taken apart (layers, image config, index children, referrers). Read-only, and
framework-free like the rest of app/registry; its SQL is in queries.py.

Pages are cut on the server: repositories page by page in SQL (search is a LIKE on the
name), tags by reading every tag's name and push time (two short columns), sorting them
here, number-aware, and then reading the manifests of one page only.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from app.errors import DigestInvalid, ManifestUnknown, NameUnknown
from app.notifications import events
from app.registry import gc, manifests, paths, queries
from app.registry.context import Context
from app.registry.queries import ManifestRow, RepositorySummary
from app.registry.references import Digest, check_name, check_tag, is_digest
from app.storage import StorageError

_T = TypeVar("_T")
REPOSITORY_SORTS = queries.REPOSITORY_SORTS
TAG_SORTS = ("name", "pushed")
CONFIG_LIMIT = 1024 * 1024  # image configs larger than this are not read for display
REFERRER_DEPTH = 4  # a signature of an SBOM of an image is three levels; deeper is cut off
IMAGE_CONFIG_TYPES = {
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
}
_DIGITS = re.compile(r"(\d+)")

__all__ = ["Page", "RepositorySummary", "manifest", "repositories", "tags"]


@dataclass(frozen=True)
class Page(Generic[_T]):
    items: list[_T]
    total: int
    page: int  # 1-based
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def natural_key(name: str) -> list[str | int]:
    """Sorts v1.9 before v1.10: runs of digits compare as numbers, the rest as text.

    Splitting on a captured group alternates text and digits, text first (maybe empty), so
    two keys always hold text against text and numbers against numbers, position by
    position; a longer key that starts like a shorter one sorts after it."""
    parts: list[str | int] = _DIGITS.split(name)
    for i in range(1, len(parts), 2):
        parts[i] = int(parts[i])
    return parts


@functools.lru_cache(maxsize=16)
def _natural_order(names: tuple[str, ...], descending: bool) -> tuple[str, ...]:
    """Every tag of a repository, number-aware. Keyed by the very names read (so never stale):
    paging through a large repository sorts its 10,000 names once per process, not per page
    (the sort was ~50 ms of a ~100 ms page; hashing and comparing the names costs ~1 ms)."""
    return tuple(sorted(names, key=natural_key, reverse=descending))


def _clamp_page(page: int, total: int, per_page: int) -> int:
    return min(max(page, 1), max(1, math.ceil(total / per_page)))


def repositories(
    reg: Context,
    search: str,
    sort: str,
    descending: bool,
    page: int,
    per_page: int,
    visible: Callable[[str], bool] | None = None,
) -> Page[RepositorySummary]:
    """One page of repositories whose name contains `search`; with `visible`, only those it
    admits (what the caller may pull), counted and paged after filtering."""
    search = search.strip().lower()
    sort = sort if sort in REPOSITORY_SORTS else "name"
    with reg.db.transaction() as session:
        queries.interactive(session)
        if visible is None:
            total = queries.count_repositories(session, search)
            page = _clamp_page(page, total, per_page)
            chosen = queries.repository_order(
                session, search, sort, descending, per_page, (page - 1) * per_page
            )
        else:
            every = queries.repository_order(session, search, sort, descending)
            admitted = [entry for entry in every if visible(entry[1])]
            total = len(admitted)
            page = _clamp_page(page, total, per_page)
            chosen = admitted[(page - 1) * per_page : page * per_page]
        items = queries.repository_summaries(session, [repo_id for repo_id, _ in chosen])
    return Page(items, total, page, per_page)


def summary(reg: Context, name: str) -> RepositorySummary:
    """One repository's figures (what a delete would remove); NAME_UNKNOWN when absent."""
    check_name(name)
    with reg.db.transaction() as session:
        repo_id = queries.repository_id(session, name)
        found = queries.repository_summaries(session, [repo_id] if repo_id is not None else [])
    if not found:
        raise NameUnknown({"name": name})
    return found[0]


# --- tags ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagSummary:
    name: str
    pushed: datetime
    digest: str
    media_type: str
    kind: str  # "image", "index" or "artifact"
    size: int  # compressed: config and layers, or every child image's for an index
    created: str | None  # the image config's `created`
    platforms: list[str]
    artifact_type: str | None


def _doc(payload: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _descriptors(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    found = doc.get(key)
    if not isinstance(found, list):
        return []
    return [d for d in found if isinstance(d, dict) and isinstance(d.get("digest"), str)]


def _size_of(descriptor: Any) -> int:
    size = descriptor.get("size") if isinstance(descriptor, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) else 0


def _image_size(doc: dict[str, Any]) -> int:
    return _size_of(doc.get("config")) + sum(_size_of(d) for d in _descriptors(doc, "layers"))


def platform_of(descriptor: dict[str, Any]) -> str:
    platform = descriptor.get("platform")
    if not isinstance(platform, dict):
        return ""
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if isinstance(p, str) and p)


def _kind(row: ManifestRow, doc: dict[str, Any]) -> str:
    if row.media_type in manifests.INDEX_TYPES:
        return "index"
    config = doc.get("config")
    config_type = config.get("mediaType") if isinstance(config, dict) else None
    # The stored artifact_type falls back to the config's media type (what referrers
    # report), so an image is told apart by its manifest's own fields.
    if doc.get("artifactType") or config_type not in IMAGE_CONFIG_TYPES:
        return "artifact"
    return "image"


def read_config(reg: Context, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The image config an image manifest names, parsed; None when it is not an image config,
    too large, unreadable or not JSON (a page shows less, it never fails for it)."""
    config = doc.get("config")
    if not isinstance(config, dict) or config.get("mediaType") not in IMAGE_CONFIG_TYPES:
        return None
    if _size_of(config) > CONFIG_LIMIT:
        return None
    try:
        data = reg.driver.get_content(paths.blob_data(Digest.parse(str(config.get("digest")))))
    except (StorageError, DigestInvalid):
        return None
    parsed = _doc(data)
    return parsed or None


def _created(config: dict[str, Any] | None) -> str | None:
    created = config.get("created") if config else None
    return created if isinstance(created, str) else None


def tags(
    reg: Context, repo: str, sort: str, descending: bool, page: int, per_page: int
) -> Page[TagSummary]:
    check_name(repo)
    sort = sort if sort in TAG_SORTS else "name"
    with reg.db.transaction() as session:
        queries.interactive(session)
        repo_id = queries.repository_id(session, repo)
        if repo_id is None:
            raise NameUnknown({"name": repo})
        if sort == "pushed":
            total = queries.count_tags(session, repo_id)
            page = _clamp_page(page, total, per_page)
            chosen = queries.tags_by_push(
                session, repo_id, descending, per_page, (page - 1) * per_page
            )
        else:
            names = _natural_order(tuple(queries.tag_names(reg.db, repo_id)), descending)
            total = len(names)
            page = _clamp_page(page, total, per_page)
            chosen = list(names[(page - 1) * per_page : page * per_page])
        tagged = queries.tagged_manifests(session, repo_id, chosen)
        rows = {name: entry.manifest for name, entry in tagged.items()}
        docs = {row.digest: _doc(row.payload) for row in rows.values()}
        child_digests = [
            d["digest"]
            for row in rows.values()
            if row.media_type in manifests.INDEX_TYPES
            for d in _descriptors(docs[row.digest], "manifests")
        ]
        children = queries.manifest_rows(session, repo_id, child_digests)
    items = []
    for name in chosen:
        row = rows.get(name)
        if row is None:  # untagged between the two reads
            continue
        doc = docs[row.digest]
        kind = _kind(row, doc)
        platforms: list[str] = []
        if kind == "index":
            size = 0
            for child in _descriptors(doc, "manifests"):
                platform = platform_of(child)
                if platform and platform != "unknown/unknown":  # buildx attestations
                    platforms.append(platform)
                stored = children.get(child["digest"])
                size += _image_size(_doc(stored.payload)) if stored else 0
            created = None
        else:
            size = _image_size(doc)
            created = _created(read_config(reg, doc)) if kind == "image" else None
        items.append(
            TagSummary(
                name,
                tagged[name].pushed,
                row.digest,
                row.media_type,
                kind,
                size,
                created,
                platforms,
                row.artifact_type if kind == "artifact" else None,
            )
        )
    return Page(items, total, page, per_page)


# --- one manifest ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class Child:
    digest: str
    media_type: str
    size: int
    platform: str
    stored: bool  # present in this repository


@dataclass(frozen=True)
class HistoryStep:
    created: str
    created_by: str
    empty_layer: bool
    comment: str


@dataclass(frozen=True)
class ImageConfig:
    created: str | None
    platform: str
    user: str
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    ports: list[str]
    labels: dict[str, str]
    history: list[HistoryStep]


@dataclass
class Referrer:
    digest: str
    media_type: str
    artifact_type: str | None
    size: int
    created_at: datetime
    annotations: dict[str, str] | None
    referrers: list[Referrer] = field(default_factory=list)


@dataclass(frozen=True)
class ManifestDetail:
    repository: str
    digest: str
    media_type: str
    kind: str
    artifact_type: str | None
    size: int  # of the manifest itself
    total_size: int  # config and layers
    pushed: datetime
    tags: list[str]
    subject: str | None
    annotations: dict[str, str]
    config_descriptor: Layer | None
    layers: list[Layer]
    config: ImageConfig | None
    children: list[Child]
    referrers: list[Referrer]
    payload: str  # the manifest as stored, for a "raw" view


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, str | int | float)]
    return []


def _image_config(raw: dict[str, Any]) -> ImageConfig:
    inner = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    assert isinstance(inner, dict)
    labels = inner.get("Labels") if isinstance(inner.get("Labels"), dict) else {}
    assert isinstance(labels, dict)
    ports = inner.get("ExposedPorts") if isinstance(inner.get("ExposedPorts"), dict) else {}
    assert isinstance(ports, dict)
    history = []
    for step in raw.get("history") or []:
        if not isinstance(step, dict):
            continue
        by = str(step.get("created_by") or "")
        # What `docker build` records: "/bin/sh -c #(nop)  CMD [...]" reads as "CMD [...]".
        by = re.sub(r"^/bin/sh -c #\(nop\)\s*", "", by)
        by = re.sub(r"^/bin/sh -c ", "RUN ", by)
        history.append(
            HistoryStep(
                str(step.get("created") or ""),
                by,
                bool(step.get("empty_layer")),
                str(step.get("comment") or ""),
            )
        )
    return ImageConfig(
        created=_created(raw),
        platform=platform_of({"platform": raw}),
        user=str(inner.get("User") or ""),
        workdir=str(inner.get("WorkingDir") or ""),
        entrypoint=_strings(inner.get("Entrypoint")),
        cmd=_strings(inner.get("Cmd")),
        env=_strings(inner.get("Env")),
        ports=sorted(str(p) for p in ports),
        labels={str(k): str(v) for k, v in sorted(labels.items())},
        history=history,
    )


def _layer(descriptor: dict[str, Any]) -> Layer:
    return Layer(descriptor["digest"], str(descriptor.get("mediaType") or ""), _size_of(descriptor))


def _referrer_tree(
    session: Any, repo_id: int, subject: str, depth: int = REFERRER_DEPTH
) -> list[Referrer]:
    roots: list[Referrer] = []
    level = {subject: roots}
    seen = {subject}
    for _ in range(depth):
        found = queries.referrer_rows(session, repo_id, list(level))
        next_level: dict[str, list[Referrer]] = {}
        for subject_digest, rows in found.items():
            for row in rows:
                if row.digest in seen:
                    continue
                seen.add(row.digest)
                node = Referrer(
                    row.digest,
                    row.media_type,
                    row.artifact_type or _config_type(row),
                    row.size,
                    row.created_at,
                    row.annotations,
                )
                level[subject_digest].append(node)
                next_level[row.digest] = node.referrers
        if not next_level:
            break
        level = next_level
    return roots


def _config_type(row: ManifestRow) -> str | None:
    config = _doc(row.payload).get("config")
    media_type = config.get("mediaType") if isinstance(config, dict) else None
    return media_type if isinstance(media_type, str) else None


def manifest(reg: Context, repo: str, reference: str) -> ManifestDetail:
    """A manifest of `repo` by digest (or tag), taken apart for display."""
    check_name(repo)
    if is_digest(reference):
        digest = str(Digest.parse(reference))
        tag = None
    else:
        tag = check_tag(reference)
        digest = ""
    with reg.db.transaction() as session:
        repo_id = queries.repository_id(session, repo)
        if repo_id is None:
            raise NameUnknown({"name": repo})
        if tag is not None:
            found = queries.tagged_manifests(session, repo_id, [tag]).get(tag)
            row = found.manifest if found else None
        else:
            row = queries.manifest_rows(session, repo_id, [digest]).get(digest)
        if row is None:
            raise ManifestUnknown({"name": repo, "reference": reference})
        doc = _doc(row.payload)
        child_descriptors = _descriptors(doc, "manifests")
        stored = queries.manifest_rows(session, repo_id, [d["digest"] for d in child_descriptors])
        tag_names = queries.tags_of_manifest(session, repo_id, row.digest)
        referrers = _referrer_tree(session, repo_id, row.digest)
    kind = _kind(row, doc)
    config = read_config(reg, doc) if kind == "image" else None
    config_descriptor = doc.get("config")
    annotations = doc.get("annotations") if isinstance(doc.get("annotations"), dict) else {}
    assert isinstance(annotations, dict)
    children = [
        Child(
            d["digest"],
            str(d.get("mediaType") or ""),
            _image_size(_doc(stored[d["digest"]].payload)) if d["digest"] in stored else 0,
            platform_of(d),
            d["digest"] in stored,
        )
        for d in child_descriptors
    ]
    try:
        pretty = json.dumps(json.loads(row.payload), indent=2)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        pretty = row.payload.decode("utf-8", "replace")
    return ManifestDetail(
        repository=repo,
        digest=row.digest,
        media_type=row.media_type,
        kind=kind,
        artifact_type=row.artifact_type,
        size=row.size,
        total_size=sum(c.size for c in children) if kind == "index" else _image_size(doc),
        pushed=row.created_at,
        tags=tag_names,
        subject=row.subject,
        annotations={str(k): str(v) for k, v in sorted(annotations.items())},
        config_descriptor=(
            _layer(config_descriptor)
            if isinstance(config_descriptor, dict)
            and isinstance(config_descriptor.get("digest"), str)
            else None
        ),
        layers=[_layer(d) for d in _descriptors(doc, "layers")],
        config=_image_config(config) if config else None,
        children=children,
        referrers=referrers,
        payload=pretty,
    )


# --- changes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeletedTags:
    deleted: list[str]
    missing: list[str]  # already gone (another browser tab, a client)


def delete_tags(
    reg: Context, repo: str, names: Sequence[str], origin: events.RequestInfo | None = None
) -> DeletedTags:
    """Untag each of `names` (the manifests stay, as with DELETE by tag)."""
    check_name(repo)
    deleted, missing = [], []
    for name in dict.fromkeys(names):
        check_tag(name)
        try:
            manifests.delete_reference(reg, repo, name, origin)
        except ManifestUnknown:
            missing.append(name)
        else:
            deleted.append(name)
    return DeletedTags(deleted, missing)


def gc_preview(reg: Context, delete_untagged: bool, expiry: gc.Expiry | None = None) -> gc.GcReport:
    """What `berth gc --dry-run` would free now, with the configured grace period."""
    options = gc.GcOptions(
        dry_run=True, delete_untagged=delete_untagged, grace=reg.settings.gc_grace
    )
    return gc.collect(reg, options, expiry=expiry)
