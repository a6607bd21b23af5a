"""Blob uploads: POST to start (or mount, or upload whole), PATCH, PUT, GET, DELETE."""

from __future__ import annotations

import contextlib

from flask import Blueprint, request

from app.errors import BlobUploadInvalid, RangeInvalid, RegistryError
from app.registry import uploads
from app.registry.references import Digest
from app.views.base import Response, access, error_response, registry
from app.views.http import content_length, content_range, has_body
from app.views.origin import request_info

bp = Blueprint("uploads", __name__)


def _where(name: str, state: uploads.UploadState) -> dict[str, str]:
    """Where the upload stands: what a client needs to send the next chunk."""
    return {
        "Location": f"/v2/{name}/blobs/uploads/{state.id}",
        "Range": f"0-{max(state.size - 1, 0)}",
        "Docker-Upload-UUID": state.id,
    }


def _progress(name: str, state: uploads.UploadState, status: int) -> Response:
    return Response(status=status, headers={**_where(name, state), "Content-Length": "0"})


@bp.errorhandler(RangeInvalid)
def _out_of_order(error: RangeInvalid) -> Response:
    """A chunk out of order (or one the upload cannot take): 416 with the upload's real
    position, so the client can resume."""
    args = request.view_args or {}
    if "upload_id" in args:
        with contextlib.suppress(RegistryError):  # gone meanwhile: no position to give
            state = uploads.status(registry(), args["name"], args["upload_id"])
            error.headers.update(_where(args["name"], state))
    return error_response(error)


def _created(name: str, digest: str) -> Response:
    return Response(
        status=201,
        headers={
            "Location": f"/v2/{name}/blobs/{digest}",
            "Docker-Content-Digest": digest,
            "Content-Length": "0",
        },
    )


@bp.post("/v2/<repo:name>/blobs/uploads/")
def start_upload(name: str) -> Response:
    mount, source = request.args.get("mount"), request.args.get("from")
    if source and not access().may_pull(source):
        source = None  # mount only from where the caller may pull; else an ordinary upload
    # Validated before anything is created: a bad digest leaves no session behind.
    digest = Digest.parse(request.args["digest"]) if "digest" in request.args else None
    begun = uploads.begin(
        registry(),
        name,
        mount=Digest.parse(mount) if mount and source else None,
        source=source,
        digest=digest,
        body=request.stream,
        content_length=content_length(request),
        origin=request_info(),
    )
    if begun.blob is not None:
        return _created(name, begun.blob)
    assert begun.session is not None
    return _progress(name, begun.session, 202)


@bp.get("/v2/<repo:name>/blobs/uploads/<upload_id>")
def upload_status(name: str, upload_id: str) -> Response:
    return _progress(name, uploads.status(registry(), name, upload_id), 204)


@bp.patch("/v2/<repo:name>/blobs/uploads/<upload_id>")
def append_chunk(name: str, upload_id: str) -> Response:
    reg = registry()
    content_type = request.headers.get("Content-Type", "application/octet-stream")
    if content_type.split(";")[0].strip() not in ("application/octet-stream", ""):
        raise BlobUploadInvalid(
            {"Content-Type": content_type}, message="chunks must be application/octet-stream"
        )
    span, length = content_range(request), content_length(request)
    state = uploads.append(reg, name, upload_id, request.stream, span, length)
    return _progress(name, state, 202)


@bp.put("/v2/<repo:name>/blobs/uploads/<upload_id>")
def complete_upload(name: str, upload_id: str) -> Response:
    reg = registry()
    digest = Digest.parse(request.args.get("digest", ""))
    body = request.stream if has_body(request) else None
    span, length = content_range(request), content_length(request)
    uploads.complete(reg, name, upload_id, digest, body, span, length, request_info())
    return _created(name, str(digest))


@bp.delete("/v2/<repo:name>/blobs/uploads/<upload_id>")
def cancel_upload(name: str, upload_id: str) -> Response:
    uploads.cancel(registry(), name, upload_id)
    return Response(status=204, headers={"Content-Length": "0"})
