"""Upload sessions: streamed, chunked, resumed, verified, cancelled, expired."""

from __future__ import annotations

import io
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from sqlalchemy import update

from app.db.models import Upload
from app.registry import paths, uploads
from tests.helpers import RegistryClient, error_codes, sha256


def test_start_upload_headers(registry: RegistryClient) -> None:
    response = registry.http.post("/v2/team/app/blobs/uploads/")
    assert response.status_code == 202
    location = response.headers["Location"]
    uuid = response.headers["Docker-Upload-UUID"]
    assert location == f"/v2/team/app/blobs/uploads/{uuid}"
    assert response.headers["Range"] == "0-0"
    assert response.headers["Content-Length"] == "0"


def test_streamed_patch_then_put(registry: RegistryClient) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    location = registry.start_upload("team/app")
    response = registry.http.patch(location, data=data)
    assert response.status_code == 202
    assert response.headers["Range"] == f"0-{len(data) - 1}"
    location = response.headers["Location"]
    response = registry.http.put(f"{location}?digest={sha256(data)}")
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/team/app/blobs/{sha256(data)}"
    assert response.headers["Docker-Content-Digest"] == sha256(data)
    assert registry.http.get(f"/v2/team/app/blobs/{sha256(data)}").data == data


def test_streamed_patch_without_content_length(registry: RegistryClient) -> None:
    # docker sends one chunked PATCH with no Content-Length: read the stream to its end.
    data = os.urandom(200_000)
    location = registry.start_upload("team/app")
    response = registry.http.patch(location, input_stream=io.BytesIO(data))
    assert response.status_code == 202
    assert response.headers["Range"] == f"0-{len(data) - 1}"
    assert registry.http.put(f"{location}?digest={sha256(data)}").status_code == 201


def test_chunked_upload_with_content_range(registry: RegistryClient) -> None:
    data = os.urandom(10_000)
    location = registry.start_upload("team/app")
    for start in range(0, len(data), 4096):
        chunk = data[start : start + 4096]
        response = registry.http.patch(
            location,
            data=chunk,
            headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"},
        )
        assert response.status_code == 202
        assert response.headers["Range"] == f"0-{start + len(chunk) - 1}"
    status = registry.http.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{len(data) - 1}"
    assert registry.http.put(f"{location}?digest={sha256(data)}").status_code == 201


def test_final_chunk_in_put_body(registry: RegistryClient) -> None:
    data = os.urandom(5000)
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=data[:3000], headers={"Content-Range": "0-2999"})
    response = registry.http.put(
        f"{location}?digest={sha256(data)}",
        data=data[3000:],
        headers={"Content-Range": "3000-4999"},
    )
    assert response.status_code == 201
    assert registry.http.get(f"/v2/team/app/blobs/{sha256(data)}").data == data


def test_location_with_query_string_is_followed(registry: RegistryClient) -> None:
    data = b"abc"
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=data)
    response = registry.http.put(f"{location}?foo=bar&digest={sha256(data)}")
    assert response.status_code == 201


@pytest.mark.parametrize("start", [0, 50, 200])
def test_out_of_order_or_repeated_chunk_is_416(registry: RegistryClient, start: int) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"x" * 100, headers={"Content-Range": "0-99"})
    response = registry.http.patch(
        location, data=b"y" * 10, headers={"Content-Range": f"{start}-{start + 9}"}
    )
    assert response.status_code == 416
    assert error_codes(response) == ["RANGE_INVALID"]
    assert response.headers["Range"] == "0-99"
    assert response.headers["Location"] == location
    # Nothing of the refused chunk was kept: the upload continues where it was.
    response = registry.http.patch(location, data=b"z", headers={"Content-Range": "100-100"})
    assert response.status_code == 202
    data = b"x" * 100 + b"z"
    assert registry.http.put(f"{location}?digest={sha256(data)}").status_code == 201


