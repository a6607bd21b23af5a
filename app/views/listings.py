"""GET /v2/<name>/tags/list, /v2/_catalog and /v2/<name>/referrers/<digest>."""

from __future__ import annotations

import json

from flask import Blueprint, request

from app.registry import listings
from app.registry.manifests import OCI_INDEX
from app.registry.references import Digest
from app.views.base import MAX_PAGE, Response, access, page_args, paginated, registry

bp = Blueprint("listings", __name__)


@bp.get("/v2/<repo:name>/tags/list")
def list_tags(name: str) -> Response:
    limit, last = page_args()
    fetch = None if limit is None else limit + 1
    names = listings.tags(registry(), name, last, fetch)
    return paginated(request.path, "tags", names, limit, name=name)


@bp.get("/v2/_catalog")
def catalog() -> Response:
    limit, last = page_args()
    limit = MAX_PAGE if limit is None else limit
    # Only what the caller may pull.
    names = listings.catalog(registry(), last, limit + 1, access().catalog_filter())
    return paginated(request.path, "repositories", names, limit)


@bp.get("/v2/<repo:name>/referrers/<digest>")
def referrers(name: str, digest: str) -> Response:
    artifact_type = request.args.get("artifactType") or None
    found = listings.referrers(registry(), name, Digest.parse(digest), artifact_type)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [referrer.descriptor() for referrer in found],
    }
    response = Response(json.dumps(index), content_type=OCI_INDEX)
    if artifact_type:
        response.headers["OCI-Filters-Applied"] = "artifactType"
    return response
