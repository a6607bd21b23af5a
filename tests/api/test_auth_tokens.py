"""Docker token authentication: the token endpoint, Bearer challenges, and bad tokens.

Every test runs on SQLite and on PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.auth import tokens
from tests.api.test_auth import PASSWORDS, RULES, add_users, as_user, basic
from tests.helpers import RegistryClient, error_codes, sha256

CHALLENGE = 'Bearer realm="http://localhost/auth/token",service="berth"'


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    return {"auth": "token", "auth_rules": RULES, "auth_admins": {"users": ["root"]}}


@pytest.fixture
def accounts(app: Flask) -> None:
    add_users(app, PASSWORDS)


def get_token(client: FlaskClient, user: str | None, *scopes: str) -> dict[str, Any]:
    headers = {"Authorization": basic(user, PASSWORDS[user])} if user else {}
    query = "&".join(f"scope={s}" for s in scopes)
    response = client.get(f"/auth/token?service=berth&{query}", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def bearer(app: Flask, token: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def access_of(token: str) -> list[dict[str, Any]]:
    return jwt.decode(token, options={"verify_signature": False})["access"]


def signing_key(app: Flask) -> tokens.SigningKey:
    return app.extensions["berth"].guard.key()


def forge(key: tokens.SigningKey, subject: str, access: list[dict], **kw: Any) -> str:
    token, _ = tokens.issue(
        key, kw.get("issuer", "berth"), kw.get("service", "berth"), 300, subject, access,
        now=kw.get("now"),
    )  # fmt: skip
    return token


def push_as(app: Flask, client: FlaskClient, user: str, repo: str):
    token = get_token(client, user, f"repository:{repo}:pull,push")["token"]
    return RegistryClient(bearer(app, token)).push_image(repo, "v1")


def test_challenge_names_realm_service_and_scope(client: FlaskClient, accounts: None) -> None:
    probe = client.get("/v2/")
    assert probe.status_code == 401
    assert probe.headers["WWW-Authenticate"] == CHALLENGE
    assert probe.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert error_codes(probe) == ["UNAUTHORIZED"]

    push = client.post("/v2/library/app/blobs/uploads/")
    assert (
        push.headers["WWW-Authenticate"] == CHALLENGE + ',scope="repository:library/app:pull,push"'
    )
    catalog = client.get("/v2/_catalog")
    assert catalog.headers["WWW-Authenticate"] == CHALLENGE + ',scope="registry:catalog:*"'
    # Basic credentials are not a token: the answer is the same challenge.
    basic_try = as_user(client.application, "root").get("/v2/")
    assert basic_try.status_code == 401
    assert basic_try.headers["WWW-Authenticate"] == CHALLENGE


def test_token_endpoint_grants_no_more_than_the_rules(client: FlaskClient, accounts: None) -> None:
    body = get_token(client, "reader", "repository:library/app:pull,push,delete")
    assert set(body) >= {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"] and body["expires_in"] == 300
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == "reader" and claims["aud"] == "berth" and claims["iss"] == "berth"
    assert {"exp", "nbf", "iat", "jti"} <= set(claims)
    assert claims["access"] == [{"type": "repository", "name": "library/app", "actions": ["pull"]}]
    deployer = get_token(
        client, "docker-deployer", "repository:library/app:pull,push,delete", "registry:catalog:*"
    )
    assert access_of(deployer["token"]) == [
        {"type": "repository", "name": "library/app", "actions": ["pull", "push"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    root = get_token(client, "root", "repository:library/app:*")
    assert access_of(root["token"])[0]["actions"] == ["delete", "pull", "push"]


def test_token_endpoint_refuses_bad_credentials_and_scopes(
    client: FlaskClient, accounts: None
) -> None:
    wrong = client.get(
        "/auth/token?scope=repository:a:pull", headers={"Authorization": basic("reader", "no")}
    )
    assert wrong.status_code == 401
    assert wrong.headers["WWW-Authenticate"] == 'Basic realm="Berth Registry"'
    assert error_codes(wrong) == ["UNAUTHORIZED"]
    anonymous = client.get("/auth/token?scope=repository:a:pull")
    assert anonymous.status_code == 401
    malformed = client.get(
        "/auth/token?scope=nonsense", headers={"Authorization": basic("reader", "reader-pw")}
    )
    assert malformed.status_code == 400
    bad_name = client.get(
        "/auth/token?scope=repository:UPPER:pull",
        headers={"Authorization": basic("reader", "reader-pw")},
    )
    assert bad_name.status_code == 400
    assert error_codes(bad_name) == ["NAME_INVALID"]


def test_push_pull_delete_with_tokens(app: Flask, client: FlaskClient, accounts: None) -> None:
    image = push_as(app, client, "docker-deployer", "library/app")
    reader = bearer(app, get_token(client, "reader", "repository:library/app:pull")["token"])
    assert reader.get("/v2/").status_code == 200
    assert reader.get("/v2/library/app/manifests/v1").data == image.manifest
    # Pull granted, push asked for but refused by the rules: DENIED.
    denied = reader.post("/v2/library/app/blobs/uploads/")
    assert denied.status_code == 403
    assert error_codes(denied) == ["DENIED"]
    # A token for another repository: the rules would allow, so ask for a new token.
    other = reader.get("/v2/library/other/tags/list")
    assert other.status_code == 401
    assert other.headers["WWW-Authenticate"] == (
        CHALLENGE + ',scope="repository:library/other:pull",error="insufficient_scope"'
    )
    root_token = get_token(client, "root", "repository:library/app:delete")["token"]
    assert (
        bearer(app, root_token).delete(f"/v2/library/app/manifests/{image.digest}").status_code
        == 202
    )


def test_catalog_with_a_token(app: Flask, client: FlaskClient, accounts: None) -> None:
    push_as(app, client, "docker-deployer", "library/app")
    without = bearer(app, get_token(client, "reader", "repository:library/app:pull")["token"])
    refused = without.get("/v2/_catalog")
    assert refused.status_code == 401
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    listing = bearer(app, get_token(client, "reader", "registry:catalog:*")["token"])
    assert listing.get("/v2/_catalog").get_json() == {"repositories": ["library/app"]}


def test_cross_repository_mount_needs_pull_on_from_in_the_token(
    app: Flask, client: FlaskClient, accounts: None
) -> None:
    image = push_as(app, client, "docker-deployer", "library/base")
    layer = sha256(image.layers[0])
    only_target = get_token(client, "docker-deployer", "repository:library/app:pull,push")
    both = get_token(
        client,
        "docker-deployer",
        "repository:library/app:pull,push",
        "repository:library/base:pull",
    )
    url = f"/v2/library/app/blobs/uploads/?mount={layer}&from=library/base"
    assert bearer(app, only_target["token"]).post(url).status_code == 202  # an ordinary upload
    assert bearer(app, both["token"]).post(url).status_code == 201


def test_expired_token_is_rejected(app: Flask, client: FlaskClient, accounts: None) -> None:
    push_as(app, client, "docker-deployer", "library/app")
    access = [{"type": "repository", "name": "library/app", "actions": ["pull"]}]
    old = forge(signing_key(app), "reader", access, now=time.time() - 3600)
    response = bearer(app, old).get("/v2/library/app/manifests/v1")
    assert response.status_code == 401
    assert error_codes(response) == ["UNAUTHORIZED"]
    assert response.headers["WWW-Authenticate"].endswith(',error="invalid_token"')
    fresh = forge(signing_key(app), "reader", access)
    assert bearer(app, fresh).get("/v2/library/app/manifests/v1").status_code == 200


def test_token_with_a_wrong_signature_is_rejected(
    app: Flask, client: FlaskClient, accounts: None
) -> None:
    push_as(app, client, "docker-deployer", "library/app")
    access = [{"type": "repository", "name": "library/app", "actions": ["pull", "push"]}]
    stranger = tokens._from_pem(tokens.generate_pem().encode())
    foreign = forge(stranger, "docker-deployer", access)
    assert bearer(app, foreign).get("/v2/library/app/manifests/v1").status_code == 401
    # Same key, tampered claims: the signature no longer matches.
    good = forge(signing_key(app), "reader", [{**access[0], "actions": ["pull"]}])
    header, payload, signature = good.split(".")
    evil_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"pull"', b'"push"')
    ).decode()
    tampered = ".".join([header, evil_payload, signature])
    assert bearer(app, tampered).post("/v2/library/app/blobs/uploads/").status_code == 401
    # alg=none and HMAC tokens are never accepted.
    unsigned = jwt.encode({"sub": "root", "aud": "berth", "iss": "berth"}, None, algorithm="none")
    assert bearer(app, unsigned).get("/v2/").status_code == 401
    # A token for another service (audience) or issuer.
    for kw in ({"service": "elsewhere"}, {"issuer": "someone-else"}):
        assert (
            bearer(app, forge(signing_key(app), "root", access, **kw)).get("/v2/").status_code
            == 401
        )


def test_token_wider_than_the_rules_is_rejected(
    app: Flask, client: FlaskClient, accounts: None
) -> None:
    push_as(app, client, "docker-deployer", "library/app")
    # Validly signed, but claims push and delete for a reader: the rules still decide.
    wide = [{"type": "repository", "name": "library/app", "actions": ["pull", "push", "delete"]}]
    token = forge(signing_key(app), "reader", wide)
    client_ = bearer(app, token)
    assert client_.get("/v2/library/app/manifests/v1").status_code == 200
    push = client_.post("/v2/library/app/blobs/uploads/")
    assert push.status_code == 403
    assert error_codes(push) == ["DENIED"]
    assert client_.delete("/v2/library/app/manifests/v1").status_code == 403


@pytest.mark.parametrize(
    "settings_overrides",
    [{"auth": "token", "auth_rules": RULES, "auth_anonymous_pull": True}],
)
def test_anonymous_tokens_pull_only(app: Flask, client: FlaskClient, accounts: None) -> None:
    image = push_as(app, client, "docker-deployer", "library/app")
    body = get_token(client, None, "repository:library/app:pull,push")
    assert access_of(body["token"]) == [
        {"type": "repository", "name": "library/app", "actions": ["pull"]}
    ]
    anonymous = bearer(app, body["token"])
    assert anonymous.get("/v2/library/app/manifests/v1").data == image.manifest
    assert anonymous.post("/v2/library/app/blobs/uploads/").status_code == 401


def test_the_generated_key_is_kept(app: Flask, database_url: str, accounts: None) -> None:
    from app import create_app

    first = signing_key(app)
    other = create_app(
        {"database_url": database_url, "storage_driver": "inmemory", "auth": "token"}
    )
    try:
        assert other.extensions["berth"].guard.key().kid == first.kid
    finally:
        other.extensions["berth"].db.dispose()


def test_configured_key_file(database_url: str, tmp_path) -> None:
    from app import create_app
    from app.config import ConfigError

    key_path = tmp_path / "token.pem"
    key_path.write_text(tokens.generate_pem())
    settings = {"database_url": database_url, "storage_driver": "inmemory", "auth": "token"}
    app = create_app({**settings, "auth_token_key": str(key_path)})
    try:
        assert app.extensions["berth"].guard.key().algorithm == "ES256"
    finally:
        app.extensions["berth"].db.dispose()
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="auth_token_key"):
        create_app({**settings, "auth_token_key": str(tmp_path / "bad.pem")})
