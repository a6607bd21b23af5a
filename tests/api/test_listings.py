"""tags/list and _catalog: lexical order, n, last, Link."""

from __future__ import annotations

import pytest

from tests.helpers import RegistryClient, error_codes, sha256


@pytest.fixture
def tagged(registry: RegistryClient) -> list[str]:
    image = registry.push_image("team/app", "v1")
    tags = ["v1", "latest", "A", "Z", "b", "a", "1.0", "1.10", "1.2", "_x"]
    for tag in tags[1:]:
        assert registry.put_manifest("team/app", tag, image.manifest).status_code == 201
    return sorted(tags)  # byte order: digits, upper case, underscore, lower case


def test_tags_in_lexical_order(registry: RegistryClient, tagged: list[str]) -> None:
    response = registry.http.get("/v2/team/app/tags/list")
    assert response.status_code == 200
    assert response.get_json() == {"name": "team/app", "tags": tagged}
    assert "Link" not in response.headers


def test_tags_pagination(registry: RegistryClient, tagged: list[str]) -> None:
    seen: list[str] = []
    url = "/v2/team/app/tags/list?n=3"
    while url:
        response = registry.http.get(url)
        page = response.get_json()["tags"]
        assert len(page) <= 3
        seen += page
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else ""
        if link:
            assert link.endswith('; rel="next"')
            assert url.startswith("/v2/team/app/tags/list?")
    assert seen == tagged


def test_tags_last_is_exclusive(registry: RegistryClient, tagged: list[str]) -> None:
    response = registry.http.get(f"/v2/team/app/tags/list?last={tagged[2]}")
    assert response.get_json()["tags"] == tagged[3:]
    response = registry.http.get(f"/v2/team/app/tags/list?n=2&last={tagged[2]}")
    assert response.get_json()["tags"] == tagged[3:5]


def test_tags_n_zero_is_empty(registry: RegistryClient, tagged: list[str]) -> None:
    response = registry.http.get("/v2/team/app/tags/list?n=0")
    assert response.status_code == 200
    assert response.get_json()["tags"] == []


@pytest.mark.parametrize("n", ["-1", "abc", "1.5"])
def test_bad_n_is_rejected(registry: RegistryClient, tagged: list[str], n: str) -> None:
    for path in (f"/v2/team/app/tags/list?n={n}", f"/v2/_catalog?n={n}"):
        response = registry.http.get(path)
        assert response.status_code == 400
        assert error_codes(response) == ["PAGINATION_NUMBER_INVALID"]


def test_tags_of_unknown_repository(registry: RegistryClient) -> None:
    response = registry.http.get("/v2/nobody/here/tags/list")
    assert response.status_code == 404
    assert error_codes(response) == ["NAME_UNKNOWN"]


def test_catalog_lists_repositories_with_content(registry: RegistryClient) -> None:
    names = ["b/app", "a/app", "a/app-x", "c", "a/b/c"]
    for name in names:
        registry.push_blob(name, name.encode())
    registry.start_upload("empty/only-an-upload")
    response = registry.http.get("/v2/_catalog")
    assert response.get_json() == {"repositories": sorted(names)}
    first = registry.http.get("/v2/_catalog?n=2")
    assert first.get_json()["repositories"] == sorted(names)[:2]
    assert (
        first.headers["Link"]
        == f'</v2/_catalog?last={sorted(names)[1].replace("/", "%2F")}&n=2>; rel="next"'
    )
    rest = registry.http.get(f"/v2/_catalog?n=10&last={sorted(names)[1]}")
    assert rest.get_json()["repositories"] == sorted(names)[2:]
    assert "Link" not in rest.headers


def test_catalog_pages_walk_every_repository_that_holds_something(
    registry: RegistryClient,
) -> None:
    registry.push_image("x/image", "v1")  # manifest and blobs
    registry.push_blob("x/blob-only", b"a layer, no manifest yet")
    only_manifest = registry.push_image("x/manifest-only", "v1")
    for blob in [only_manifest.config, *only_manifest.layers]:
        assert registry.http.delete(f"/v2/x/manifest-only/blobs/{sha256(blob)}").status_code == 202
    emptied = registry.push_blob("x/emptied", b"soon gone")
    assert registry.http.delete(f"/v2/x/emptied/blobs/{emptied}").status_code == 202

    seen, url = [], "/v2/_catalog?n=1"
    while url:  # one repository a page: every page starts after the last one seen
        response = registry.http.get(url)
        seen += response.get_json()["repositories"]
        link = response.headers.get("Link")
        url = link[1 : link.index(">")] if link else ""

    assert seen == ["x/blob-only", "x/image", "x/manifest-only"]
