"""GET, HEAD and DELETE /v2/<name>/blobs/<digest>."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from flask import Blueprint, request

from app.mirror import pull
from app.registry import blobs
from app.registry.references import Digest
from app.views.base import Response, registry
from app.views.http import byte_range
from app.views.origin import request_info

bp = Blueprint("blobs", __name__)


# Bytes go out in reads of 256 KiB, not through sendfile: over loopback (and so, most
# likely, container bridges) a 64 MiB GET ran ~20 % slower with sendfile, whose receiver
# copies from page-cache pages cold in the CPU's cache (docs/performance.md). A piece this
# size stays in cache between the read and the send.
def _limited(stream: BinaryIO, length: int, chunk: int = 256 * 1024) -> Iterator[bytes]:
    with stream:
        while length > 0:
            data = stream.read(min(chunk, length))
            if not data:
                return
            length -= len(data)
            yield data


# The front end applies the client's Range to the file and sets these itself.
_OFFLOAD_DROPS = ("Content-Length", "Content-Range", "Accept-Ranges")


@bp.route("/v2/<repo:name>/blobs/<digest>", methods=["GET", "HEAD"])
def get_blob(name: str, digest: str) -> Response:
    # Through the pull-through cache when the name is mirrored (containerd names it by ?ns=).
    found = pull.blob(registry(), name, Digest.parse(digest), request.args.get("ns"))
    headers = {
        "Docker-Content-Digest": str(found.digest),
        "ETag": f'"{found.digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }
    span = byte_range(request.range, found.size)
    start, end = span or (0, found.size - 1)
    length = end - start + 1 if found.size else 0
    headers["Content-Length"] = str(length)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{found.size}"
    if request.method == "HEAD":
        return Response(status=status, headers=headers, content_type="application/octet-stream")
    delivery = found.deliver(start, pulled_by=request_info)
    if delivery.offload is not None:
        # Always an empty 200: the front end answers the Range; Digest and ETag pass on.
        kept = {k: v for k, v in headers.items() if k not in _OFFLOAD_DROPS}
        headers = {**kept, **delivery.offload, "Content-Length": "0"}
        return Response(status=200, headers=headers, content_type="application/octet-stream")
    if delivery.redirect is not None:  # the object store sends the bytes
        return Response(status=307, headers={"Location": delivery.redirect, "Content-Length": "0"})
    assert delivery.stream is not None
    return Response(
        _limited(delivery.stream, length),
        status=status,
        headers=headers,
        content_type="application/octet-stream",
        direct_passthrough=True,
    )


@bp.delete("/v2/<repo:name>/blobs/<digest>")
def delete_blob(name: str, digest: str) -> Response:
    blobs.delete(registry(), name, Digest.parse(digest), request_info())
    return Response(status=202, headers={"Content-Length": "0"})
