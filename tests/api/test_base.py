"""GET /v2/, routing of odd names, and the error envelope."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.helpers import RegistryClient, error_codes


def test_version_check_answers_with_api_version(client: FlaskClient) -> None:
    response = client.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert response.get_json() == {}


def test_unknown_endpoint_is_an_oci_error_with_the_version_header(client: FlaskClient) -> None:
    response = client.get("/v2/foo/nothing-here")
    assert response.status_code == 404
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert response.get_json()["errors"][0]["code"]


@pytest.mark.parametrize(
    "name",
    ["Upper/case", "a/../b", "..", "a//b", "-leading", "trailing-", "a" * 256, "a/" * 127 + "bb"],
)
def test_invalid_repository_names_are_rejected(client: FlaskClient, name: str) -> None:
    for method, path in [
        ("GET", f"/v2/{name}/manifests/latest"),
        ("POST", f"/v2/{name}/blobs/uploads/"),
        ("GET", f"/v2/{name}/tags/list"),
        ("HEAD", f"/v2/{name}/blobs/sha256:{'a' * 64}"),
    ]:
        response = client.open(path, method=method)
        assert response.status_code == 400, (method, path)
        if method != "HEAD":
            assert error_codes(response) == ["NAME_INVALID"]


def test_name_components_may_be_endpoint_words(registry: RegistryClient) -> None:
    # `blobs`, `manifests` and `tags` are legal name components: routing goes by suffix.
    for repo in ["a/blobs/b", "x/manifests/y", "tags/list/z", "blobs"]:
        image = registry.push_image(repo, "v1")
        response = registry.http.get(f"/v2/{repo}/manifests/v1")
        assert response.status_code == 200
        assert response.data == image.manifest
        assert registry.http.get(f"/v2/{repo}/tags/list").get_json() == {
            "name": repo,
            "tags": ["v1"],
        }


def test_longest_legal_name_works(registry: RegistryClient) -> None:
    repo = "a" * 255
    registry.push_image(repo, "v1")
    assert registry.http.get(f"/v2/{repo}/manifests/v1").status_code == 200


def test_wrong_method_is_unsupported(client: FlaskClient) -> None:
    response = client.post("/v2/foo/manifests/latest")
    assert response.status_code == 405
    assert error_codes(response) == ["UNSUPPORTED"]
