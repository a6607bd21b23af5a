"""Blob GET/HEAD/DELETE, ranges, repository scoping and cross-repository mounts."""

from __future__ import annotations

import hashlib
import os

import pytest
from flask.testing import FlaskClient

from tests.helpers import RegistryClient, error_codes, sha256


def test_blob_round_trip_with_headers(registry: RegistryClient) -> None:
    data = os.urandom(70_000)
    digest = registry.push_blob("team/app", data)
    response = registry.http.get(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 200
    assert response.data == data
    assert response.headers["Content-Length"] == str(len(data))
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.headers["ETag"] == f'"{digest}"'


def test_head_reports_the_real_length_without_a_body(registry: RegistryClient) -> None:
    data = os.urandom(5000)
    digest = registry.push_blob("team/app", data)
    response = registry.http.head(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == "5000"
    assert response.headers["Docker-Content-Digest"] == digest
    assert response.data == b""


def test_empty_blob(registry: RegistryClient) -> None:
    digest = registry.push_blob("team/app", b"")
    response = registry.http.get(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 200
    assert response.data == b""
    assert response.headers["Content-Length"] == "0"


@pytest.mark.parametrize("headers", [{}, {"Range": "bytes=1000-"}])
def test_download_streams_in_bounded_pieces(
    registry: RegistryClient, headers: dict[str, str]
) -> None:
    """A worker never holds a whole layer in memory, whole download or resumed one."""
    data = os.urandom(3 * 1024 * 1024 + 7)
    digest = registry.push_blob("team/app", data)
    response = registry.http.get(f"/v2/team/app/blobs/{digest}", headers=headers, buffered=False)
    pieces = list(response.response)
    response.close()
    start = 1000 if headers else 0
    assert b"".join(pieces) == data[start:]
    assert len(pieces) > 1 and max(map(len, pieces)) <= 256 * 1024


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [("bytes=0-9", 0, 9), ("bytes=10-", 10, 99), ("bytes=-5", 95, 99), ("bytes=90-500", 90, 99)],
)
def test_range_requests(registry: RegistryClient, header: str, start: int, end: int) -> None:
    data = os.urandom(100)
    digest = registry.push_blob("team/app", data)
    response = registry.http.get(f"/v2/team/app/blobs/{digest}", headers={"Range": header})
    assert response.status_code == 206
    assert response.data == data[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/100"
    assert response.headers["Content-Length"] == str(end - start + 1)


def test_unsatisfiable_range_is_416(registry: RegistryClient) -> None:
    digest = registry.push_blob("team/app", os.urandom(100))
    response = registry.http.get(f"/v2/team/app/blobs/{digest}", headers={"Range": "bytes=100-200"})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */100"
    assert error_codes(response) == ["RANGE_INVALID"]


def test_blob_is_visible_only_in_repositories_it_is_linked_to(registry: RegistryClient) -> None:
    digest = registry.push_blob("team/app", b"private layer")
    response = registry.http.get(f"/v2/other/app/blobs/{digest}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]


def test_unknown_blob_is_404(client: FlaskClient) -> None:
    response = client.get(f"/v2/team/app/blobs/sha256:{'0' * 64}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UNKNOWN"]


@pytest.mark.parametrize(
    "digest",
    [
        "sha256:abc",
        "sha256:" + "G" * 64,
        "md5:" + "a" * 32,
        "nocolon",
        "sha256:" + "A" * 64,
        "sha256:..",
    ],
)
def test_malformed_digests_are_digest_invalid(client: FlaskClient, digest: str) -> None:
    response = client.get(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/team/app/blobs/sha256:../../../etc/passwd",
        "/v2/team/../../etc/blobs/sha256:" + "a" * 64,
        "/v2/team/app/blobs/uploads/../../../etc",
        "/v2/team/app/manifests/..%2F..%2Fetc",
    ],
)
def test_path_traversal_is_refused(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (400, 404)
    assert response.get_json()["errors"]


def test_sha512_digests_are_accepted(registry: RegistryClient) -> None:
    data = os.urandom(3000)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    response = registry.http.post(f"/v2/team/app/blobs/uploads/?digest={digest}", data=data)
    assert response.status_code == 201
    assert registry.http.get(f"/v2/team/app/blobs/{digest}").data == data


def test_delete_unlinks_the_blob(registry: RegistryClient) -> None:
    digest = registry.push_blob("team/app", b"doomed")
    registry.push_blob("team/other", b"doomed")
    response = registry.http.delete(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 202
    assert registry.http.head(f"/v2/team/app/blobs/{digest}").status_code == 404
    # The same bytes linked elsewhere stay readable there.
    assert registry.http.get(f"/v2/team/other/blobs/{digest}").data == b"doomed"
    assert registry.http.delete(f"/v2/team/app/blobs/{digest}").status_code == 404


@pytest.mark.parametrize("settings_overrides", [{"delete_enabled": False}])
def test_delete_disabled_is_unsupported(registry: RegistryClient) -> None:
    digest = registry.push_blob("team/app", b"kept")
    response = registry.http.delete(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 405
    assert error_codes(response) == ["UNSUPPORTED"]
    assert registry.http.get(f"/v2/team/app/blobs/{digest}").data == b"kept"


def test_cross_repository_mount(registry: RegistryClient) -> None:
    digest = registry.push_blob("team/base", b"shared layer")
    response = registry.http.post(f"/v2/team/app/blobs/uploads/?mount={digest}&from=team/base")
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/team/app/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    assert registry.http.get(f"/v2/team/app/blobs/{digest}").data == b"shared layer"


@pytest.mark.parametrize("source", ["team/empty", "Not/Valid", ""])
def test_mount_falls_back_to_an_upload_session(registry: RegistryClient, source: str) -> None:
    registry.push_blob("team/empty", b"something else")
    digest = sha256(b"not there")
    response = registry.http.post(f"/v2/team/app/blobs/uploads/?mount={digest}&from={source}")
    assert response.status_code == 202
    assert response.headers["Location"].startswith("/v2/team/app/blobs/uploads/")
    assert response.headers["Range"] == "0-0"


def test_mount_with_malformed_digest_is_digest_invalid(client: FlaskClient) -> None:
    response = client.post("/v2/team/app/blobs/uploads/?mount=sha256:nope&from=team/base")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
