"""Small parsers for the request headers the registry endpoints read."""

from __future__ import annotations

import re

from flask import Request

from app.errors import RangeInvalid, SizeInvalid

_CONTENT_RANGE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def content_length(request: Request) -> int | None:
    raw = request.headers.get("Content-Length")
    if raw is None:
        return None
    if not raw.strip().isdigit():
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


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (start, end inclusive) of a single `Range: bytes=` request, None to send it all.

    Unsatisfiable ranges raise RANGE_INVALID; syntax we do not serve (several ranges)
    is ignored, as RFC 9110 allows."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = int(first)
        end = min(int(last), size - 1) if last else size - 1
        if last and int(last) < start:
            return None
    else:
        start, end = max(size - int(last), 0), size - 1
    if start >= size or end < start:
        raise RangeInvalid(
            {"range": header, "size": size}, headers={"Content-Range": f"bytes */{size}"}
        )
    return start, end
