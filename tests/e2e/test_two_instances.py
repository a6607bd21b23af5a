"""Two `berth serve` instances behind one load balancer: one PostgreSQL database, one storage
root. Any instance must be able to continue (and finish) an upload another one began, and
serve what another one stored, because a load balancer sends each request anywhere.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.e2e.clients import ClientSandbox, require_tool, skopeo_copy
from tests.e2e.conftest import BerthServer, StartServer
from tests.e2e.ocilayout import build_oci_layout, layout_differences, read_layout

pytestmark = pytest.mark.postgres

HTTP_TIMEOUT = 30  # seconds, per request
OCTET = {"Content-Type": "application/octet-stream"}


@dataclass(frozen=True)
class Pair:
    a: BerthServer
    b: BerthServer


@pytest.fixture
def pair(pg_database: str, berth_server_factory: StartServer, tmp_path: Path) -> Pair:
    # pg_database comes first so that it is dropped only after both servers have stopped.
    storage = tmp_path / "shared-storage"
    # One after the other: the first applies the migrations, the second finds them applied.
    a = berth_server_factory(database_url=pg_database, storage_root=storage, name="a")
    b = berth_server_factory(database_url=pg_database, storage_root=storage, name="b")
    return Pair(a, b)


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _at(server: BerthServer, location: str) -> str:
    """The upload URL on `server`, whichever instance handed out `location` (relative or
    absolute): a load balancer would send the next request anywhere."""
    parts = urlsplit(location)
    return f"{server.url}{parts.path}" + (f"?{parts.query}" if parts.query else "")


def _with_digest(url: str, digest: str) -> str:
    return url + ("&" if "?" in url else "?") + "digest=" + digest


def _error_codes(response: requests.Response) -> list[str]:
    return [error["code"] for error in response.json()["errors"]]


def _start_upload(server: BerthServer, repo: str) -> requests.Response:
    response = requests.post(f"{server.url}/v2/{repo}/blobs/uploads/", timeout=HTTP_TIMEOUT)
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == "0-0"
    assert response.headers["Docker-Upload-UUID"]
    return response


def _patch(server: BerthServer, location: str, chunk: bytes, start: int) -> requests.Response:
    return requests.patch(
        _at(server, location),
        data=chunk,
        headers={**OCTET, "Content-Range": f"{start}-{start + len(chunk) - 1}"},
        timeout=HTTP_TIMEOUT,
    )


def _assert_blob_everywhere(servers: list[BerthServer], repo: str, data: bytes) -> None:
    digest = _digest(data)
    for server in servers:
        url = f"{server.url}/v2/{repo}/blobs/{digest}"
        head = requests.head(url, timeout=HTTP_TIMEOUT)
        assert head.status_code == 200, server.host
        assert head.headers["Content-Length"] == str(len(data)), server.host
        got = requests.get(url, timeout=HTTP_TIMEOUT)
        assert got.status_code == 200, server.host
        assert got.headers["Docker-Content-Digest"] == digest, server.host
        assert got.content == data, f"{server.host} served different bytes"


@pytest.mark.parametrize("order", ["start-on-a", "start-on-b"])
def test_chunked_upload_hops_between_instances(pair: Pair, order: str) -> None:
    first, second = (pair.a, pair.b) if order == "start-on-a" else (pair.b, pair.a)
    repo = "shared/chunked"
    chunks = [_payload(700_000, 1), _payload(1_300_000, 2), _payload(300_000, 3)]
    data = b"".join(chunks)
    digest = _digest(data)

    location = _start_upload(first, repo).headers["Location"]

    response = _patch(first, location, chunks[0], 0)
    assert response.status_code == 202, response.text
    assert response.headers["Range"] == f"0-{len(chunks[0]) - 1}"
    location = response.headers["Location"]

    response = _patch(second, location, chunks[1], len(chunks[0]))
    assert response.status_code == 202, response.text
    received = len(chunks[0]) + len(chunks[1])
    assert response.headers["Range"] == f"0-{received - 1}"
    location = response.headers["Location"]

    # Both instances report where the upload really stands.
    for server in (second, first):
        status = requests.get(_at(server, location), timeout=HTTP_TIMEOUT)
        assert status.status_code == 204, (server.host, status.text)
        assert status.headers["Range"] == f"0-{received - 1}", server.host
        assert urlsplit(status.headers["Location"]).path == urlsplit(location).path

    # A client retrying the first chunk on the first instance (which last saw the upload
    # at that offset) is told the true position, so it can resume.
    retry = _patch(first, location, chunks[0], 0)
    assert retry.status_code == 416, retry.text
    assert retry.headers["Range"] == f"0-{received - 1}"

    # Finish on the first instance, the last chunk in the PUT body.
    done = requests.put(
        _with_digest(_at(first, location), digest),
        data=chunks[2],
        headers={**OCTET, "Content-Range": f"{received}-{len(data) - 1}"},
        timeout=HTTP_TIMEOUT,
    )
    assert done.status_code == 201, done.text
    assert done.headers["Docker-Content-Digest"] == digest
    assert urlsplit(done.headers["Location"]).path == f"/v2/{repo}/blobs/{digest}"

    gone = requests.get(_at(second, location), timeout=HTTP_TIMEOUT)
    assert gone.status_code == 404
    assert _error_codes(gone) == ["BLOB_UPLOAD_UNKNOWN"]
    _assert_blob_everywhere([pair.a, pair.b], repo, data)


def _pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


def test_streamed_chunks_across_instances(pair: Pair) -> None:
    """Docker-style PATCH: no Content-Range, no Content-Length, Transfer-Encoding: chunked."""
    repo = "shared/streamed"
    parts = [_payload(1_500_000, 4), _payload(400_000, 5)]
    data = b"".join(parts)
    digest = _digest(data)

    location = _start_upload(pair.a, repo).headers["Location"]
    size = 0
    for server, part in zip((pair.b, pair.a), parts, strict=True):
        response = requests.patch(
            _at(server, location), data=_pieces(part), headers=OCTET, timeout=HTTP_TIMEOUT
        )
        assert response.request.headers.get("Transfer-Encoding") == "chunked"
        assert "Content-Length" not in response.request.headers
        assert response.status_code == 202, (server.host, response.text)
        size += len(part)
        assert response.headers["Range"] == f"0-{size - 1}", server.host
        location = response.headers["Location"]

    status = requests.get(_at(pair.b, location), timeout=HTTP_TIMEOUT)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{len(data) - 1}"

    # Finish on B with an empty PUT: B never saw the last chunk, yet must verify every byte.
    done = requests.put(_with_digest(_at(pair.b, location), digest), timeout=HTTP_TIMEOUT)
    assert done.status_code == 201, done.text
    assert done.headers["Docker-Content-Digest"] == digest
    _assert_blob_everywhere([pair.a, pair.b], repo, data)


def test_wrong_digest_leaves_nothing_on_either_instance(pair: Pair) -> None:
    repo = "shared/wrong"
    data = _payload(300_000, 6)
    wrong = _digest(b"something else")

    location = _start_upload(pair.a, repo).headers["Location"]
    response = _patch(pair.a, location, data, 0)
    assert response.status_code == 202, response.text
    location = response.headers["Location"]

    done = requests.put(_with_digest(_at(pair.b, location), wrong), timeout=HTTP_TIMEOUT)
    assert done.status_code == 400, done.text
    assert _error_codes(done) == ["DIGEST_INVALID"]

    for server in (pair.a, pair.b):
        for digest in (wrong, _digest(data)):
            blob = requests.head(f"{server.url}/v2/{repo}/blobs/{digest}", timeout=HTTP_TIMEOUT)
            assert blob.status_code == 404, (server.host, digest)
        status = requests.get(_at(server, location), timeout=HTTP_TIMEOUT)
        assert status.status_code == 404, server.host
        assert _error_codes(status) == ["BLOB_UPLOAD_UNKNOWN"]


def test_skopeo_push_to_one_pull_from_other(pair: Pair, tmp_path: Path) -> None:
    require_tool("skopeo")
    sandbox = ClientSandbox(tmp_path / "clients", insecure_registries=[pair.a.host, pair.b.host])
    image = build_oci_layout(tmp_path / "src", tag="v1", layers=3, seed=11)

    pushed = skopeo_copy(image.ref, f"docker://{pair.a.host}/shared/app:v1", sandbox=sandbox)
    assert pushed == image.manifest_digest

    back = tmp_path / "back"
    skopeo_copy(f"docker://{pair.b.host}/shared/app:v1", f"oci:{back}:v1", sandbox=sandbox)
    assert layout_differences(image, read_layout(back, "v1")) == []

    tags = requests.get(f"{pair.b.url}/v2/shared/app/tags/list", timeout=HTTP_TIMEOUT)
    assert tags.status_code == 200
    assert tags.json()["tags"] == ["v1"]