def test_chunk_length_mismatch_is_size_invalid(registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    response = registry.http.patch(location, data=b"x" * 10, headers={"Content-Range": "0-19"})
    assert response.status_code == 400
    assert error_codes(response) == ["SIZE_INVALID"]
    assert registry.http.get(location).headers["Range"] == "0-0"


@pytest.mark.parametrize("header", ["bytes=abc", "5", "10-2", "-"])
def test_malformed_content_range_is_rejected(registry: RegistryClient, header: str) -> None:
    location = registry.start_upload("team/app")
    response = registry.http.patch(location, data=b"x", headers={"Content-Range": header})
    assert response.status_code == 416
    assert error_codes(response) == ["RANGE_INVALID"]


def test_wrong_digest_makes_nothing_visible(registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"real bytes")
    claimed = sha256(b"other bytes")
    response = registry.http.put(f"{location}?digest={claimed}")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert registry.http.head(f"/v2/team/app/blobs/{claimed}").status_code == 404
    assert registry.http.head(f"/v2/team/app/blobs/{sha256(b'real bytes')}").status_code == 404
    assert registry.http.get(location).status_code == 404


@pytest.mark.parametrize("query", ["", "?digest=", "?digest=sha256:short", "?digest=crc32:00"])
def test_put_without_a_valid_digest_is_digest_invalid(registry: RegistryClient, query: str) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"bytes")
    response = registry.http.put(location + query)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_monolithic_upload_with_wrong_digest(registry: RegistryClient) -> None:
    claimed = sha256(b"claimed")
    response = registry.http.post(f"/v2/team/app/blobs/uploads/?digest={claimed}", data=b"sent")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert registry.http.head(f"/v2/team/app/blobs/{claimed}").status_code == 404


