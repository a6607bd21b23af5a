"""GET, HEAD, PUT and DELETE /v2/<name>/manifests/<reference> (a tag or a digest)."""

from __future__ import annotations

from flask import Blueprint, request

from app.errors import PayloadTooLarge
from app.registry import events, manifests
from app.registry.references import is_digest
from app.views.base import Response, registry
from app.views.http import content_length
from app.views.origin import request_info

bp = Blueprint("manifests", __name__)


@bp.route("/v2/<repo:name>/manifests/<reference>", methods=["GET", "HEAD"])
def get_manifest(name: str, reference: str) -> Response:
    stored = manifests.get(registry(), name, reference)
    etag = f'"{stored.digest}"'
    headers = {
        "Docker-Content-Digest": stored.digest,
        "ETag": etag,
        "Content-Length": str(len(stored.payload)),
    }
    if_none_match = request.headers.get("If-None-Match", "")
    if etag in if_none_match or stored.digest in if_none_match.split(","):
        del headers["Content-Length"]
        return Response(status=304, headers=headers)
    if request.method == "GET":
        tag = None if is_digest(reference) else reference
        events.publish(
            registry(),
            lambda: events.manifest_event(
                "pull", name, stored.digest, stored.media_type, stored.payload, tag, request_info()
            ),
        )
    # Werkzeug sends no body for HEAD but keeps the Content-Length of the real payload.
    return Response(stored.payload, headers=headers, content_type=stored.media_type)


@bp.put("/v2/<repo:name>/manifests/<reference>")
def put_manifest(name: str, reference: str) -> Response:
    reg = registry()
    limit = reg.settings.max_manifest_size
    length = content_length(request)
    if length is not None and length > limit:
        raise PayloadTooLarge({"limit": limit}, message="manifest too large")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge({"limit": limit}, message="manifest too large")
    content_type = request.headers.get("Content-Type")
    stored = manifests.put(reg, name, reference, body, content_type, request_info())
    headers = {
        "Location": f"/v2/{name}/manifests/{stored.digest}",
        "Docker-Content-Digest": stored.digest,
        "Content-Length": "0",
    }
    if stored.subject:
        headers["OCI-Subject"] = stored.subject
    return Response(status=201, headers=headers)


@bp.delete("/v2/<repo:name>/manifests/<reference>")
def delete_manifest(name: str, reference: str) -> Response:
    manifests.delete_reference(registry(), name, reference, request_info())
    return Response(status=202, headers={"Content-Length": "0"})
