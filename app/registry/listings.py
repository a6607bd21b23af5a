"""Tag lists, the catalog and referrers: read-only views over the metadata index."""

from __future__ import annotations

import json
from dataclasses import dataclass

from app.db import queries
from app.errors import NameUnknown
from app.registry.context import Registry
from app.registry.references import Digest


def tags(reg: Registry, repo: str, last: str | None, limit: int | None) -> list[str]:
    page = {"repo": repo, "last": last or "", "limit": queries.NO_LIMIT}
    if limit is not None:
        page["limit"] = limit
    names = [name for (name,) in reg.db.rows(queries.TAG_PAGE, page)]
    # An empty page: past the last tag, no tags, or no such repository.
    if not names and not reg.db.rows(queries.REPOSITORY_ID, {"repo": repo}):
        raise NameUnknown({"name": repo})
    return names


def catalog(reg: Registry, last: str | None, limit: int | None) -> list[str]:
    with reg.db.transaction() as session:
        return queries.repository_names(session, last, limit)


@dataclass(frozen=True)
class Referrer:
    media_type: str
    digest: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None

    def descriptor(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.artifact_type:
            entry["artifactType"] = self.artifact_type
        if self.annotations:
            entry["annotations"] = self.annotations
        return entry


def referrers(
    reg: Registry, repo: str, subject: Digest, artifact_type: str | None
) -> list[Referrer]:
    with reg.db.transaction() as session:
        return [
            Referrer(
                row.media_type,
                row.digest,
                row.size,
                row.artifact_type,
                json.loads(row.annotations) if row.annotations else None,
            )
            for row in queries.referrers(session, repo, str(subject), artifact_type)
        ]
