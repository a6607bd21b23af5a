"""GET, HEAD and DELETE /v2/<name>/blobs/<digest>."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from flask import Blueprint, request

from app.registry import blobs, events
from app.registry.references import Digest
from app.views.base import Response, registry
from app.views.http import byte_range
from app.views.offload import offloaded
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


@bp.route("/v2/<repo:name>/blobs/<digest>", methods=["GET", "HEAD"])
def get_blob(name: str, digest: str) -> Response:
    reg, parsed = registry(), Digest.parse(digest)
    info = blobs.stat(reg, name, parsed)
    headers = {
        "Docker-Content-Digest": info.digest,
        "ETag": f'"{info.digest}"',
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
    }
    span = byte_range(request.headers.get("Range"), info.size)
    start, end = span or (0, info.size - 1)
    length = end - start + 1 if info.size else 0
    headers["Content-Length"] = str(length)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    if request.method == "HEAD":
        return Response(status=status, headers=headers, content_type="application/octet-stream")
    if start == 0:  # a download resumed further on is not another pull
        events.publish(
            reg, lambda: events.blob_event("pull", name, info.digest, info.size, request_info())
        )
    offload = offloaded(reg, parsed, headers)
    if offload is not None:
        return offload
    if (url := blobs.redirect_url(reg, parsed)) is not None:  # the object store sends the bytes
        return Response(status=307, headers={"Location": url, "Content-Length": "0"})
    stream = blobs.open_blob(reg, parsed, start)
    return Response(
        _limited(stream, length),
        status=status,
        headers=headers,
        content_type="application/octet-stream",
        direct_passthrough=True,
    )


@bp.delete("/v2/<repo:name>/blobs/<digest>")
def delete_blob(name: str, digest: str) -> Response:
    blobs.delete(registry(), name, Digest.parse(digest), request_info())
    return Response(status=202, headers={"Content-Length": "0"})
