"""The web UI behind the sample nginx and Apache (deploy/), over TLS: relative links and
redirects that stay on the front end, cookies marked Secure because the front end says the
request came over https (X-Forwarded-Proto, believed from 127.0.0.1), a login, pages that
render with the host the browser used, and a logout.

nginx runs in front of Berth on PostgreSQL, Apache in front of Berth on SQLite.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from tests.deploy.conftest import Certs, Deployment, start_deployment
from tests.deploy.frontends import V1Stub
from tests.e2e.conftest import add_user

TIMEOUT = 30
ADMIN, PASSWORD = "root", "root-password"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_LINKS = re.compile(r'(?:href|src|action)="([^"]*)"')


@pytest.fixture(params=["nginx", "apache"])
def ui_deployment(
    request: pytest.FixtureRequest,
    certs: Certs,
    storage_root: Path,
    v1_stub: V1Stub,
    tmp_path: Path,
) -> Iterator[Deployment]:
    env = {"BERTH_AUTH": "basic", "BERTH_AUTH_ADMINS": json.dumps({"users": [ADMIN]})}
    yield from start_deployment(
        request.param, request, certs, storage_root, v1_stub, tmp_path, env=env
    )


def _push(session: requests.Session, base: str, repo: str, tag: str) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    layer = b"layer bytes " * 1000
    descriptors = []
    for data, media_type in (
        (config, "application/vnd.oci.image.config.v1+json"),
        (layer, "application/vnd.oci.image.layer.v1.tar+gzip"),
    ):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        done = session.post(f"{base}/v2/{repo}/blobs/uploads/?digest={digest}", data=data)
        assert done.status_code == 201, done.text
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(data)})
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": descriptors[0],
        "layers": descriptors[1:],
    }
    put = session.put(
        f"{base}/v2/{repo}/manifests/{tag}",
        data=json.dumps(manifest).encode(),
        headers={"Content-Type": manifest["mediaType"]},
    )
    assert put.status_code == 201, put.text


def _cookie(response: requests.Response, name: str) -> str:
    """The Set-Cookie header that sets `name`, as the browser gets it."""
    found = [
        value
        for key, value in response.raw.headers.items()
        if key.lower() == "set-cookie" and value.startswith(f"{name}=")
    ]
    assert len(found) == 1, response.headers
    return found[0]


def _assert_relative_links(page: str, berth_host: str) -> None:
    links = _LINKS.findall(page)
    assert links
    for link in links:
        # Paths, fragments or data: URIs: nothing names a scheme or a host the browser would
        # have to reach (Berth's own address behind the proxy least of all).
        assert link.startswith(("/", "#", "?", "data:")) or link == "", link
    assert berth_host not in page


def test_ui_login_and_pages_behind_the_front_end(ui_deployment: Deployment) -> None:
    deployment = ui_deployment
    add_user(deployment.berth.database_url, ADMIN, PASSWORD)
    base, proxy_host = deployment.proxy.url, deployment.proxy.host
    api = requests.Session()
    api.verify, api.trust_env, api.auth = str(deployment.certs.ca), False, (ADMIN, PASSWORD)
    _push(api, base, "team/app", "v1")

    browser = requests.Session()
    browser.verify, browser.trust_env = str(deployment.certs.ca), False

    # Not logged in: a relative redirect to the login form, which stays on the front end.
    first = browser.get(f"{base}/ui/repo/team/app", allow_redirects=False, timeout=TIMEOUT)
    assert first.status_code == 303
    assert first.headers["Location"].startswith("/ui/login?next=")
    csrf_cookie = _cookie(first, "berth_ui_csrf")  # the login form's double submit
    assert "; Secure" in csrf_cookie and "HttpOnly" in csrf_cookie
    form = browser.get(urljoin(base, first.headers["Location"]), timeout=TIMEOUT)
    assert form.status_code == 200 and form.url.startswith(f"{base}/ui/login")
    _assert_relative_links(form.text, deployment.berth.host)
    assert browser.get(f"{base}/ui/static/ui.css", timeout=TIMEOUT).status_code == 200

    # Log in: the session cookie is Secure, HttpOnly and SameSite, and the redirect goes on
    # to the page asked for first.
    token = _CSRF.search(form.text)
    assert token is not None
    login = browser.post(
        f"{base}/ui/login",
        data={
            "csrf_token": token.group(1),
            "username": ADMIN,
            "password": PASSWORD,
            "next": "/ui/repo/team/app",
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert login.status_code == 303, login.text
    assert login.headers["Location"] == "/ui/repo/team/app"
    session_cookie = _cookie(login, "berth_ui_session")
    for attribute in ("; Secure", "HttpOnly", "SameSite=Lax", "Path=/ui"):
        assert attribute in session_cookie, session_cookie

    # Pages render through the proxy, with the host the browser used in the pull commands.
    listing = browser.get(f"{base}/ui/", timeout=TIMEOUT)
    assert listing.status_code == 200 and ">team/app<" in listing.text
    assert f'id="user">{ADMIN}<' in listing.text
    _assert_relative_links(listing.text, deployment.berth.host)
    repository = browser.get(f"{base}/ui/repo/team/app", timeout=TIMEOUT)
    assert repository.status_code == 200 and 'data-tag="v1"' in repository.text
    assert f"docker pull {proxy_host}/team/app:v1" in repository.text
    _assert_relative_links(repository.text, deployment.berth.host)
    manifest = browser.get(f"{base}/ui/repo/team/app/-/manifest/v1", timeout=TIMEOUT)
    assert manifest.status_code == 200 and "application/vnd.oci.image.layer" in manifest.text

    # Log out: the session ends on the server, so the old cookie opens nothing.
    csrf = _CSRF.search(listing.text)
    assert csrf is not None
    stolen = browser.cookies.get("berth_ui_session")
    out = browser.post(
        f"{base}/ui/logout",
        data={"csrf_token": csrf.group(1)},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert out.status_code == 303 and out.headers["Location"] == "/ui/login"
    replay = requests.get(
        f"{base}/ui/",
        cookies={"berth_ui_session": stolen or ""},
        verify=str(deployment.certs.ca),
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert replay.status_code == 303

    # The Secure flag is the front end's X-Forwarded-Proto, not a default: Berth reached
    # directly over plain http sets the cookie without it.
    direct = requests.get(f"{deployment.berth.url}/ui/login", timeout=TIMEOUT)
    assert direct.status_code == 200
    assert "Secure" not in _cookie(direct, "berth_ui_csrf")
