"""Access control with Basic credentials: who may pull, push, delete, list and mount.

Every test runs on SQLite and on PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import base64

import bcrypt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from app.auth import users
from tests.helpers import RegistryClient, error_codes, sha256

COST = 4  # bcrypt cost for test accounts: fast, and still real bcrypt
PASSWORDS = {"root": "root-pw", "reader": "reader-pw", "docker-deployer": "deploy-pw"}
RULES = [
    # Distribution's Apache sample: every valid user pulls, only docker-deployer pushes.
    {"repository": "*", "users": ["*"], "actions": ["pull"]},
    {"repository": "*", "users": ["docker-deployer"], "actions": ["push"]},
]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def as_user(app: Flask, user: str | None, password: str | None = None) -> FlaskClient:
    client = app.test_client()
    if user is not None:
        password = PASSWORDS.get(user, "") if password is None else password
        client.environ_base["HTTP_AUTHORIZATION"] = basic(user, password)
    return client


def add_users(app: Flask, passwords: dict[str, str]) -> None:
    reg = app.extensions["berth"]
    for name, password in passwords.items():
        users.add(reg.db, name, password, COST)


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"auth": "basic", "auth_rules": RULES, "auth_admins": {"users": ["root"]}}


@pytest.fixture
def accounts(app: Flask) -> None:
    add_users(app, PASSWORDS)


IDENTITIES = {
    "anonymous": (None, None),
    "reader": ("reader", None),
    "deployer": ("docker-deployer", None),
    "wrong password": ("reader", "not-the-password"),
    "unknown user": ("nobody", "reader-pw"),
}
# pull, push, delete, catalog, mount
EXPECTED = {
    "anonymous": (401, 401, 401, 401, 401),
    "reader": (200, 403, 403, 200, 403),
    "deployer": (200, 201, 403, 200, 201),
    "wrong password": (401, 401, 401, 401, 401),
    "unknown user": (401, 401, 401, 401, 401),
}


@pytest.mark.parametrize("identity", list(IDENTITIES))
def test_permission_matrix(app: Flask, accounts: None, identity: str) -> None:
    root = RegistryClient(as_user(app, "root"))
    image = root.push_image("library/base", "v1")
    client = as_user(app, *IDENTITIES[identity])

    pull = client.get("/v2/library/base/manifests/v1")
    blob = b"a layer pushed in the matrix"
    push = client.post(f"/v2/library/app/blobs/uploads/?digest={sha256(blob)}", data=blob)
    delete = client.delete(f"/v2/library/base/manifests/{image.digest}")
    catalog = client.get("/v2/_catalog")
    layer = sha256(image.layers[0])
    mount = client.post(f"/v2/library/app/blobs/uploads/?mount={layer}&from=library/base")

    got = tuple(r.status_code for r in (pull, push, delete, catalog, mount))
    assert got == EXPECTED[identity]
    for response in (pull, push, delete, catalog, mount):
        assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        if response.status_code == 401:
            assert error_codes(response) == ["UNAUTHORIZED"]
            assert response.headers["WWW-Authenticate"] == 'Basic realm="Berth Registry"'
        if response.status_code == 403:
            assert error_codes(response) == ["DENIED"]
    if catalog.status_code == 200:
        assert "library/base" in catalog.get_json()["repositories"]
    if pull.status_code == 200:
        assert pull.data == image.manifest
    if mount.status_code == 201:
        assert mount.headers["Docker-Content-Digest"] == layer
        assert client.get(f"/v2/library/app/blobs/{layer}").data == image.layers[0]
    # Nothing was deleted by anyone in the matrix.
    assert root.http.get(f"/v2/library/base/manifests/{image.digest}").status_code == 200


def test_admin_may_delete(app: Flask, accounts: None) -> None:
    root = RegistryClient(as_user(app, "root"))
    image = root.push_image("library/base", "v1")
    assert root.http.delete(f"/v2/library/base/manifests/{image.digest}").status_code == 202
    assert root.http.get("/v2/library/base/manifests/v1").status_code == 404


def test_docker_login_probe(app: Flask, accounts: None) -> None:
    probe = as_user(app, None).get("/v2/")
    assert probe.status_code == 401
    assert probe.headers["WWW-Authenticate"] == 'Basic realm="Berth Registry"'
    assert probe.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert error_codes(probe) == ["UNAUTHORIZED"]
    assert as_user(app, "reader").get("/v2/").status_code == 200
    # A HEAD probe gets the same status and headers, without a body.
    head = as_user(app, None).head("/v2/")
    assert head.status_code == 401 and "WWW-Authenticate" in head.headers


def test_wrong_password_and_unknown_user_look_the_same(app: Flask, accounts: None) -> None:
    def answer(user: str, password: str) -> tuple[int, dict[str, str], bytes]:
        response = as_user(app, user, password).get("/v2/library/base/tags/list")
        headers = {k: v for k, v in response.headers.items() if k != "X-Request-Id"}
        return response.status_code, headers, response.data

    wrong = answer("reader", "nope")
    assert wrong[0] == 401
    assert answer("nobody", "nope") == wrong
    assert answer("reader", "x" * 100) == wrong  # past bcrypt's 72 bytes: refused, no 500
    garbled = as_user(app, None)
    garbled.environ_base["HTTP_AUTHORIZATION"] = "Basic %%%not-base64"
    assert garbled.get("/v2/").status_code == 401


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "auth": "basic",
            "auth_rules": [
                {"repository": "team/*", "groups": ["team"], "actions": ["pull", "push"]},
                {"repository": "secret/*", "users": ["bob"], "actions": ["*"]},
            ],
            "auth_groups": {"team": ["alice"]},
        }
    ],
)
def test_group_rules_catalog_and_mount(app: Flask) -> None:
    add_users(app, {"alice": "alice-pw", "bob": "bob-pw"})
    alice = RegistryClient(as_user(app, "alice", "alice-pw"))
    bob = RegistryClient(as_user(app, "bob", "bob-pw"))
    for repo in ("team/a", "team/b", "team/c"):
        alice.push_image(repo, "v1")
    secret = bob.push_image("secret/x", "v1")

    # The catalog lists what the caller may pull, page by page.
    assert alice.http.get("/v2/_catalog").get_json()["repositories"] == [
        "team/a",
        "team/b",
        "team/c",
    ]
    first = alice.http.get("/v2/_catalog?n=2")
    assert first.get_json()["repositories"] == ["team/a", "team/b"]
    assert first.headers["Link"] == '</v2/_catalog?last=team%2Fb&n=2>; rel="next"'
    assert alice.http.get("/v2/_catalog?n=2&last=team/b").get_json()["repositories"] == ["team/c"]
    assert bob.http.get("/v2/_catalog").get_json()["repositories"] == ["secret/x"]

    # A mount from a repository alice may not pull falls back to an ordinary upload...
    layer = sha256(secret.layers[0])
    fallback = alice.http.post(f"/v2/team/a/blobs/uploads/?mount={layer}&from=secret/x")
    assert fallback.status_code == 202
    assert fallback.headers["Location"].startswith("/v2/team/a/blobs/uploads/")
    assert alice.http.get(f"/v2/team/a/blobs/{layer}").status_code == 404
    # ...while one from her own team's repository mounts.
    team_layer = sha256(alice.push_image("team/b", "v2").layers[0])
    assert (
        alice.http.post(f"/v2/team/c/blobs/uploads/?mount={team_layer}&from=team/b").status_code
        == 201
    )

    assert alice.http.get("/v2/secret/x/manifests/v1").status_code == 403
    assert alice.http.delete("/v2/team/a/manifests/v1").status_code == 403
    assert bob.http.post("/v2/team/a/blobs/uploads/").status_code == 403
    assert bob.http.delete(f"/v2/secret/x/manifests/{secret.digest}").status_code == 202


@pytest.mark.parametrize(
    "settings_overrides",
    [{"auth": "basic", "auth_rules": RULES, "auth_anonymous_pull": True}],
)
def test_anonymous_pull(app: Flask, accounts: None) -> None:
    image = RegistryClient(as_user(app, "docker-deployer")).push_image("library/base", "v1")
    anonymous = as_user(app, None)
    assert anonymous.get("/v2/library/base/manifests/v1").data == image.manifest
    # containers/image (skopeo, podman) sends empty Basic credentials when it has none.
    empty = as_user(app, "", "")
    assert empty.get("/v2/library/base/manifests/v1").data == image.manifest
    assert anonymous.get("/v2/_catalog").get_json()["repositories"] == ["library/base"]
    push = anonymous.post("/v2/library/base/blobs/uploads/")
    assert push.status_code == 401
    # A Bearer challenge: docker, challenged with Basic, refuses to pull without
    # credentials; with a token endpoint it fetches an anonymous pull token instead.
    assert push.headers["WWW-Authenticate"] == (
        'Bearer realm="http://localhost/auth/token",service="berth",'
        'scope="repository:library/base:pull,push"'
    )
    # Credentials, when sent, are still checked.
    assert as_user(app, "reader", "wrong").get("/v2/library/base/manifests/v1").status_code == 401


@pytest.mark.parametrize(
    "settings_overrides",
    [{"auth": "basic", "auth_rules": RULES, "auth_anonymous_pull": True}],
)
def test_anonymous_pull_token_flow_as_docker_does_it(app: Flask, accounts: None) -> None:
    image = RegistryClient(as_user(app, "docker-deployer")).push_image("library/base", "v1")
    scope = "repository:library/base:pull,push"
    # Anonymous: a token that pulls and nothing more.
    anonymous = as_user(app, None)
    token = anonymous.get(f"/auth/token?service=berth&scope={scope}").get_json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    assert anonymous.get("/v2/", headers=bearer).status_code == 200
    got = anonymous.get("/v2/library/base/manifests/v1", headers=bearer)
    assert got.data == image.manifest
    refused = anonymous.post("/v2/library/base/blobs/uploads/", headers=bearer)
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' not in refused.headers["WWW-Authenticate"]
    # docker login: a wrong password gets no token, the right one does, and it pushes.
    assert (
        as_user(app, "docker-deployer", "wrong").get("/auth/token?service=berth").status_code == 401
    )
    deployer = as_user(app, "docker-deployer")
    token = deployer.get(f"/auth/token?service=berth&scope={scope}").get_json()["token"]
    pushed = as_user(app, None).post(
        "/v2/library/base/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}
    )
    assert pushed.status_code == 202


@pytest.mark.parametrize(
    "settings_overrides",
    [{"auth": "basic", "auth_rules": RULES, "auth_max_failures": 3, "auth_failure_window": 60}],
)
def test_repeated_failures_get_429_with_retry_after(app: Flask, accounts: None) -> None:
    attacker = as_user(app, "reader", "guess")
    for _ in range(3):
        assert attacker.get("/v2/").status_code == 401
    blocked = attacker.get("/v2/")
    assert blocked.status_code == 429
    assert error_codes(blocked) == ["TOOMANYREQUESTS"]
    assert 1 <= int(blocked.headers["Retry-After"]) <= 60
    # Even the right password waits, from that address...
    assert as_user(app, "reader").get("/v2/").status_code == 429
    # ...but not from another one,
    elsewhere = as_user(app, "reader")
    elsewhere.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    assert elsewhere.get("/v2/").status_code == 200

    # No proxy is trusted unless the settings name it: a client on this host that makes up a
    # new X-Forwarded-For for every guess is still counted by its own address.
    for hop in ("203.0.113.1", "203.0.113.2"):
        rotated = attacker.get("/v2/", headers={"X-Forwarded-For": hop})
        assert rotated.status_code == 429


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "auth": "basic",
            "auth_rules": RULES,
            "auth_max_failures": 3,
            "auth_failure_window": 60,
            "forwarded_allow_ips": "127.0.0.1",
        }
    ],
)
def test_behind_a_trusted_proxy_failures_count_by_the_forwarded_address(
    app: Flask, accounts: None
) -> None:
    # Behind the named proxy, clients count by the address the proxy appended.
    def via_proxy(forwarded_for: str, password: str | None = None) -> TestResponse:
        client = as_user(app, "reader", password)
        return client.get("/v2/", headers={"X-Forwarded-For": forwarded_for})

    assert via_proxy("198.51.100.4").status_code == 200
    for _ in range(3):
        assert via_proxy("10.1.1.1, 198.51.100.4", "guess").status_code == 401
    assert via_proxy("198.51.100.4").status_code == 429
    assert via_proxy("198.51.100.5").status_code == 200
    # A peer that is not the proxy cannot pose as someone else through X-Forwarded-For.
    elsewhere = as_user(app, "reader", "guess")
    elsewhere.environ_base["REMOTE_ADDR"] = "192.0.2.7"
    for _ in range(3):
        elsewhere.get("/v2/")
    dodge = elsewhere.get("/v2/", headers={"X-Forwarded-For": "203.0.113.9"})
    assert dodge.status_code == 429


def test_password_change_and_delete_drop_cached_logins(app: Flask, accounts: None) -> None:
    reg = app.extensions["berth"]
    reader = as_user(app, "reader")
    assert reader.get("/v2/").status_code == 200  # now cached
    users.set_password(reg.db, "reader", "new-pw", COST)
    assert reader.get("/v2/").status_code == 401
    assert as_user(app, "reader", "new-pw").get("/v2/").status_code == 200
    users.remove(reg.db, "reader")
    assert as_user(app, "reader", "new-pw").get("/v2/").status_code == 401


@pytest.fixture
def htpasswd_file(tmp_path) -> str:
    # Apache's `htpasswd -B` writes $2y$ hashes; a crypt/MD5 entry is skipped.
    hashed = bcrypt.hashpw(b"from-file", bcrypt.gensalt(COST)).decode()
    path = tmp_path / "htpasswd"
    path.write_text(
        f"# carried over\ndocker-deployer:{hashed.replace('$2b$', '$2y$', 1)}\n"
        "legacy:$apr1$abcdefgh$0123456789abcdefghijkl\n"
    )
    return str(path)


def test_htpasswd_file(database_url: str, htpasswd_file: str) -> None:
    from app import create_app

    app = create_app(
        {
            "database_url": database_url,
            "storage_driver": "inmemory",
            "auth": "basic",
            "auth_rules": RULES,
            "auth_htpasswd": htpasswd_file,
        }
    )
    try:
        deployer = RegistryClient(as_user(app, "docker-deployer", "from-file"))
        deployer.push_image("library/base", "v1")
        assert as_user(app, "legacy", "anything").get("/v2/").status_code == 401
        # The file is re-read when it changes.
        with open(htpasswd_file, "a") as f:
            f.write(f"reader:{bcrypt.hashpw(b'r', bcrypt.gensalt(COST)).decode()}\n")
        assert as_user(app, "reader", "r").get("/v2/library/base/manifests/v1").status_code == 200
    finally:
        app.extensions["berth"].db.dispose()


@pytest.mark.parametrize(
    "settings_overrides",
    [{"auth": "basic", "auth_admins": {"groups": ["ops"]}, "auth_groups": {"ops": ["root"]}}],
)
def test_api_paths_need_an_admin(app: Flask, accounts: None) -> None:
    RegistryClient(as_user(app, "root")).push_image("library/base", "v1")
    path = "/api/v1/repositories/library/base"
    anonymous = as_user(app, None).delete(path)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Basic realm="Berth Registry"'
    assert as_user(app, "reader", "wrong").delete(path).status_code == 401
    reader = as_user(app, "reader").delete(path)
    assert reader.status_code == 403
    assert error_codes(reader) == ["DENIED"]
    assert as_user(app, "root").get("/v2/library/base/manifests/v1").status_code == 200
    # root is an admin through the ops group: the guard lets the request through.
    assert as_user(app, "root").delete(path).status_code not in (401, 403)


@pytest.mark.parametrize("settings_overrides", [{}])
def test_auth_is_off_by_default(client: FlaskClient, registry: RegistryClient) -> None:
    registry.push_image("library/base", "v1")
    assert client.get("/v2/").status_code == 200
    assert client.get("/v2/_catalog").get_json()["repositories"] == ["library/base"]
