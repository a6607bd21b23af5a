"""Inputs a hostile or broken client sends, on SQLite and PostgreSQL: never a 5xx, always an
OCI error body, and nothing written by a refused request."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.db.models import Manifest, Upload
from tests.helpers import CONFIG, LAYER, OCI_MANIFEST, RegistryClient, descriptor, error_codes


def _manifest(registry: RegistryClient, **overrides: Any) -> dict[str, Any]:
    """A valid image manifest whose blobs are in team/app, as a dict to break."""
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"layer bytes"
    registry.push_blob("team/app", config)
    registry.push_blob("team/app", layer)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config, CONFIG),
        "layers": [descriptor(layer, LAYER)],
    }
    doc.update(overrides)
    return doc


def _manifest_rows(app: Flask) -> int:
    with app.extensions["berth"].db.transaction() as session:
        return session.query(Manifest).count()


def _refused(registry: RegistryClient, app: Flask, body: bytes, field: str | None = None) -> None:
    response = registry.put_manifest("team/app", "hostile", body)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert error_codes(response) == ["MANIFEST_INVALID"]
    if field is not None:
        assert field in json.dumps(response.get_json())
    assert _manifest_rows(app) == 0
    assert registry.http.get("/v2/team/app/manifests/hostile").status_code == 404


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_json_nested_100000_deep(registry: RegistryClient, app: Flask, opening: str) -> None:
    _refused(registry, app, (opening * 100_000).encode())


def test_config_size_of_5000_digits(registry: RegistryClient, app: Flask) -> None:
    doc = _manifest(registry)
    text = json.dumps(doc).replace(f'"size": {doc["config"]["size"]}', '"size": ' + "9" * 5000)
    _refused(registry, app, text.encode())


def test_sizes_past_int64(registry: RegistryClient, app: Flask) -> None:
    doc = _manifest(registry)
    doc["layers"][0]["size"] = 2**63
    _refused(registry, app, json.dumps(doc).encode(), "layers[0]")


@pytest.mark.parametrize(
    ("where", "value"),
    [
        ("artifactType", "application/" + "x" * 300),
        ("artifactType", "application/vnd.evil\u0000+json"),
        ("config.mediaType", "application/" + "y" * 300),
        ("config.mediaType", "application/vnd.evil\u0000"),
    ],
)
def test_media_types_past_the_limits(
    registry: RegistryClient, app: Flask, where: str, value: str
) -> None:
    doc = _manifest(registry)
    if where == "artifactType":
        doc["artifactType"] = value
    else:
        doc["config"]["mediaType"] = value
    _refused(registry, app, json.dumps(doc).encode(), where.split(".")[0])


def test_duplicate_keys_are_refused(registry: RegistryClient, app: Flask) -> None:
    # The first `layers` names a blob that does not exist, the second is empty: parsers
    # disagree on which wins, so neither reading may be stored.
    doc = _manifest(registry)
    text = json.dumps(doc)
    missing = json.dumps([descriptor(b"never pushed", LAYER)])
    twice = text[:-1] + f', "layers": {missing}' + "}"
    _refused(registry, app, twice.encode(), "layers")
    media_twice = text[:-1] + f', "mediaType": "{OCI_MANIFEST}"' + "}"
    _refused(registry, app, media_twice.encode(), "mediaType")


@pytest.mark.parametrize("path", ["/v2/team/app/tags/list", "/v2/_catalog"])
@pytest.mark.parametrize(
    ("query", "status"),
    [("n=%C2%B2", 400), ("last=%00", 200), ("n=1&last=%00", 200), ("n=%EF%BC%91", 400)],
)
def test_listing_parameters(registry: RegistryClient, path: str, query: str, status: int) -> None:
    registry.push_image("team/app", "v1")
    response = registry.http.get(f"{path}?{query}")
    assert response.status_code == status
    if status == 400:
        assert error_codes(response) == ["PAGINATION_NUMBER_INVALID"]
    else:  # everything after "\0" is everything after "": the one tag or repository
        assert len(next(iter(v for v in response.get_json().values() if isinstance(v, list)))) == 1


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_wrong_method_on_the_catalog(client: FlaskClient, method: str) -> None:
    response = client.open("/v2/_catalog", method=method)
    assert response.status_code == 405
    assert error_codes(response) == ["UNSUPPORTED"]
    assert response.headers["Allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "path", ["/v2//tags/list", "/v2/tags/list", "/v2//manifests/latest", "/v2/blobs/uploads/"]
)
def test_a_missing_name_is_not_redirected(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]
    assert "Location" not in response.headers


@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "-x", "a" * 200])
def test_reference_neither_tag_nor_digest(registry: RegistryClient, reference: str) -> None:
    registry.push_image("team/app", "v1")
    url = f"/v2/team/app/manifests/{reference}"
    for method in ("GET", "DELETE"):
        response = registry.http.open(url, method=method)
        assert response.status_code == 404
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]
    assert registry.http.head(url).status_code == 404
    assert error_codes(registry.put_manifest("team/app", reference, b"{}")) == ["TAG_INVALID"]


def test_push_by_digest_with_tags(registry: RegistryClient) -> None:
    body = json.dumps(_manifest(registry)).encode()
    digest = "sha512:" + hashlib.sha512(body).hexdigest()
    response = registry.http.put(
        f"/v2/team/app/manifests/{digest}?tag=a&tag=b",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201
    assert response.headers.getlist("OCI-Tag") == ["a", "b"]
    assert response.headers["Docker-Content-Digest"] == digest
    for tag in ("a", "b"):
        assert (
            registry.http.head(f"/v2/team/app/manifests/{tag}").headers["Docker-Content-Digest"]
            == digest
        )
        assert registry.http.get(f"/v2/team/app/manifests/{tag}").data == body
    assert registry.http.get("/v2/team/app/tags/list").get_json()["tags"] == ["a", "b"]
    bad = registry.http.put(
        f"/v2/team/app/manifests/{digest}?tag=ok&tag=-bad",
        data=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert error_codes(bad) == ["TAG_INVALID"]
    assert registry.http.get("/v2/team/app/manifests/ok").status_code == 404


def test_every_4xx_has_an_oci_error_body(client: FlaskClient) -> None:
    probes = [
        ("GET", "/v2/UPPER/tags/list"),
        ("GET", "/v2/a/blobs/sha256:zz"),
        ("GET", "/v2/a/manifests/sha256:zz"),
        ("GET", "/v2/a/blobs/uploads/not-a-uuid"),
        ("PATCH", "/v2/a/blobs/uploads/not-a-uuid"),
        ("GET", "/v2/nothing/here/at/all/x"),
        ("GET", "/v2/" + "a" * 300 + "/tags/list"),
        ("PUT", "/v2/a/manifests/latest"),
        ("POST", "/v2/a/blobs/uploads/?mount=bad&from=b"),
        ("GET", "/v2/a/tags/list?n=-1"),
    ]
    for method, path in probes:
        response = client.open(path, method=method)
        assert 400 <= response.status_code < 500, (method, path, response.status_code)
        body = response.get_json()
        assert body and body["errors"][0]["code"], (method, path)


def test_monolithic_upload_leaves_no_session(registry: RegistryClient, app: Flask) -> None:
    response = registry.http.post("/v2/team/app/blobs/uploads/?digest=sha256:..%2F..", data=b"x")
    assert error_codes(response) == ["DIGEST_INVALID"]
    with app.extensions["berth"].db.transaction() as session:
        assert session.query(Upload).count() == 0


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class TestCredentials:
    """Basic mode: only `Basic` with strict base64 counts; anything else is a 401."""

    @pytest.fixture
    def settings_overrides(self) -> dict[str, object]:
        return {
            "auth": "basic",
            "auth_rules": [{"repository": "*", "users": ["*"], "actions": ["pull"]}],
        }

    @pytest.mark.parametrize(
        "header",
        [
            _basic("ad\0min", "pw"),
            "Foo " + base64.b64encode(b"alice:pw").decode(),
            "Bearer " + base64.b64encode(b"alice:pw").decode(),
            "Basic YWxp!!Y2U6cHc=",
            "Basic",
        ],
        ids=[
            "nul-in-name",
            "other-scheme",
            "bearer-in-basic-mode",
            "junk-base64",
            "no-credentials",
        ],
    )
    def test_refused(self, client: FlaskClient, header: str) -> None:
        response = client.get("/v2/team/app/tags/list", headers={"Authorization": header})
        assert response.status_code == 401
        assert error_codes(response) == ["UNAUTHORIZED"]
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
