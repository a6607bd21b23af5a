"""The blob GET response that hands the file to the front end (see app/registry/offload.py)."""

from __future__ import annotations

from app.registry.context import Registry
from app.registry.offload import offload_headers
from app.registry.references import Digest
from app.views.base import Response


def offloaded(reg: Registry, digest: Digest, headers: dict[str, str]) -> Response | None:
    """An empty 200 carrying X-Accel-Redirect / X-Sendfile, or None to stream the bytes.

    Always 200 and never Content-Range: the front end applies the client's Range header to
    the file. Content-Length is that of this (empty) response; the front end sets the file's.
    Digest, ETag and Content-Type stay, for the front end to pass on."""
    extra = offload_headers(reg, digest)
    if extra is None:
        return None
    dropped = ("Content-Length", "Content-Range", "Accept-Ranges")  # the front end sets these
    kept = {k: v for k, v in headers.items() if k not in dropped}
    return Response(
        status=200,
        headers={**kept, **extra, "Content-Length": "0"},
        content_type="application/octet-stream",
    )
