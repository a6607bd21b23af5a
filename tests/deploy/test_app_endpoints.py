"""/healthz, /readyz, /metrics and the blob offload answer, through the Flask app on SQLite
and PostgreSQL (the `database_url` fixture)."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.config import ConfigError, load_settings
from tests.helpers import RegistryClient


def make_app(database_url: str, **overrides: object) -> Flask:
    flask_app = create_app({"database_url": database_url, **overrides})
    flask_app.testing = True
    return flask_app


@pytest.fixture
def fs_root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


def test_healthz_and_readyz_answer(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}


def test_readyz_is_503_when_the_database_is_down(fs_root: Path) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    app = make_app("postgresql://berth@127.0.0.1:1/berth", storage_root=str(fs_root))
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("error")
    assert body["checks"]["storage"] == "ok"
    assert app.test_client().get("/healthz").status_code == 200  # the process still answers


def test_readyz_is_503_when_the_storage_is_gone(database_url: str, fs_root: Path) -> None:
    app = make_app(database_url, storage_driver="filesystem", storage_root=str(fs_root))
    shutil.rmtree(fs_root)  # e.g. the volume was unmounted under the running server
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"database": "ok", "storage": "error: PathNotFound"}
    app.extensions["berth"].db.dispose()


def test_metrics_count_requests_by_route_and_bytes(client: FlaskClient) -> None:
    def sample(name: str, **labels: str) -> float:
        text = client.get("/metrics").get_data(as_text=True)
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(f"{name}{{{wanted}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    registry = RegistryClient(client)
    before = sample("berth_http_requests_total", method="GET", route="blobs.get_blob", status="200")
    missing = sample(
        "berth_http_requests_total", method="GET", route="blobs.get_blob", status="404"
    )
    bytes_in = sample("berth_http_request_bytes_total", route="uploads.start_upload")
    bytes_out = sample("berth_http_response_bytes_total", route="blobs.get_blob")
    data = b"x" * 5000
    digest = registry.push_blob("team/metrics", data)
    assert client.get(f"/v2/team/metrics/blobs/{digest}").data == data
    assert client.get(f"/v2/team/metrics/blobs/sha256:{'0' * 64}").status_code == 404
    assert client.head(f"/v2/team/metrics/blobs/{digest}").status_code == 200

    assert (
        sample("berth_http_requests_total", method="GET", route="blobs.get_blob", status="200")
        == before + 1
    )
    assert (
        sample("berth_http_requests_total", method="GET", route="blobs.get_blob", status="404")
        == missing + 1
    )
    assert sample("berth_http_request_bytes_total", route="uploads.start_upload") == bytes_in + 5000
    # The GET's 5000 bytes and the 404's error body; the HEAD sent none.
    out = sample("berth_http_response_bytes_total", route="blobs.get_blob") - bytes_out
    assert 5000 < out < 5400
    assert (
        sample(
            "berth_upload_request_duration_seconds_count",
            route="uploads.start_upload",
            status="201",
        )
        >= 1
    )
    # Routes are endpoint names, never raw paths with digests in them.
    assert "sha256" not in client.get("/metrics").get_data(as_text=True)


# --- blob offload ---------------------------------------------------------------------------


@pytest.fixture(params=["x-accel-redirect", "x-sendfile"])
def offload_client(
    request: pytest.FixtureRequest, database_url: str, fs_root: Path
) -> Iterator[FlaskClient]:
    app = make_app(
        database_url,
        storage_driver="filesystem",
        storage_root=str(fs_root),
        blob_offload=request.param,
    )
    yield app.test_client()
    app.extensions["berth"].db.dispose()


def test_offloaded_blob_get_names_the_file_and_sends_no_body(
    offload_client: FlaskClient, fs_root: Path
) -> None:
    data = b"layer bytes " * 1000
    digest = RegistryClient(offload_client).push_blob("team/off", data)
    hexdigest = digest.removeprefix("sha256:")
    key = f"blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"

    for headers in ({}, {"Range": "bytes=10-19"}):
        response = offload_client.get(f"/v2/team/off/blobs/{digest}", headers=headers)
        # Always a plain 200: the front end applies the Range to the file.
        assert response.status_code == 200
        assert response.data == b""
        assert response.headers["Content-Length"] == "0"
        assert "Content-Range" not in response.headers
        assert response.headers["Docker-Content-Digest"] == digest
        assert response.headers["ETag"] == f'"{digest}"'
        assert response.headers["Content-Type"] == "application/octet-stream"
        if "X-Accel-Redirect" in response.headers:
            assert response.headers["X-Accel-Redirect"] == f"/_berth_blobs/{key}"
        else:
            target = Path(response.headers["X-Sendfile"])
            assert target == fs_root.resolve() / key
            assert hashlib.sha256(target.read_bytes()).hexdigest() == hexdigest
            assert target.stat().st_mode & 0o044 == 0o044  # the front end's user reads it

    # HEAD, unsatisfiable ranges and unknown blobs are still Berth's own answers.
    head = offload_client.head(f"/v2/team/off/blobs/{digest}")
    assert head.headers["Content-Length"] == str(len(data))
    assert "X-Accel-Redirect" not in head.headers and "X-Sendfile" not in head.headers
    bad_range = offload_client.get(
        f"/v2/team/off/blobs/{digest}", headers={"Range": f"bytes={len(data) + 5}-"}
    )
    assert bad_range.status_code == 416
    assert offload_client.get(f"/v2/team/off/blobs/sha256:{'1' * 64}").status_code == 404


def test_offload_prefix_maps_the_storage_root(database_url: str, fs_root: Path) -> None:
    app = make_app(
        database_url,
        storage_driver="filesystem",
        storage_root=str(fs_root),
        blob_offload="x-sendfile",
        blob_offload_prefix="/srv/registry/",
    )
    client = app.test_client()
    digest = RegistryClient(client).push_blob("team/off", b"abc")
    hexdigest = digest.removeprefix("sha256:")
    response = client.get(f"/v2/team/off/blobs/{digest}")
    assert response.headers["X-Sendfile"] == (
        f"/srv/registry/blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"
    )
    app.extensions["berth"].db.dispose()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"blob_offload": "sendfile"}, "blob_offload: 'sendfile' is not one of"),
        (
            {"blob_offload": "x-accel-redirect", "storage_driver": "inmemory"},
            "needs the filesystem storage driver",
        ),
        (
            {"blob_offload": "x-sendfile", "blob_offload_prefix": "relative/dir"},
            "must be an absolute path",
        ),
    ],
)
def test_offload_settings_are_checked(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, overrides=overrides)


def test_offload_setting_from_the_environment() -> None:
    settings = load_settings(environ={"BERTH_BLOB_OFFLOAD": "x-accel-redirect"})
    assert settings.blob_offload == "x-accel-redirect"
