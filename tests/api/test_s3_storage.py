"""The registry API with its blobs in an S3-compatible store (a local moto server): chunked
uploads through multipart uploads, interrupted chunks, ranged reads, and 307 redirects to
presigned URLs. Runs on SQLite and PostgreSQL like every API test.
"""

from __future__ import annotations

import io
import random
import secrets
from collections.abc import Iterator

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from tests.helpers import RegistryClient, error_codes, sha256
from tests.s3server import S3Server

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.fixture
def prefix() -> str:
    return f"api-{secrets.token_hex(6)}"


def _s3_app(database_url: str, s3_server: S3Server, bucket: str, prefix: str, **extra: object):
    return create_app(
        {
            "database_url": database_url,
            "storage_driver": "s3",
            "s3_bucket": bucket,
            "s3_endpoint_url": s3_server.endpoint_url,
            "s3_access_key": "berth-test",
            "s3_secret_key": "berth-test-secret",
            "s3_prefix": prefix,
            "s3_part_size": 5 * MiB,
            **extra,
        }
    )


@pytest.fixture
def s3_app(database_url: str, s3_server: S3Server, bucket: str, prefix: str) -> Iterator[Flask]:
    app = _s3_app(database_url, s3_server, bucket, prefix)
    yield app
    app.extensions["berth"].db.dispose()


@pytest.fixture
def http(s3_app: Flask) -> FlaskClient:
    return s3_app.test_client()


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _patch(http: FlaskClient, location: str, chunk: bytes, start: int):
    return http.patch(
        location,
        data=chunk,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(chunk) - 1}",
        },
    )


def test_chunked_upload_across_parts_then_ranged_reads(
    http: FlaskClient, s3_server: S3Server, bucket: str, prefix: str
) -> None:
    chunks = [_payload(6 * MiB, 1), _payload(3 * MiB, 2), _payload(4 * MiB + 17, 3)]
    last = _payload(MiB, 4)
    data = b"".join(chunks) + last
    digest = sha256(data)
    location = RegistryClient(http).start_upload("team/big")
    offset = 0
    for chunk in chunks:
        response = _patch(http, location, chunk, offset)
        assert response.status_code == 202, response.get_data(as_text=True)
        offset += len(chunk)
        assert response.headers["Range"] == f"0-{offset - 1}"
        location = response.headers["Location"]
    done = http.put(
        f"{location}?digest={digest}",
        data=last,
        headers={"Content-Range": f"{offset}-{len(data) - 1}"},
    )
    assert done.status_code == 201, done.get_data(as_text=True)

    url = f"/v2/team/big/blobs/{digest}"
    head = http.head(url)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(data))
    got = http.get(url)
    assert got.status_code == 200
    assert sha256(got.get_data()) == digest
    start, end = 5 * MiB - 10, 11 * MiB + 10  # spans two part boundaries
    ranged = http.get(url, headers={"Range": f"bytes={start}-{end}"})
    assert ranged.status_code == 206
    assert ranged.get_data() == data[start : end + 1]

    # Only the blob is left in the bucket: no upload object, no open multipart upload.
    keys = s3_server.keys(bucket, prefix + "/")
    assert keys == [f"{prefix}/blobs/sha256/{digest[7:9]}/{digest[7:]}/data"]
    assert not [k for k in s3_server.open_multipart_uploads(bucket) if k.startswith(prefix)]


class _BrokenBody(io.RawIOBase):
    """A request body whose client goes away after `good` bytes."""

    def __init__(self, good: bytes) -> None:
        self._good = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self._good.read(len(buffer))
        if not data:
            raise ConnectionResetError("client went away")
        buffer[: len(data)] = data
        return len(data)


def test_interrupted_chunk_leaves_the_upload_where_it_was(
    http: FlaskClient, s3_server: S3Server, bucket: str, prefix: str
) -> None:
    first, second = _payload(6 * MiB, 5), _payload(7 * MiB, 6)
    location = RegistryClient(http).start_upload("team/resume")
    response = _patch(http, location, first, 0)
    assert response.status_code == 202
    location = response.headers["Location"]

    broken = http.patch(
        location,
        headers={"Content-Type": "application/octet-stream"},
        # 7 MiB announced, a whole part's worth sent, then the connection drops.
        environ_overrides={
            "wsgi.input": _BrokenBody(second[: 6 * MiB]),
            "CONTENT_LENGTH": str(len(second)),
        },
    )
    assert broken.status_code == 400
    assert error_codes(broken) == ["BLOB_UPLOAD_INVALID"]
    status = http.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{len(first) - 1}"
    # The part that did go up belonged to a multipart upload that was aborted.
    assert not [k for k in s3_server.open_multipart_uploads(bucket) if k.startswith(prefix)]

    response = _patch(http, location, second, len(first))
    assert response.status_code == 202, response.get_data(as_text=True)
    data = first + second
    done = http.put(f"{response.headers['Location']}?digest={sha256(data)}")
    assert done.status_code == 201, done.get_data(as_text=True)
    assert http.get(f"/v2/team/resume/blobs/{sha256(data)}").get_data() == data


def test_wrong_digest_leaves_nothing_in_the_bucket(
    http: FlaskClient, s3_server: S3Server, bucket: str, prefix: str
) -> None:
    data = _payload(6 * MiB, 7)
    location = RegistryClient(http).start_upload("team/wrong")
    response = _patch(http, location, data, 0)
    assert response.status_code == 202
    done = http.put(f"{response.headers['Location']}?digest={sha256(b'other')}")
    assert done.status_code == 400
    assert error_codes(done) == ["DIGEST_INVALID"]
    assert http.head(f"/v2/team/wrong/blobs/{sha256(data)}").status_code == 404
    assert s3_server.keys(bucket, prefix + "/") == []


def test_blob_get_redirects_to_a_presigned_url(
    database_url: str, s3_server: S3Server, bucket: str, prefix: str
) -> None:
    app = _s3_app(database_url, s3_server, bucket, prefix, s3_redirect=True)
    try:
        http = app.test_client()
        data = _payload(2 * MiB, 8)
        digest = RegistryClient(http).push_blob("team/redirect", data)
        url = f"/v2/team/redirect/blobs/{digest}"

        got = http.get(url)
        assert got.status_code == 307
        location = got.headers["Location"]
        assert location.startswith(f"{s3_server.endpoint_url}/{bucket}/{prefix}/blobs/sha256/")
        assert "X-Amz-Signature=" in location
        assert got.get_data() == b""
        fetched = requests.get(location, timeout=30)
        assert fetched.status_code == 200
        assert fetched.content == data

        # A 307 keeps the Range header: the store answers the range itself.
        ranged = http.get(url, headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 307
        part = requests.get(
            ranged.headers["Location"], headers={"Range": "bytes=10-19"}, timeout=30
        )
        assert part.status_code == 206
        assert part.content == data[10:20]

        # HEAD still answers itself, with the real size and digest.
        head = http.head(url)
        assert head.status_code == 200
        assert "Location" not in head.headers
        assert head.headers["Content-Length"] == str(len(data))
        assert head.headers["Docker-Content-Digest"] == digest

        # Unknown or unlinked blobs are 404s, never redirects.
        missing = http.get(f"/v2/team/redirect/blobs/{sha256(b'missing')}")
        assert missing.status_code == 404
        assert error_codes(missing) == ["BLOB_UNKNOWN"]
        other_repo = http.get(f"/v2/team/other/blobs/{digest}")
        assert other_repo.status_code == 404
    finally:
        app.extensions["berth"].db.dispose()
