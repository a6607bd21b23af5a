"""docker login, push and pull against `berth serve` with access control, basic and token.

The policy is the Apache sample's: every valid user pulls, only docker-deployer pushes.
Credentials live in the test's DOCKER_CONFIG; the daemon gets them from the CLI per request.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.clients import ClientError
from tests.e2e.docker.conftest import DEPLOYER, READER, AuthServer, LoadImage
from tests.e2e.dockerd import DockerCLI

MODES = ["basic", "token"]


def _saved_auths(docker: DockerCLI) -> dict[str, object]:
    config = docker.config_dir / "config.json"
    return json.loads(config.read_text()).get("auths", {}) if config.exists() else {}


@pytest.mark.parametrize("mode", MODES)
def test_login_push_pull(
    mode: str, auth_server: AuthServer, docker: DockerCLI, load_image: LoadImage
) -> None:
    server = auth_server(mode)
    ref = load_image(f"{server.host}/team/app:v1", "pushed with credentials")

    with pytest.raises(ClientError) as wrong:
        docker.login(server.host, DEPLOYER[0], "not-the-password")
    assert "unauthorized" in wrong.value.stderr.lower()
    assert server.host not in _saved_auths(docker)

    assert "Login Succeeded" in docker.login(server.host, *READER).stdout
    assert server.host in _saved_auths(docker)  # in the test's config, not ~/.docker
    with pytest.raises(ClientError) as denied:
        docker.push(ref)
    assert "denied: requested access to the resource is denied" in denied.value.stderr
    docker("logout", server.host)

    docker.login(server.host, *DEPLOYER)
    digest, _ = docker.push(ref)
    docker("logout", server.host)

    docker.remove_all_images()
    by_digest = f"{server.host}/team/app@{digest}"
    with pytest.raises(ClientError) as anonymous:
        docker("pull", by_digest)
    assert any(w in anonymous.value.stderr.lower() for w in ("unauthorized", "no basic auth"))

    docker.login(server.host, *READER)
    docker("pull", by_digest)
    assert docker.run_in(by_digest, "cat", "/etc/message") == "pushed with credentials"


@pytest.mark.parametrize(
    "mode",
    [
        # basic: with anonymous pulls on, Berth challenges with Bearer (app/auth/guard.py),
        # since docker refuses to go on without credentials after a Basic challenge.
        "basic",
        "token",
    ],
)
def test_anonymous_pull_when_allowed(
    mode: str, auth_server: AuthServer, docker: DockerCLI, load_image: LoadImage
) -> None:
    server = auth_server(mode, anonymous_pull=True)
    ref = load_image(f"{server.host}/team/public:v1", "anyone may read this")
    # Answering docker's anonymous GET /v2/ with 200 would make the pull below work, but then
    # docker never sends credentials: any password logs in and pushes are unauthorized.
    with pytest.raises(ClientError):
        docker.login(server.host, DEPLOYER[0], "not-the-password")
    docker.login(server.host, *DEPLOYER)
    docker.push(ref)
    docker("logout", server.host)
    docker.remove_all_images()
    assert _saved_auths(docker).get(server.host) is None

    load_image(ref, "anonymous push")
    with pytest.raises(ClientError):
        docker.push(ref)
    docker.remove_all_images()
    docker("pull", ref)
    assert docker.run_in(ref, "cat", "/etc/message") == "anyone may read this"
