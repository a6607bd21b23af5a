"""The web UI's mirror page (/ui/mirror): each upstream with its health and what the cache
holds, for administrators only; and cached content counted in the repository list like
pushed content. Against a real Berth upstream on a free port, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.auth import users
from tests.api.test_auth import COST, basic
from tests.api.ui_support import csrf_of, html
from tests.mirror.test_pull_through import PREFIX, pull_all
from tests.upstream import Upstream

PASSWORDS = {"root": "root-pw", "reader": "reader-pw"}


@pytest.fixture
def upstream(tmp_path: Path, sqlite_template: Path) -> Iterator[Upstream]:
    database = tmp_path / "upstream.db"
    database.write_bytes(sqlite_template.read_bytes())
    server = Upstream(database).start()
    yield server
    server.close()


@pytest.fixture
def settings_overrides(upstream: Upstream) -> dict[str, object]:
    return {
        "mirror_upstreams": [
            {"prefix": PREFIX, "url": upstream.url, "ttl": "1h", "connect_timeout": "2s"}
        ],
        "auth": "basic",
        "auth_rules": [{"repository": "*", "users": ["reader"], "actions": ["pull"]}],
        "auth_admins": {"users": ["root"]},
    }


def logged_in(app: Flask, user: str) -> FlaskClient:
    users.add(app.extensions["berth"].db, user, PASSWORDS[user], COST)
    client = app.test_client()
    form = {"csrf_token": csrf_of(client, "/ui/login"), "username": user}
    assert client.post("/ui/login", data={**form, "password": PASSWORDS[user]}).status_code == 303
    return client


def mirror_row(page: str) -> list[str]:
    row = page[page.index(f'<tr data-prefix="{PREFIX}">') :].split("</tr>")[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    return [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]


def test_admins_see_each_upstream_its_health_and_the_cache(app: Flask, upstream: Upstream):
    image = upstream.registry.push_image("team/app", "v1")
    admin = logged_in(app, "root")
    puller = app.test_client()
    puller.environ_base["HTTP_AUTHORIZATION"] = basic("root", PASSWORDS["root"])
    pull_all(puller, f"{PREFIX}/team/app", "v1")

    front = html(admin.get("/ui/"))
    assert 'href="/ui/mirror"' in front
    page = admin.get("/ui/mirror")
    assert page.status_code == 200
    cells = mirror_row(html(page))
    cached = len(image.config) + sum(len(layer) for layer in image.layers)
    assert cells[0].startswith(f"{PREFIX}/") and "default" not in cells[0]
    assert cells[1] == upstream.url
    assert cells[2] == "up"
    assert cells[3:5] == ["1", "3"]  # repositories, blobs
    assert f'title="{cached} bytes"' in html(page)

    # The cached repository is listed with its figures, as a pushed one would be.
    listed = html(admin.get("/ui/?sort=size&order=desc"))
    row = listed[listed.index(f">{PREFIX}/team/app<") :].split("</tr>")[0]
    assert re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[0] == "1"  # its one tag

    upstream.stop()
    cells = mirror_row(html(admin.get("/ui/mirror")))
    assert cells[2].startswith("down (") and cells[3:5] == ["1", "3"]


def test_the_mirror_page_is_for_admins_only(app: Flask, client: FlaskClient):
    assert client.get("/ui/mirror").status_code == 303  # anonymous: to the login form
    reader = logged_in(app, "reader")
    assert reader.get("/ui/mirror").status_code == 403
    assert 'href="/ui/mirror"' not in html(reader.get("/ui/"))


@pytest.mark.parametrize("settings_overrides", [{}])
def test_without_upstreams_there_is_no_mirror_page_to_find(client: FlaskClient):
    assert 'href="/ui/mirror"' not in html(client.get("/ui/"))
    page = client.get("/ui/mirror")
    assert page.status_code == 200 and "No upstreams are configured" in html(page)
