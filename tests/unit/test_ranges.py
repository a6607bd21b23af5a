"""The request headers of blob GETs and chunked uploads: Range (206 / 416 / ignored),
Content-Range (which chunk is this) and Content-Length."""

from __future__ import annotations

import pytest
from flask import Request
from werkzeug.http import parse_range_header
from werkzeug.test import EnvironBuilder

from app.errors import RangeInvalid, SizeInvalid
from app.views.http import byte_range, content_length, content_range, has_body


def served(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive (start, end) a blob GET with this Range header serves; None: all of it."""
    return byte_range(parse_range_header(header), size)


def unsatisfiable(header: str, size: int) -> RangeInvalid:
    with pytest.raises(RangeInvalid) as info:
        served(header, size)
    return info.value


# --------------------------------------------------------------------------- Range


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("bytes=0-0", 100, (0, 0)),  # the first byte alone
        ("bytes=99-99", 100, (99, 99)),  # the last byte alone
        ("bytes=10-", 100, (10, 99)),
        ("bytes=0-", 100, (0, 99)),
        ("bytes=-5", 100, (95, 99)),  # the last five bytes
        ("bytes=-1", 1, (0, 0)),
        ("bytes=-500", 100, (0, 99)),  # a suffix longer than the blob: the whole blob
        ("bytes=-100", 100, (0, 99)),
        ("bytes=50-999", 100, (50, 99)),  # an end past the size is clipped
        ("bytes=0-100", 100, (0, 99)),
        ("bytes= 2-3", 10, (2, 3)),
    ],
)
def test_single_range_is_served(header: str, size: int, expected: tuple[int, int]) -> None:
    assert served(header, size) == expected


@pytest.mark.parametrize(
    "header",
    [
        None,  # no Range header
        "bytes=0-9,20-29",  # several ranges: we may send it all (RFC 9110 14.2)
        "bytes=0-1, -1",
        "items=0-9",  # other units
        "bytes=abc",  # malformed
        "bytes=9-0",
        "bytes=",
        "bytes=-0",
        "0-9",
        "bytes 0-9",
    ],
)
def test_ranges_not_served_mean_the_whole_blob(header: str | None) -> None:
    assert served(header, 100) is None


@pytest.mark.parametrize(
    ("header", "size"),
    [
        ("bytes=100-", 100),  # starts at the end
        ("bytes=100-200", 100),
        ("bytes=500-600", 100),
        ("bytes=0-", 0),  # nothing in an empty blob is satisfiable
        ("bytes=0-0", 0),
        ("bytes=-5", 0),  # nor a suffix of it (RFC 9110 14.1.2)
    ],
)
def test_unsatisfiable_range_is_416(header: str, size: int) -> None:
    error = unsatisfiable(header, size)
    assert error.status == 416
    # What the 416 must carry so a client learns the real size.
    assert error.headers == {"Content-Range": f"bytes */{size}"}
    assert error.detail["size"] == size


# --------------------------------------------------------------------------- Content-Range


def request(**headers: str) -> Request:
    return Request(EnvironBuilder(method="PATCH", headers=list(headers.items())).get_environ())


def with_raw(key: str, value: str) -> Request:
    """A request with a CGI variable set as a WSGI server would, bypassing EnvironBuilder."""
    environ = EnvironBuilder(method="PATCH").get_environ()
    environ[key] = value
    return Request(environ)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0-9", (0, 9)),  # what distribution's clients send: inclusive, no unit
        ("100-199", (100, 199)),
        ("bytes 0-9", (0, 9)),
        ("bytes=0-9", (0, 9)),
        ("0-9/10", (0, 9)),
        ("bytes 0-9/*", (0, 9)),
        (" 5-6 ", (5, 6)),
    ],
)
def test_content_range_of_a_chunk(header: str, expected: tuple[int, int]) -> None:
    assert content_range(request(**{"Content-Range": header})) == expected


def test_no_content_range_means_append() -> None:
    assert content_range(request()) is None


@pytest.mark.parametrize(
    "header", ["", "abc", "0-", "-9", "0-9-10", "bytes 0-9/x", "items 0-9", "0 - 9", "1e3-2e3"]
)
def test_malformed_content_range_is_refused(header: str) -> None:
    with pytest.raises(RangeInvalid) as info:
        content_range(request(**{"Content-Range": header}))
    assert info.value.status == 416


# --------------------------------------------------------------------------- Content-Length


def test_content_length() -> None:
    assert content_length(with_raw("CONTENT_LENGTH", "42")) == 42
    assert content_length(with_raw("CONTENT_LENGTH", "0")) == 0
    assert content_length(request()) is None


@pytest.mark.parametrize("raw", ["abc", "-1", "1.5", "", "0x10", "1 2"])
def test_non_numeric_content_length_is_size_invalid(raw: str) -> None:
    with pytest.raises(SizeInvalid) as info:
        content_length(with_raw("CONTENT_LENGTH", raw))
    assert info.value.status == 400


@pytest.mark.parametrize("raw", ["²", "1²"])
def test_unicode_digit_content_length_is_size_invalid(raw: str) -> None:
    with pytest.raises(SizeInvalid):
        content_length(with_raw("CONTENT_LENGTH", raw))


def test_has_body() -> None:
    assert has_body(with_raw("CONTENT_LENGTH", "3"))
    assert not has_body(with_raw("CONTENT_LENGTH", "0"))
    assert not has_body(request())
    # Docker streams a chunked PATCH with no Content-Length at all.
    assert has_body(request(**{"Transfer-Encoding": "chunked"}))
