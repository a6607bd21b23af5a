"""Blob uploads: POST to start (or mount, or upload whole), PATCH, PUT, GET, DELETE."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask import Blueprint, request

from app.errors import BlobUploadInvalid, RangeInvalid
from app.registry import blobs, uploads
from app.registry.references import Digest
from app.views.base import Response, access, registry
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


@contextmanager
def _resumable(name: str, upload_id: str) -> Iterator[None]:
    """A chunk out of order gets 416 with the upload's real position, so the client can resume."""
    try:
        yield
    except RangeInvalid as error:
        error.headers.update(_where(name, uploads.status(registry(), name, upload_id)))
        raise


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
    reg = registry()
    mount, source = request.args.get("mount"), request.args.get("from")
    if source and not access().may_pull(source):
        source = None  # mount only from where the caller may pull; else an ordinary upload
    if mount and source:
        digest = Digest.parse(mount)
        if blobs.mount(reg, name, digest, source, request_info()):
            return _created(name, str(digest))
    state = uploads.start(reg, name)
    if "digest" in request.args:
        # Monolithic upload: the whole blob is this request's body.
        digest = Digest.parse(request.args["digest"])
        length = content_length(request)
        uploads.complete(reg, name, state.id, digest, request.stream, None, length, request_info())
        return _created(name, str(digest))
    return _progress(name, state, 202)


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
    with _resumable(name, upload_id):
        span = content_range(request)
        state = uploads.append(reg, name, upload_id, request.stream, span, content_length(request))
    return _progress(name, state, 202)


@bp.put("/v2/<repo:name>/blobs/uploads/<upload_id>")
def complete_upload(name: str, upload_id: str) -> Response:
    reg = registry()
    digest = Digest.parse(request.args.get("digest", ""))
    body = request.stream if has_body(request) else None
    with _resumable(name, upload_id):
        span = content_range(request)
        length = content_length(request)
        uploads.complete(reg, name, upload_id, digest, body, span, length, request_info())
    return _created(name, str(digest))


@bp.delete("/v2/<repo:name>/blobs/uploads/<upload_id>")
def cancel_upload(name: str, upload_id: str) -> Response:
    uploads.cancel(registry(), name, upload_id)
    return Response(status=204, headers={"Content-Length": "0"})
