"""Small parsers for the request headers the registry endpoints read."""

from __future__ import annotations

import re

from flask import Request
from werkzeug.datastructures import Range

from app.errors import RangeInvalid, SizeInvalid

_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


def content_length(request: Request) -> int | None:
    raw = request.headers.get("Content-Length")
    if raw is None:
        return None
    if not (raw.strip().isascii() and raw.strip().isdigit()):
        raise SizeInvalid({"Content-Length": raw}, message="invalid Content-Length")
    return int(raw)


def has_body(request: Request) -> bool:
    length = content_length(request)
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return chunked or bool(length)


def content_range(request: Request) -> tuple[int, int] | None:
    """The inclusive `start-end` of a chunk upload; no header means 'append the body'."""
    raw = request.headers.get("Content-Range")
    if raw is None:
        return None
    match = _CONTENT_RANGE.match(raw.strip())
    if not match:
        raise RangeInvalid({"Content-Range": raw}, message="malformed Content-Range")
    return int(match.group(1)), int(match.group(2))


def byte_range(requested: Range | None, size: int) -> tuple[int, int] | None:
    """The (start, end inclusive) of a single byte range (werkzeug parsed the header), None
    to send it all.

    Unsatisfiable ranges raise RANGE_INVALID; what we do not serve (several ranges, other
    units) is ignored, as RFC 9110 allows. A suffix longer than the blob is the whole blob
    (RFC 9110 14.1.2), which werkzeug's range_for_length would refuse."""
    if requested is None or requested.units != "bytes" or len(requested.ranges) != 1:
        return None
    first, stop = requested.ranges[0]
    if first < 0:  # a suffix: the last -first bytes
        start, end = max(size + first, 0), size - 1
    else:
        start, end = first, size - 1 if stop is None else min(stop - 1, size - 1)
    if start >= size or end < start:
        header = requested.to_header()
        raise RangeInvalid(
            {"range": header, "size": size}, headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end