def test_patch_with_a_foreign_content_type_is_refused(registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    response = registry.http.patch(
        location, data=b"{}", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert error_codes(response) == ["BLOB_UPLOAD_INVALID"]


@pytest.mark.parametrize(
    "suffix", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "..", "%2e%2e"]
)
def test_unknown_upload_is_404(registry: RegistryClient, suffix: str) -> None:
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = registry.http.open(
            f"/v2/team/app/blobs/uploads/{suffix}?digest={sha256(b'')}", method=method
        )
        assert response.status_code == 404, method
        assert error_codes(response)[0] in ("BLOB_UPLOAD_UNKNOWN", "NOT_FOUND")


def test_upload_belongs_to_its_repository(registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    upload_id = location.rsplit("/", 1)[-1]
    response = registry.http.get(f"/v2/team/other/blobs/uploads/{upload_id}")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


def test_cancel_upload(registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"abc")
    assert registry.http.delete(location).status_code == 204
    assert registry.http.get(location).status_code == 404
    assert registry.http.put(f"{location}?digest={sha256(b'abc')}").status_code == 404


def test_completed_upload_cannot_be_reused(registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"abc")
    assert registry.http.put(f"{location}?digest={sha256(b'abc')}").status_code == 201
    response = registry.http.patch(location, data=b"more")
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]


class _Disconnecting(io.BytesIO):
    """A request body whose client goes away after sending what it holds."""

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        if not chunk:
            raise ConnectionResetError("client went away")
        return chunk


def test_client_disconnect_mid_chunk_leaves_the_upload_as_it_was(registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"a" * 1000, headers={"Content-Range": "0-999"})
    response = registry.http.patch(
        location,
        input_stream=_Disconnecting(b"b" * 5000),
        environ_overrides={"CONTENT_LENGTH": "100000"},
    )
    assert response.status_code == 400
    assert error_codes(response) == ["BLOB_UPLOAD_INVALID"]
    assert registry.http.get(location).headers["Range"] == "0-999"
    response = registry.http.patch(location, data=b"c" * 10, headers={"Content-Range": "1000-1009"})
    assert response.status_code == 202
    data = b"a" * 1000 + b"c" * 10
    assert registry.http.put(f"{location}?digest={sha256(data)}").status_code == 201
    assert registry.http.get(f"/v2/team/app/blobs/{sha256(data)}").data == data


def test_leftover_bytes_from_a_crash_are_dropped(app: Flask, registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"good")
    upload_id = location.rsplit("/", 1)[-1]
    # A worker killed mid-write leaves bytes the database never accepted.
    driver = app.extensions["berth"].driver
    with driver.writer(paths.upload_data(upload_id), append=True) as writer:
        writer.write(b"garbage")
        writer.commit()
    registry.http.patch(location, data=b"more")
    assert registry.http.put(f"{location}?digest={sha256(b'goodmore')}").status_code == 201


def _age_upload(app: Flask, upload_id: str, seconds: int) -> None:
    reg = app.extensions["berth"]
    with reg.db.transaction(write=True) as session:
        session.execute(
            update(Upload)
            .where(Upload.id == upload_id)
            .values(updated_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def test_stale_upload_expires_and_its_bytes_are_purged(
    app: Flask, registry: RegistryClient
) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"abandoned")
    fresh = registry.start_upload("team/app")
    upload_id = location.rsplit("/", 1)[-1]
    _age_upload(app, upload_id, 2 * 24 * 3600)
    response = registry.http.get(location)
    assert response.status_code == 404
    assert error_codes(response) == ["BLOB_UPLOAD_UNKNOWN"]
    reg = app.extensions["berth"]
    assert uploads.purge_stale(reg) == 1
    assert not reg.driver.exists(paths.upload_data(upload_id))
    # The session in use is untouched and still completes.
    registry.http.patch(fresh, data=b"kept")
    assert registry.http.put(f"{fresh}?digest={sha256(b'kept')}").status_code == 201


def test_purge_removes_orphaned_upload_files(app: Flask) -> None:
    reg = app.extensions["berth"]
    reg.driver.put_content(paths.upload_data("orphan"), b"left by a crash")
    assert uploads.purge_stale(reg, max_age=1) == 0  # too recent to be sure it is orphaned
    # Pretend it is old: purge with a cutoff in the future.
    assert uploads.purge_stale(reg, max_age=-3600) >= 1
    assert not reg.driver.exists(paths.upload_data("orphan"))


def test_concurrent_pushes_of_the_same_blob_all_succeed(app: Flask) -> None:
    data = os.urandom(50_000)
    digest = sha256(data)
    statuses: list[int] = []

    def push() -> None:
        client = app.test_client()
        statuses.append(
            client.post(f"/v2/team/app/blobs/uploads/?digest={digest}", data=data).status_code
        )

    threads = [threading.Thread(target=push) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 8
    assert app.test_client().get(f"/v2/team/app/blobs/{digest}").data == data


def _hold_lease(app: Flask, upload_id: str, seconds: int) -> None:
    """What another request streaming into the same upload looks like in the database."""
    with app.extensions["berth"].db.transaction(write=True) as session:
        session.execute(
            update(Upload)
            .where(Upload.id == upload_id)
            .values(
                writer="other-request",
                writer_expires=datetime.now(UTC) + timedelta(seconds=seconds),
            )
        )


def test_a_second_writer_is_refused_while_one_streams(app: Flask, registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"first")
    _hold_lease(app, location.rsplit("/", 1)[-1], 60)
    response = registry.http.patch(location, data=b"second")
    assert response.status_code == 416
    assert error_codes(response) == ["RANGE_INVALID"]
    assert response.headers["Range"] == "0-4"
    response = registry.http.put(f"{location}?digest={sha256(b'first')}")
    assert response.status_code == 416
    # Once the other writer's lease has run out (it died), the upload goes on.
    _hold_lease(app, location.rsplit("/", 1)[-1], -1)
    assert registry.http.patch(location, data=b"second").status_code == 202
    assert registry.http.put(f"{location}?digest={sha256(b'firstsecond')}").status_code == 201


def test_lost_upload_bytes_are_reported_not_guessed(app: Flask, registry: RegistryClient) -> None:
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"0123456789")
    upload_id = location.rsplit("/", 1)[-1]
    app.extensions["berth"].driver.truncate(paths.upload_data(upload_id), 4)
    response = registry.http.patch(location, data=b"more")
    assert response.status_code == 400
    assert error_codes(response) == ["BLOB_UPLOAD_INVALID"]
    response = registry.http.put(f"{location}?digest={sha256(b'0123456789')}")
    assert response.status_code == 400
    assert registry.http.head(f"/v2/team/app/blobs/{sha256(b'0123456789')}").status_code == 404


def _count_reads(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    reads: list[str] = []
    driver = app.extensions["berth"].driver
    real_reader = driver.reader

    def reader(path: str, offset: int = 0):  # type: ignore[no-untyped-def]
        reads.append(path)
        return real_reader(path, offset)

    monkeypatch.setattr(driver, "reader", reader)
    return reads


def test_put_on_another_worker_verifies_without_reading_the_bytes_again(
    app: Flask, registry: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The PATCH records the sha256 of what it wrote; a PUT anywhere checks against that.
    # (A fresh _HashCache is what a PUT on another worker or instance sees.)
    data = os.urandom(2 * 1024 * 1024 + 5)
    location = registry.start_upload("team/app")
    assert registry.http.patch(location, data=data).status_code == 202
    monkeypatch.setattr(uploads, "_hashes", uploads._HashCache())
    reads = _count_reads(app, monkeypatch)
    response = registry.http.put(f"{location}?digest={sha256(b'not it')}")
    assert error_codes(response) == ["DIGEST_INVALID"]
    location = registry.start_upload("team/app")
    assert registry.http.patch(location, data=data).status_code == 202
    monkeypatch.setattr(uploads, "_hashes", uploads._HashCache())
    assert registry.http.put(f"{location}?digest={sha256(data)}").status_code == 201
    assert reads == []
    assert registry.http.get(f"/v2/team/app/blobs/{sha256(data)}").data == data


def test_chunks_across_workers_are_verified_from_the_stored_bytes(
    app: Flask, registry: RegistryClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunk two lands where chunk one's running hash is unknown: nothing can be recorded,
    # so the PUT hashes the stored bytes, and still refuses a wrong digest.
    location = registry.start_upload("team/app")
    headers = {"Content-Type": "application/octet-stream"}
    registry.http.patch(location, data=b"first ", headers={**headers, "Content-Range": "0-5"})
    monkeypatch.setattr(uploads, "_hashes", uploads._HashCache())
    registry.http.patch(location, data=b"second", headers={**headers, "Content-Range": "6-11"})
    reads = _count_reads(app, monkeypatch)
    response = registry.http.put(f"{location}?digest={sha256(b'first other')}")
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert len(reads) == 1
    location = registry.start_upload("team/app")
    registry.http.patch(location, data=b"first ", headers={**headers, "Content-Range": "0-5"})
    monkeypatch.setattr(uploads, "_hashes", uploads._HashCache())
    registry.http.patch(location, data=b"second", headers={**headers, "Content-Range": "6-11"})
    assert registry.http.put(f"{location}?digest={sha256(b'first second')}").status_code == 201
    assert len(reads) == 2


def _sessions_and_files(app: Flask) -> tuple[int, list[str]]:
    reg = app.extensions["berth"]
    with reg.db.transaction() as session:
        rows = session.query(Upload).count()
    try:
        files = reg.driver.list(paths.UPLOADS_ROOT)
    except Exception:  # no upload ever wrote a byte
        files = []
    return rows, files


@pytest.mark.parametrize("digest", ["sha256:..%2F..%2Fetc", "sha256:abc", "md5:" + "0" * 32])
def test_monolithic_upload_with_a_bad_digest_creates_nothing(
    app: Flask, registry: RegistryClient, digest: str
) -> None:
    response = registry.http.post(f"/v2/team/app/blobs/uploads/?digest={digest}", data=b"x")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert _sessions_and_files(app) == (0, [])


def test_monolithic_upload_of_the_wrong_bytes_leaves_nothing(
    app: Flask, registry: RegistryClient
) -> None:
    response = registry.http.post(
        f"/v2/team/app/blobs/uploads/?digest={sha256(b'promised')}", data=b"something else"
    )
    assert error_codes(response) == ["DIGEST_INVALID"]
    assert _sessions_and_files(app) == (0, [])


def test_monolithic_upload_cut_off_mid_body_leaves_nothing(
    app: Flask, registry: RegistryClient
) -> None:
    response = registry.http.post(
        f"/v2/team/app/blobs/uploads/?digest={sha256(b'x' * 100_000)}",
        input_stream=_Disconnecting(b"x" * 40_000),
        headers={"Content-Length": "100000"},
    )
    assert response.status_code == 400
    assert _sessions_and_files(app) == (0, [])
