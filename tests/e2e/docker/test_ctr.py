"""containerd's own client, ctr, pulling and pushing: plain HTTP (--plain-http), TLS through
nginx with the CA named in a hosts.toml (--hosts-dir), anonymous and with --user.

Images get into the registry with docker push; ctr then pulls them, runs one, and pushes
a copy under a new name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.clients import ClientError
from tests.e2e.conftest import BerthServer
from tests.e2e.docker.conftest import DEPLOYER, READER, AuthServer, LoadImage, TlsRegistry
from tests.e2e.dockerd import DockerCLI, DockerEngine

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _seed(docker: DockerCLI, load_image: LoadImage, ref: str, creds: tuple[str, str] | None) -> str:
    load_image(ref, f"pulled by ctr from {ref.split('/', 1)[1]}")
    host = ref.split("/", 1)[0]
    if creds:
        docker.login(host, *creds)
    digest, _ = docker.push(ref)
    if creds:
        docker("logout", host)
    return digest


def _pull_run_push(engine: DockerEngine, ref: str, copy: str, *options: str) -> str:
    """ctr pull, run (the unpacked layers), push as `copy`; returns the pulled digest."""
    engine.ctr("images", "pull", *options, ref)
    listed = engine.ctr("images", "list").stdout
    row = next(line.split() for line in listed.splitlines() if line.startswith(ref + " "))
    out = engine.ctr_run(ref, "cat", "/etc/message")
    assert out == f"pulled by ctr from {ref.split('/', 1)[1]}"
    engine.ctr("images", "push", *options, copy, ref)  # the local image `ref` as `copy`
    return row[2]


@pytest.fixture
def ctr_images(docker_engine: DockerEngine) -> Iterator[None]:
    yield
    # --sync: wait for the garbage collector, so a later pull downloads again.
    names = docker_engine.ctr("images", "list", "--quiet").stdout.split()
    if names:
        docker_engine.ctr("images", "rm", "--sync", *names)


def _digest(base: str, repo: str, ref: str, creds: tuple[str, str] | None = None, **kw) -> str:
    """The manifest digest the registry serves, with Basic credentials or a token for them."""
    url = f"{base}/v2/{repo}/manifests/{ref}"
    headers = {"Accept": MANIFEST_V2}
    answer = requests.get(url, headers=headers, timeout=10, **kw)
    challenge = answer.headers.get("WWW-Authenticate", "")
    if challenge.startswith("Bearer "):
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        token = requests.get(
            params["realm"],
            params={"service": params["service"], "scope": params["scope"]},
            auth=creds,
            timeout=10,
            **kw,
        ).json()["token"]
        answer = requests.get(url, headers={**headers, "Authorization": f"Bearer {token}"}, **kw)
    elif challenge:
        answer = requests.get(url, headers=headers, auth=creds, timeout=10, **kw)
    assert answer.status_code == 200, (url, answer.status_code, answer.text)
    return answer.headers["Docker-Content-Digest"]


def test_ctr_plain_http_anonymous(
    berth_server: BerthServer,
    docker_engine: DockerEngine,
    docker: DockerCLI,
    load_image: LoadImage,
    ctr_images: None,
) -> None:
    ref = f"{berth_server.host}/team/app:v1"
    digest = _seed(docker, load_image, ref, None)
    copy = f"{berth_server.host}/team/ctr-copy:v1"
    assert _pull_run_push(docker_engine, ref, copy, "--plain-http") == digest
    assert _digest(berth_server.url, "team/ctr-copy", "v1") == digest


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_ctr_plain_http_with_user(
    mode: str,
    auth_server: AuthServer,
    docker_engine: DockerEngine,
    docker: DockerCLI,
    load_image: LoadImage,
    ctr_images: None,
) -> None:
    server = auth_server(mode)
    ref = f"{server.host}/team/app:v1"
    digest = _seed(docker, load_image, ref, DEPLOYER)
    with pytest.raises(ClientError):
        docker_engine.ctr("images", "pull", "--plain-http", ref)  # anonymous: refused

    user = ["--plain-http", "--user", ":".join(DEPLOYER)]
    copy = f"{server.host}/team/ctr-copy:v1"
    assert _pull_run_push(docker_engine, ref, copy, *user) == digest
    with pytest.raises(ClientError) as denied:
        docker_engine.ctr(
            "images", "push", "--plain-http", "--user", ":".join(READER), f"{server.host}/x:v1", ref
        )
    assert "403 forbidden" in denied.value.stderr.lower(), denied.value.stderr
    assert _digest(server.url, "team/ctr-copy", "v1", READER) == digest


def test_ctr_tls_with_hosts_dir(
    tls_registry: TlsRegistry,
    docker_engine: DockerEngine,
    docker: DockerCLI,
    load_image: LoadImage,
    ctr_images: None,
    tmp_path: Path,
) -> None:
    host = tls_registry.host
    docker_engine.trust(host, tls_registry.ca)  # for the docker push that seeds it
    ref = f"{host}/team/app:v1"
    digest = _seed(docker, load_image, ref, DEPLOYER)
    user = ["--user", ":".join(DEPLOYER)]
    with pytest.raises(ClientError) as untrusted:
        docker_engine.ctr("images", "pull", *user, ref)
    assert "certificate signed by unknown authority" in untrusted.value.stderr

    hosts_dir = tmp_path / "certs.d"
    (hosts_dir / host).mkdir(parents=True)
    (hosts_dir / host / "hosts.toml").write_text(
        f'server = "https://{host}"\n\n'
        f'[host."https://{host}"]\n'
        '  capabilities = ["pull", "resolve", "push"]\n'
        f'  ca = "{tls_registry.ca}"\n'
    )
    copy = f"{host}/team/ctr-copy:v1"
    assert _pull_run_push(docker_engine, ref, copy, "--hosts-dir", str(hosts_dir), *user) == digest
    copied = _digest(
        tls_registry.proxy.url, "team/ctr-copy", "v1", READER, verify=str(tls_registry.ca)
    )
    assert copied == digest
