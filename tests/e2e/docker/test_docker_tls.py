"""docker through the sample nginx with TLS, trusting the registry's CA through certs.d.

The registry listens on a non-loopback address: docker would skip verification on 127.0.0.1.
"""

from __future__ import annotations

import pytest
import requests

from tests.e2e.clients import ClientError
from tests.e2e.docker.conftest import DEPLOYER, READER, LoadImage, TlsRegistry
from tests.e2e.dockerd import DockerCLI, DockerEngine


# Token mode: the realm docker is sent to must be the proxy's https URL, not Berth's own.
@pytest.mark.parametrize("tls_registry", ["basic", "token"], indirect=True)
def test_push_pull_run_over_tls(
    tls_registry: TlsRegistry,
    docker_engine: DockerEngine,
    docker: DockerCLI,
    load_image: LoadImage,
) -> None:
    host = tls_registry.host
    ref = load_image(f"{host}/team/tls:v1", "served by nginx")

    with pytest.raises(ClientError) as untrusted:
        docker.login(host, *DEPLOYER)
    assert "certificate signed by unknown authority" in untrusted.value.stderr

    docker_engine.trust(host, tls_registry.ca)
    docker.login(host, *DEPLOYER)
    digest, _ = docker.push(ref)
    docker("logout", host)

    challenge = requests.get(
        f"{tls_registry.proxy.url}/v2/", verify=str(tls_registry.ca), timeout=10
    ).headers["WWW-Authenticate"]
    if challenge.startswith("Bearer "):
        assert f'realm="https://{host}/auth/token"' in challenge
        assert "GET /auth/token?" in tls_registry.proxy.access_log.read_text()

    docker.remove_all_images()
    docker.login(host, *READER)
    docker("pull", f"{host}/team/tls@{digest}")
    assert docker.run_in(f"{host}/team/tls@{digest}", "cat", "/etc/message") == "served by nginx"
