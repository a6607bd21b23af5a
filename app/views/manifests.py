"""GET, HEAD, PUT and DELETE /v2/<name>/manifests/<reference> (a tag or a digest)."""

from __future__ import annotations

from flask import Blueprint, request

from app.errors import ManifestInvalid, PayloadTooLarge
from app.mirror import pull
from app.registry import manifests
from app.views.base import Response, registry
from app.views.http import content_length
from app.views.origin import request_info

bp = Blueprint("manifests", __name__)


@bp.route("/v2/<repo:name>/manifests/<reference>", methods=["GET", "HEAD"])
def get_manifest(name: str, reference: str) -> Response:
    client_has = request.if_none_match.contains_weak  # a digest, quoted or not, or "*"
    pulled_by = request_info if request.method == "GET" else None
    ns = request.args.get("ns")  # containerd's mirror requests name the upstream so
    served = pull.manifest(registry(), name, reference, ns, pulled_by, client_has)
    stored = served.manifest
    headers = {"Docker-Content-Digest": stored.digest, "ETag": f'"{stored.digest}"'}
    if served.warning:  # a cached tag its upstream could not confirm
        headers["Warning"] = served.warning
    if client_has(stored.digest):
        return Response(status=304, headers=headers)
    headers["Content-Length"] = str(len(stored.payload))
    # Werkzeug sends no body for HEAD but keeps the Content-Length of the real payload.
    return Response(stored.payload, headers=headers, content_type=stored.media_type)


@bp.put("/v2/<repo:name>/manifests/<reference>")
def put_manifest(name: str, reference: str) -> Response:
    reg = registry()
    limit = reg.settings.max_manifest_size
    length = content_length(request)
    if length is not None and length > limit:
        raise PayloadTooLarge({"limit": limit}, message="manifest too large")
    try:
        body = request.stream.read(limit + 1)
    except TimeoutError as exc:  # the server's request_body_timeout
        raise ManifestInvalid(status=408, message="the manifest stopped arriving") from exc
    if len(body) > limit:
        raise PayloadTooLarge({"limit": limit}, message="manifest too large")
    content_type = request.headers.get("Content-Type")
    tags = request.args.getlist("tag")  # OCI: tags for a push by digest
    stored = manifests.put(reg, name, reference, body, content_type, request_info(), tags)
    response = Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/manifests/{stored.digest}",
            "Docker-Content-Digest": stored.digest,
            "Content-Length": "0",
        },
    )
    if stored.subject:
        response.headers["OCI-Subject"] = stored.subject
    if tags:
        for tag in stored.tags:
            response.headers.add("OCI-Tag", tag)
    return response


@bp.delete("/v2/<repo:name>/manifests/<reference>")
def delete_manifest(name: str, reference: str) -> Response:
    manifests.delete_reference(registry(), name, reference, request_info())
    return Response(status=202, headers={"Content-Length": "0"})
