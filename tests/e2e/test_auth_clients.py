"""Real clients against a `berth serve` with access control on, in basic and in token mode.

The Apache sample's policy (every valid user pulls, only docker-deployer pushes), with
accounts made by `berth user add`. skopeo uses --creds; podman logs in, then pushes and pulls.
Basic mode runs on SQLite, token mode on PostgreSQL (the generated signing key is shared
through the database by the server's two workers).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.clients import (
    ClientError,
    ClientSandbox,
    Podman,
    require_tool,
    skopeo_copy,
    skopeo_inspect,
)
from tests.e2e.conftest import BerthServer, StartServer, add_user
from tests.e2e.ocilayout import OciImage, build_oci_layout, layout_differences, read_layout

RULES = [
    {"repository": "*", "users": ["*"], "actions": ["pull"]},
    {"repository": "*", "users": ["docker-deployer"], "actions": ["push"]},
]
DEPLOYER = ("docker-deployer", "deploy-Secret-1")
READER = ("reader", "reader-Secret-2")


@pytest.fixture(params=["basic", pytest.param("token", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> BerthServer:
    mode = request.param
    database_url = (
        request.getfixturevalue("pg_database")
        if mode == "token"
        else f"sqlite:///{tmp_path / 'auth.db'}"
    )
    for name, password in (DEPLOYER, READER):
        add_user(database_url, name, password, cost=10)
    start: StartServer = request.getfixturevalue("berth_server_factory")
    env = {"BERTH_AUTH": mode, "BERTH_AUTH_RULES": json.dumps(RULES)}
    return start(database_url=database_url, env=env)


@pytest.fixture
def sandbox(server: BerthServer) -> Iterator[ClientSandbox]:
    workdir = tempfile.mkdtemp(prefix="berth-auth-")  # podman wants a short runroot path
    try:
        yield ClientSandbox(Path(workdir), insecure_registries=[server.host])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def image(tmp_path: Path) -> OciImage:
    return build_oci_layout(tmp_path / "src", tag="v1", layers=2, layer_size=64 * 1024)


def _mode(server: BerthServer) -> str:
    challenge = requests.get(f"{server.url}/v2/", timeout=10).headers["WWW-Authenticate"]
    return challenge.split()[0].lower()


def test_skopeo_with_creds(
    server: BerthServer, sandbox: ClientSandbox, image: OciImage, tmp_path: Path
) -> None:
    require_tool("skopeo")
    ref = f"docker://{server.host}/library/app:v1"

    for creds in (READER, (DEPLOYER[0], "wrong"), ("nobody", DEPLOYER[1]), None):
        with pytest.raises(ClientError) as refused:
            skopeo_copy(image.ref, ref, creds=creds, sandbox=sandbox)
        assert any(word in refused.value.stderr.lower() for word in ("denied", "unauthorized"))

    assert skopeo_copy(image.ref, ref, creds=DEPLOYER, sandbox=sandbox) == image.manifest_digest

    back = tmp_path / "back"
    skopeo_copy(ref, f"oci:{back}:v1", creds=READER, sandbox=sandbox)
    assert layout_differences(image, read_layout(back, "v1")) == []
    assert skopeo_inspect(ref, creds=READER, sandbox=sandbox)["Digest"] == image.manifest_digest
    with pytest.raises(ClientError):
        skopeo_inspect(ref, sandbox=sandbox)  # no anonymous pulls

    if _mode(server) == "bearer":
        # The clients went through the token endpoint, and plain Basic is no way in.
        assert "GET /auth/token?" in server.log()
        as_basic = requests.get(f"{server.url}/v2/library/app/tags/list", auth=READER, timeout=10)
        assert as_basic.status_code == 401


def test_podman_login_push_pull(
    server: BerthServer, sandbox: ClientSandbox, image: OciImage
) -> None:
    require_tool("podman")
    podman = Podman(sandbox=sandbox, insecure_registries=[server.host])
    image_id = podman.pull(image.ref)
    target = f"{server.host}/library/podman:v1"

    with pytest.raises(ClientError):
        podman.login(server.host, READER[0], "not-it")
    podman.login(server.host, *READER)
    with pytest.raises(ClientError) as denied:
        podman.push(image_id, target)
    assert "denied" in denied.value.stderr.lower()
    podman.logout(server.host)

    podman.login(server.host, *DEPLOYER)
    pushed = podman.push(image_id, target)
    podman.logout(server.host)
    manifest = requests.get(
        f"{server.url}/v2/library/podman/manifests/v1",
        auth=DEPLOYER if _mode(server) == "basic" else None,
        timeout=10,
    )
    assert manifest.status_code == (200 if _mode(server) == "basic" else 401)

    podman.rmi(image_id)
    podman.login(server.host, *READER)
    pulled = podman.pull(f"docker://{target}")
    assert pulled == image_id
    assert podman.image_digest(pulled) == pushed


def test_anonymous_pull_with_skopeo(
    berth_server_factory: StartServer, image: OciImage, tmp_path: Path
) -> None:
    require_tool("skopeo")
    database_url = f"sqlite:///{tmp_path / 'anon.db'}"
    add_user(database_url, *DEPLOYER, cost=10)
    env = {
        "BERTH_AUTH": "basic",
        "BERTH_AUTH_ANONYMOUS_PULL": "true",
        "BERTH_AUTH_RULES": json.dumps(RULES),
    }
    server = berth_server_factory(database_url=database_url, env=env)
    ref = f"docker://{server.host}/library/app:v1"
    skopeo_copy(image.ref, ref, creds=DEPLOYER)
    # No credentials at all: skopeo pulls, but may not push.
    assert skopeo_inspect(ref)["Digest"] == image.manifest_digest
    with pytest.raises(ClientError) as refused:
        skopeo_copy(image.ref, f"docker://{server.host}/library/other:v1")
    assert "unauthorized" in refused.value.stderr.lower()
