"""Tag lists, the catalog and referrers: read-only views over the metadata index."""

from __future__ import annotations

from collections.abc import Callable

from app.errors import NameUnknown
from app.registry import queries
from app.registry.context import Context
from app.registry.queries import Referrer
from app.registry.references import Digest

CATALOG_SCAN = 500  # repositories read per query while filtering the catalog

__all__ = ["Referrer", "catalog", "referrers", "tags"]


def tags(reg: Context, repo: str, last: str | None, limit: int | None) -> list[str]:
    names = queries.tag_page(reg.db, repo, last, limit)
    # An empty page: past the last tag, no tags, or no such repository.
    if not names and not queries.repository_exists(reg.db, repo):
        raise NameUnknown({"name": repo})
    return names


def catalog(
    reg: Context, last: str | None, limit: int, visible: Callable[[str], bool] | None = None
) -> list[str]:
    """Up to `limit` repository names after `last`; with `visible`, only those it admits
    (what the caller may pull), read page by page so that pagination still works."""
    if visible is None:
        return queries.repository_names(reg.db, last, limit)
    found: list[str] = []
    cursor = last
    while len(found) < limit:
        page = queries.repository_names(reg.db, cursor, CATALOG_SCAN)
        found += [name for name in page if visible(name)]
        if len(page) < CATALOG_SCAN:
            break
        cursor = page[-1]
    return found[:limit]


def referrers(
    reg: Context, repo: str, subject: Digest, artifact_type: str | None
) -> list[Referrer]:
    with reg.db.transaction() as session:
        return queries.referrers(session, repo, str(subject), artifact_type)
