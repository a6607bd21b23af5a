"""The web UI's pages with auth off, through Flask's test client, on SQLite and PostgreSQL:
what a user sees (lists, sorting, paging, search, a manifest taken apart), what the forms
do, that they need the CSRF token, and that hostile content is escaped."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from tests.api.ui_support import csrf_of, html, push_config_image, push_referrer
from tests.helpers import RegistryClient

CONFIG = {
    "created": "2024-05-06T07:08:09Z",
    "architecture": "arm64",
    "os": "linux",
    "config": {
        "Env": ["PATH=/usr/bin", "APP_MODE=prod"],
        "Entrypoint": ["/app/serve"],
        "Cmd": ["--port", "8080"],
        "Labels": {"org.opencontainers.image.title": "demo"},
        "ExposedPorts": {"8080/tcp": {}},
    },
    "history": [
        {"created": "2024-05-06T07:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:abc in /"},
        {"created": "2024-05-06T07:08:00Z", "created_by": "/bin/sh -c apk add curl"},
    ],
}


def tag_names(page: str) -> list[str]:
    return re.findall(r'<tr data-tag="([^"]+)">', page)


def repo_names(page: str) -> list[str]:
    return re.findall(r'<a class="repo" href="[^"]+">([^<]+)</a>', page)


def api_tags(client: FlaskClient, repo: str) -> list[str]:
    response = client.get(f"/v2/{repo}/tags/list")
    return response.get_json().get("tags", []) if response.status_code == 200 else []


# --- repositories ------------------------------------------------------------------------------


def test_repository_list_shows_figures_and_links(client: FlaskClient, registry: RegistryClient):
    registry.push_image("team/app", "v1")
    registry.push_image("team/app", "v2")
    registry.push_image("solo", "latest", layers=1)
    page = html(client.get("/ui/"))
    assert repo_names(page) == ["solo", "team/app"]
    row = page[page.index(">team/app<") :].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[0] == "2"  # tags
    assert "KiB" in cells[1]  # two images of two 1 KiB layers each
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", cells[2])
    assert 'href="/ui/repo/team/app"' in page


def test_repository_search_is_a_substring_match(client: FlaskClient, registry: RegistryClient):
    for name in ("team/web", "team/api", "other/webhook", "under_score"):
        registry.push_image(name, "v1", layers=1)
    assert repo_names(html(client.get("/ui/?q=web"))) == ["other/webhook", "team/web"]
    assert repo_names(html(client.get("/ui/?q=TEAM"))) == ["team/api", "team/web"]
    # LIKE's wildcards are searched for literally.
    assert repo_names(html(client.get("/ui/?q=_"))) == ["under_score"]
    assert repo_names(html(client.get("/ui/?q=%25"))) == []
    assert "0 repositories" in html(client.get("/ui/?q=nothing-like-it"))


def test_repositories_sort_by_each_column(client: FlaskClient, registry: RegistryClient):
    registry.push_image("few", "v1", layers=1)
    for tag in ("a", "b", "c"):
        registry.push_image("many", tag, layers=3)
    registry.push_image("mid", "a", layers=1)
    registry.push_image("mid", "b", layers=1)
    assert repo_names(html(client.get("/ui/?sort=tags&order=desc"))) == ["many", "mid", "few"]
    assert repo_names(html(client.get("/ui/?sort=tags&order=asc"))) == ["few", "mid", "many"]
    assert repo_names(html(client.get("/ui/?sort=size&order=desc")))[0] == "many"
    assert repo_names(html(client.get("/ui/?sort=pushed&order=desc")))[0] == "mid"
    assert repo_names(html(client.get("/ui/?sort=name&order=desc"))) == ["mid", "many", "few"]
    # An unknown sort key is the default order, not an error.
    assert client.get("/ui/?sort=evil;drop&order=sideways").status_code == 200


def test_repositories_are_paged_on_the_server(client: FlaskClient, registry: RegistryClient):
    for i in range(5):
        registry.push_image(f"repo{i}", "v1", layers=1)
    first = html(client.get("/ui/?per_page=2"))
    assert repo_names(first) == ["repo0", "repo1"]
    assert "page 1 of 3" in first and 'rel="next" href="?per_page=2&amp;page=2"' in first
    assert repo_names(html(client.get("/ui/?per_page=2&page=3"))) == ["repo4"]
    # Past the end, or nonsense: the nearest real page.
    assert repo_names(html(client.get("/ui/?per_page=2&page=99"))) == ["repo4"]
    assert repo_names(html(client.get("/ui/?per_page=x&page=-1")))[:2] == ["repo0", "repo1"]


# --- one repository ----------------------------------------------------------------------------


def test_tags_sort_number_aware_and_by_push_time(client: FlaskClient, registry: RegistryClient):
    for tag in ("v1.10", "v1.9", "v2.0", "latest", "v1.2"):
        registry.push_image("team/app", tag, layers=1)
    page = html(client.get("/ui/repo/team/app"))
    assert tag_names(page) == ["latest", "v1.2", "v1.9", "v1.10", "v2.0"]
    assert tag_names(html(client.get("/ui/repo/team/app?order=desc")))[0] == "v2.0"
    pushed = tag_names(html(client.get("/ui/repo/team/app?sort=pushed&order=desc")))
    assert pushed == ["v1.2", "latest", "v2.0", "v1.9", "v1.10"]
    paged = html(client.get("/ui/repo/team/app?per_page=2&page=2"))
    assert tag_names(paged) == ["v1.9", "v1.10"] and "page 2 of 3" in paged


def test_tag_rows_show_digest_type_size_created_and_platforms(
    client: FlaskClient, registry: RegistryClient
):
    image = push_config_image(registry, "team/app", "v1", CONFIG)
    other = registry.push_image("team/app", None)
    index = registry.push_index("team/app", "multi", [image, other])
    page = html(client.get("/ui/repo/team/app", headers={"Host": "registry.example:8443"}))
    row = page[page.index('data-tag="v1"') :].split("</tr>")[0]
    assert f'title="{image.digest}"' in row and image.digest[:19] in row
    assert "OCI image" in row and "2024-05-06 07:08 UTC" in row
    multi = page[page.index('data-tag="multi"') :].split("</tr>")[0]
    assert "OCI index" in multi and "linux/arch0, linux/arch1" in multi
    assert index[:19] in multi
    # The pull command names the host the browser used.
    assert "docker pull registry.example:8443/team/app:" in page
    assert 'data-copy="docker pull registry.example:8443/team/app:v1"' in page


def test_unknown_repository_is_a_404_page(client: FlaskClient):
    response = client.get("/ui/repo/no/such/repo")
    assert response.status_code == 404
    assert "text/html" in response.content_type and "NAME_UNKNOWN" in html(response)


# --- one manifest ------------------------------------------------------------------------------


def test_manifest_page_shows_layers_config_and_history(
    client: FlaskClient, registry: RegistryClient
):
    image = push_config_image(registry, "team/app", "v1", CONFIG, layers=3)
    page = html(client.get(f"/ui/repo/team/app/-/manifest/{image.digest}"))
    layers = page[page.index('id="layers"') :].split("</table>")[0]
    assert layers.count("<tr>") == 1 + 3  # header row, then one per layer (config row apart)
    assert 'class="config"' in layers
    for text in (
        "APP_MODE=prod",
        "/app/serve",
        "--port",
        "org.opencontainers.image.title",
        "linux/arm64",
        "8080/tcp",
        "ADD file:abc in /",
        "RUN apk add curl",
        "v1",
    ):
        assert text in page, text
    # By tag works too.
    assert client.get("/ui/repo/team/app/-/manifest/v1").status_code == 200


def test_index_page_lists_children_per_platform(client: FlaskClient, registry: RegistryClient):
    amd = registry.push_image("team/app", None)
    arm = registry.push_image("team/app", None)
    index = registry.push_index("team/app", "multi", [amd, arm])
    page = html(client.get(f"/ui/repo/team/app/-/manifest/{index}"))
    children = page[page.index('id="children"') :].split("</table>")[0]
    assert "linux/arch0" in children and "linux/arch1" in children
    assert f'href="/ui/repo/team/app/-/manifest/{amd.digest}"' in children
    assert f'href="/ui/repo/team/app/-/manifest/{arm.digest}"' in children


def test_referrers_are_shown_as_a_tree(client: FlaskClient, registry: RegistryClient):
    image = registry.push_image("team/app", "v1")
    sbom = push_referrer(registry, "team/app", image, "application/spdx+json")
    signature = push_referrer(
        registry, "team/app", sbom, "application/vnd.dev.cosign.artifact.sig.v1+json"
    )
    page = html(client.get(f"/ui/repo/team/app/-/manifest/{image.digest}"))
    tree = page[page.index('id="referrers"') :]
    assert "application/spdx+json" in tree and "cosign" in tree
    # The signature hangs under the SBOM it signs, not beside it.
    assert (
        tree.index(sbom[:19])
        < tree.index("<ul", tree.index(sbom[:19]))
        < tree.index(signature[:19])
    )
    referrer_page = html(client.get(f"/ui/repo/team/app/-/manifest/{sbom}"))
    assert (
        "artifact" in referrer_page
        and f'href="/ui/repo/team/app/-/manifest/{image.digest}"' in referrer_page
    )


@pytest.mark.parametrize(
    ("reference", "status"),
    [("sha256:" + "0" * 64, 404), ("sha256:zz", 400), ("no$uch", 400), ("missing", 404)],
)
def test_bad_manifest_references_are_client_errors(
    client: FlaskClient, registry: RegistryClient, reference: str, status: int
):
    registry.push_image("team/app", "v1")
    response = client.get(f"/ui/repo/team/app/-/manifest/{reference}")
    assert response.status_code == status
    assert "text/html" in response.content_type


# --- changes -----------------------------------------------------------------------------------


def test_delete_several_tags_at_once(client: FlaskClient, registry: RegistryClient):
    for tag in ("a", "b", "c", "d"):
        registry.push_image("team/app", tag, layers=1)
    token = csrf_of(client, "/ui/repo/team/app")
    response = client.post(
        "/ui/repo/team/app/-/delete-tags", data={"csrf_token": token, "tag": ["b", "d"]}
    )
    assert response.status_code == 303
    assert api_tags(client, "team/app") == ["a", "c"]
    page = html(client.get(response.headers["Location"]))
    assert "Deleted 2 tags: b, d" in page and tag_names(page) == ["a", "c"]


def test_forms_without_the_csrf_token_are_refused(client: FlaskClient, registry: RegistryClient):
    registry.push_image("team/app", "a")
    csrf_of(client, "/ui/repo/team/app")  # the client has its CSRF cookie
    for data in ({"tag": ["a"]}, {"tag": ["a"], "csrf_token": "forged" * 7 + "x"}):
        response = client.post("/ui/repo/team/app/-/delete-tags", data=data)
        assert response.status_code == 403 and "CSRF" in html(response)
    # A fresh browser (no cookie) posting a token it read elsewhere fails too.
    token = csrf_of(client, "/ui/repo/team/app")
    stranger = client.application.test_client()
    assert (
        stranger.post(
            "/ui/repo/team/app/-/delete-tags", data={"csrf_token": token, "tag": ["a"]}
        ).status_code
        == 403
    )
    assert api_tags(client, "team/app") == ["a"]


def test_delete_a_manifest_takes_its_tags(client: FlaskClient, registry: RegistryClient):
    image = registry.push_image("team/app", "a")
    registry.put_manifest("team/app", "also-a", image.manifest)
    registry.push_image("team/app", "b")
    page = html(client.get(f"/ui/repo/team/app/-/manifest/{image.digest}"))
    assert "and tags also-a, a" in page or "(and tags a, also-a)" in page
    token = csrf_of(client, f"/ui/repo/team/app/-/manifest/{image.digest}")
    response = client.post(
        "/ui/repo/team/app/-/delete-manifest", data={"csrf_token": token, "digest": image.digest}
    )
    assert response.status_code == 303 and api_tags(client, "team/app") == ["b"]
    assert client.get(f"/v2/team/app/manifests/{image.digest}").status_code == 404
    bad = client.post(
        "/ui/repo/team/app/-/delete-manifest", data={"csrf_token": token, "digest": "sha256:zz"}
    )
    assert bad.status_code == 400


def test_delete_repository_needs_its_name_typed(client: FlaskClient, registry: RegistryClient):
    registry.push_image("team/app", "a")
    registry.push_image("team/app", "b")
    confirm = html(client.get("/ui/repo/team/app/-/delete"))
    assert "2 tags" in confirm and "team/app" in confirm
    token = csrf_of(client, "/ui/repo/team/app/-/delete")
    wrong = client.post("/ui/repo/team/app/-/delete", data={"csrf_token": token, "confirm": "team"})
    assert wrong.status_code == 400 and api_tags(client, "team/app") == ["a", "b"]
    done = client.post(
        "/ui/repo/team/app/-/delete", data={"csrf_token": token, "confirm": "team/app"}
    )
    assert done.status_code == 200 and "Deleted team/app" in html(done)
    assert client.get("/v2/team/app/tags/list").status_code == 404
    assert "team/app" not in repo_names(html(client.get("/ui/")))


def test_gc_page_counts_what_a_dry_run_would_free(client: FlaskClient, registry: RegistryClient):
    page = html(client.get("/ui/gc"))
    assert 'id="gc-report"' not in page  # counting walks the store: only when asked
    registry.push_image("team/app", "a")
    report = html(client.get("/ui/gc?run=1&untagged=1"))
    assert 'id="gc-report"' in report and "of 1" in report


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "notifications": [{"name": "ci", "url": "http://127.0.0.1:9/hook"}],
            "notifications_in_server": False,
        }
    ],
)
def test_webhook_status_page_shows_each_endpoint(client: FlaskClient, registry: RegistryClient):
    registry.push_image("team/app", "a")
    page = html(client.get("/ui/webhooks"))
    row = page[page.index("<td") :].split("</tr>")[0]
    assert "ci" in row and "enabled" in row
    pending, sent, _failed = (int(n) for n in re.findall(r'<td class="num">(\d+)</td>', row))
    assert pending >= 1 and sent == 0  # the push's events wait: the endpoint is down


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"ui": "read-only"}, {"delete_enabled": False}])
def test_read_only_ui_offers_and_allows_no_deletes(client: FlaskClient, registry: RegistryClient):
    registry.push_image("team/app", "a")
    page = html(client.get("/ui/repo/team/app"))
    assert 'id="delete-tags"' not in page and 'type="checkbox"' not in page
    assert "delete-repository" not in page
    token = csrf_of(client, "/ui/repo/team/app")
    response = client.post(
        "/ui/repo/team/app/-/delete-tags", data={"csrf_token": token, "tag": ["a"]}
    )
    assert response.status_code == 403 and api_tags(client, "team/app") == ["a"]


@pytest.mark.parametrize("settings_overrides", [{"ui": "off"}])
def test_ui_off_serves_nothing(client: FlaskClient):
    assert client.get("/ui/").status_code == 404
    assert client.get("/ui/static/ui.js").status_code == 404
    assert client.get("/v2/").status_code == 200


# --- escaping ----------------------------------------------------------------------------------

HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_hostile_labels_annotations_and_queries_are_escaped(
    client: FlaskClient, registry: RegistryClient
):
    config = {
        **CONFIG,
        "config": {"Labels": {HOSTILE: HOSTILE}, "Env": [HOSTILE]},
        "history": [{"created_by": HOSTILE}],
        "created": HOSTILE,
    }
    image = push_config_image(registry, "team/app", "v1", config)
    referrer = push_referrer(registry, "team/app", image, "application/x-test", {HOSTILE: HOSTILE})
    pages = [
        client.get(f"/ui/repo/team/app/-/manifest/{image.digest}"),
        client.get(f"/ui/repo/team/app/-/manifest/{referrer}"),
        client.get("/ui/repo/team/app"),
        client.get("/ui/?q=" + HOSTILE),
        client.get("/ui/repo/team/app?deleted=" + HOSTILE),
    ]
    for response in pages:
        body = html(response)
        assert response.status_code == 200
        assert "<script>alert" not in body and "<img src=x" not in body
        assert "Content-Security-Policy" in response.headers
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html(pages[0])
    assert "&lt;script&gt;" in html(pages[1])  # the referrer's annotation


def test_pages_render_without_javascript_and_use_relative_urls(
    client: FlaskClient, registry: RegistryClient
):
    registry.push_image("team/app", "v1")
    page = html(client.get("/ui/repo/team/app", base_url="https://registry.example"))
    # Links and form targets are paths: they work behind any front end's scheme and host.
    assert "http://" not in page and "https://" not in page
    assert '<form method="post" action="/ui/repo/team/app/-/delete-tags"' in page
    assert client.get("/ui/static/ui.css").status_code == 200
    for path in ("/ui/", "/ui/repo/team/app", "/ui/repo/team/app/-/manifest/v1", "/ui/gc"):
        assert client.get(path).content_type == "text/html; charset=utf-8", path
