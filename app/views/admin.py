"""The administration API under /api/v1 (access control requires an administrator there)."""

from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint

from app.errors import NameInvalid
from app.registry import repositories
from app.views.base import Response, json_response, registry
from app.views.origin import request_info

bp = Blueprint("admin", __name__)


@bp.delete("/api/v1/repositories/<repo:name>")
def delete_repository(name: str) -> Response:
    """202: the repository is gone and the blobs only it used are freed; the body counts."""
    deleted = repositories.delete(registry(), name, origin=request_info())
    return json_response(asdict(deleted), 202)


@bp.delete("/api/v1/repositories/<path:name>")
def delete_malformed(name: str) -> Response:
    # Only reached when the name does not match the repository grammar.
    raise NameInvalid({"name": name})
