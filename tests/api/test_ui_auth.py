"""The web UI with access control on: logging in with the registry's own accounts, the
session cookie, what each user is shown and offered, and the policy enforced again on every
form posted, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.auth import users
from tests.api.test_auth import COST, basic
from tests.api.ui_support import csrf_of, html
from tests.helpers import RegistryClient

PASSWORDS = {"root": "root-pw", "reader": "reader-pw", "cleaner": "cleaner-pw"}
RULES = [
    {"repository": "team/*", "users": ["reader", "cleaner"], "actions": ["pull"]},
    {"repository": "team/*", "users": ["cleaner"], "actions": ["delete"]},
]


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"auth": "basic", "auth_rules": RULES, "auth_admins": {"users": ["root"]}}


@pytest.fixture
def seeded(app: Flask) -> RegistryClient:
    """Accounts, and content pushed by the admin through the API."""
    for name, password in PASSWORDS.items():
        users.add(app.extensions["berth"].db, name, password, COST)
    root = app.test_client()
    root.environ_base["HTTP_AUTHORIZATION"] = basic("root", PASSWORDS["root"])
    registry = RegistryClient(root)
    for repo in ("team/app", "team/web", "secret/vault"):
        registry.push_image(repo, "v1", layers=1)
        registry.push_image(repo, "v2", layers=1)
    return registry


def log_in(client: FlaskClient, user: str, password: str | None = None, **kwargs: object):
    token = csrf_of(client, "/ui/login")
    form = {"csrf_token": token, "username": user, "password": password or PASSWORDS[user]}
    return client.post("/ui/login", data={**form, **kwargs})


def repo_names(page: str) -> list[str]:
    return re.findall(r'<a class="repo" href="[^"]+">([^<]+)</a>', page)


def api_tags(registry: RegistryClient, repo: str) -> list[str]:
    return registry.http.get(f"/v2/{repo}/tags/list").get_json()["tags"]


def test_anonymous_visitors_are_sent_to_the_login_form(client: FlaskClient, seeded):
    response = client.get("/ui/repo/team/app?sort=pushed")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/ui/login?next=")
    assert "team/app" not in html(client.get("/ui/login"))
    assert client.get("/ui/static/ui.css").status_code == 200


def test_login_checks_the_registry_accounts_and_sets_a_safe_cookie(client: FlaskClient, seeded):
    wrong = log_in(client, "reader", "not-it")
    assert wrong.status_code == 401 and "invalid username or password" in html(wrong)
    unknown = log_in(client, "nobody", "whatever")
    assert unknown.status_code == 401
    response = log_in(client, "reader", next="/ui/repo/team/app")
    assert response.status_code == 303 and response.headers["Location"] == "/ui/repo/team/app"
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if "berth_ui_session=" in c)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    assert 'id="user">reader<' in html(client.get("/ui/"))


def test_the_cookie_is_secure_behind_tls(app: Flask, seeded):
    client = app.test_client()
    login_page = html(client.get("/ui/login", base_url="https://registry.example"))
    token = re.search(r'name="csrf_token" value="([^"]+)"', login_page).group(1)
    response = client.post(
        "/ui/login",
        data={"csrf_token": token, "username": "reader", "password": PASSWORDS["reader"]},
        base_url="https://registry.example",
    )
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if "berth_ui_session=" in c)
    assert "Secure" in cookie


def test_login_never_redirects_off_site(client: FlaskClient, seeded):
    for target in ("https://evil.example/", "//evil.example/ui", "/ui\\@evil.example"):
        response = log_in(client, "reader", next=target)
        assert response.headers["Location"] == "/ui/", target


def test_login_form_needs_its_csrf_token(client: FlaskClient, seeded):
    client.get("/ui/login")
    response = client.post("/ui/login", data={"username": "reader", "password": "reader-pw"})
    assert response.status_code == 403
    assert "berth_ui_session=" not in " ".join(response.headers.getlist("Set-Cookie"))


def test_users_see_only_what_they_may_pull(client: FlaskClient, seeded):
    log_in(client, "reader")
    assert repo_names(html(client.get("/ui/"))) == ["team/app", "team/web"]
    assert "2 repositories" in html(client.get("/ui/"))
    assert repo_names(html(client.get("/ui/?q=a&per_page=1&page=2"))) == ["team/web"]
    assert client.get("/ui/repo/secret/vault").status_code == 403
    assert client.get("/ui/repo/secret/vault/-/manifest/v1").status_code == 403
    admin = client.application.test_client()
    log_in(admin, "root")
    assert repo_names(html(admin.get("/ui/"))) == ["secret/vault", "team/app", "team/web"]


def test_a_reader_is_offered_no_delete_and_refused_when_posting(client: FlaskClient, seeded):
    log_in(client, "reader")
    page = html(client.get("/ui/repo/team/app"))
    assert 'id="delete-tags"' not in page and 'name="tag"' not in page
    assert "delete-repository" not in page
    assert 'id="delete-manifest"' not in html(client.get("/ui/repo/team/app/-/manifest/v1"))
    token = csrf_of(client, "/ui/repo/team/app")
    posts = [
        ("/ui/repo/team/app/-/delete-tags", {"tag": ["v1", "v2"]}),
        ("/ui/repo/team/app/-/delete", {"confirm": "team/app"}),
        ("/ui/repo/team/app/-/delete-manifest", {"digest": "sha256:" + "0" * 64}),
    ]
    for path, form in posts:
        response = client.post(path, data={"csrf_token": token, **form})
        assert response.status_code == 403, path
        assert "DENIED" in html(response)
    assert client.get("/ui/repo/team/app/-/delete").status_code == 403
    assert api_tags(seeded, "team/app") == ["v1", "v2"]


def test_a_user_with_delete_rights_deletes_only_where_allowed(client: FlaskClient, seeded):
    log_in(client, "cleaner")
    page = html(client.get("/ui/repo/team/app"))
    assert 'id="delete-tags"' in page
    token = csrf_of(client, "/ui/repo/team/app")
    response = client.post(
        "/ui/repo/team/app/-/delete-tags", data={"csrf_token": token, "tag": ["v1"]}
    )
    assert response.status_code == 303 and api_tags(seeded, "team/app") == ["v2"]
    # Another user's session token is no good here.
    other = client.application.test_client()
    log_in(other, "reader")
    stolen = client.post(
        "/ui/repo/team/app/-/delete-tags",
        data={"csrf_token": csrf_of(other, "/ui/"), "tag": ["v2"]},
    )
    assert stolen.status_code == 403
    refused = client.post(
        "/ui/repo/secret/vault/-/delete-tags", data={"csrf_token": token, "tag": ["v1"]}
    )
    assert refused.status_code == 403 and api_tags(seeded, "secret/vault") == ["v1", "v2"]


def test_registry_wide_pages_are_for_admins(client: FlaskClient, seeded):
    log_in(client, "reader")
    page = html(client.get("/ui/"))
    assert "/ui/gc" not in page and "/ui/webhooks" not in page
    assert client.get("/ui/gc").status_code == 403
    assert client.get("/ui/webhooks").status_code == 403
    admin = client.application.test_client()
    log_in(admin, "root")
    assert "/ui/gc" in html(admin.get("/ui/"))
    assert admin.get("/ui/gc?run=1").status_code == 200
    assert admin.get("/ui/webhooks").status_code == 200


def test_logout_ends_the_session_on_the_server(client: FlaskClient, seeded):
    response = log_in(client, "reader")
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if "berth_ui_session=" in c)
    session_id = cookie.split("berth_ui_session=")[1].split(";")[0]
    token = csrf_of(client, "/ui/")
    out = client.post("/ui/logout", data={"csrf_token": token})
    assert out.status_code == 303 and out.headers["Location"] == "/ui/login"
    assert client.get("/ui/").status_code == 303
    # The old cookie, replayed by someone who copied it, is dead too.
    replay = client.application.test_client()
    replay.set_cookie("berth_ui_session", session_id, path="/ui")
    assert replay.get("/ui/").status_code == 303


def test_repeated_failed_logins_are_throttled(app: Flask, seeded):
    client = app.test_client()
    limit = app.extensions["berth"].settings.auth_max_failures
    for _ in range(limit):
        assert log_in(client, "reader", "wrong").status_code == 401
    locked = log_in(client, "reader")
    assert locked.status_code == 429 and "Retry-After" in locked.headers


@pytest.mark.parametrize(
    "settings_overrides",
    [{"auth": "token", "auth_rules": RULES, "auth_admins": {"users": ["root"]}}],
)
def test_token_mode_logs_in_with_the_same_accounts(app: Flask):
    for name, password in PASSWORDS.items():
        users.add(app.extensions["berth"].db, name, password, COST)
    client = app.test_client()
    assert log_in(client, "reader").status_code == 303
    assert client.get("/ui/").status_code == 200


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "auth": "basic",
            "auth_rules": RULES,
            "auth_admins": {"users": ["root"]},
            "auth_anonymous_pull": True,
        }
    ],
)
def test_anonymous_pull_lets_visitors_browse_without_deleting(client: FlaskClient, seeded):
    page = html(client.get("/ui/"))
    assert repo_names(page) == ["secret/vault", "team/app", "team/web"]
    assert 'id="login-link"' in page
    repo = html(client.get("/ui/repo/team/app"))
    assert 'id="delete-tags"' not in repo
    token = csrf_of(client, "/ui/repo/team/app")
    response = client.post(
        "/ui/repo/team/app/-/delete-tags", data={"csrf_token": token, "tag": ["v1"]}
    )
    assert response.status_code == 303 and response.headers["Location"].startswith("/ui/login")
    assert api_tags(seeded, "team/app") == ["v1", "v2"]
