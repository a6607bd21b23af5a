"""Berth behind real nginx and Apache (configs rendered from deploy/), over TLS with
certificates from deploy/gen-certs.sh: real clients, v1/v2 routing, blob offload.

nginx runs in front of Berth on PostgreSQL, Apache in front of Berth on SQLite.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.deploy.conftest import Certs, Deployment, start_deployment
from tests.deploy.frontends import V1Stub
from tests.e2e.clients import ClientError, ClientSandbox, Podman, require_tool
from tests.e2e.ocilayout import OciImage, build_oci_layout, layout_differences, read_layout

TIMEOUT = 30
BLOB_SIZE = 3 * 1024 * 1024 + 17


@pytest.fixture
def sandbox() -> Iterator[ClientSandbox]:
    # Short path: podman refuses a long runroot. No insecure registries: TLS is verified.
    workdir = tempfile.mkdtemp(prefix="berth-deploy-")
    try:
        yield ClientSandbox(Path(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def image(tmp_path: Path) -> OciImage:
    return build_oci_layout(tmp_path / "src", tag="v1", layers=3, layer_size=256 * 1024)


def skopeo(sandbox: ClientSandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return sandbox.run(["skopeo", "--policy", str(sandbox.policy), *args])


def skopeo_copy(sandbox: ClientSandbox, src: str, dst: str, *args: str) -> None:
    skopeo(sandbox, "copy", "--retry-times", "0", "--preserve-digests", *args, src, dst)


def podman_tls(podman: Podman, certs: Certs, *args: str) -> str:
    """A podman command that verifies the registry's certificate against the generated CA."""
    return podman.run(
        *args[:1],
        "--cert-dir",
        str(certs.trust),
        "--signature-policy",
        str(podman.sandbox.policy),
        *args[1:],
    ).stdout


def metric(berth_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of one metric whose labels include `labels` (0 when absent)."""
    text = requests.get(f"{berth_url}/metrics", timeout=TIMEOUT).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def push_blob_directly(berth_url: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    response = requests.post(
        f"{berth_url}/v2/{repo}/blobs/uploads/?digest={digest}", data=data, timeout=TIMEOUT
    )
    assert response.status_code == 201, response.text
    return digest


# --- real clients over TLS ----------------------------------------------------------------


def test_skopeo_and_podman_push_and_pull_through_the_proxy(
    deployment: Deployment, sandbox: ClientSandbox, image: OciImage, tmp_path: Path
) -> None:
    require_tool("skopeo")
    require_tool("podman")
    host, certs = deployment.proxy.host, deployment.certs
    ref = f"docker://{host}/team/app:v1"

    # The certificate is really checked: without the generated CA the push is refused.
    with pytest.raises(ClientError, match="certificate"):
        skopeo_copy(sandbox, image.ref, ref)

    skopeo_copy(sandbox, image.ref, ref, "--dest-cert-dir", str(certs.trust))
    back = tmp_path / "back"
    skopeo_copy(sandbox, ref, f"oci:{back}:v1", "--src-cert-dir", str(certs.trust))
    assert layout_differences(image, read_layout(back, "v1")) == []

    podman = Podman(sandbox=sandbox)
    image_id = podman_tls(podman, certs, "pull", ref).split()[-1]
    assert image_id == image.config_digest.removeprefix("sha256:")
    digestfile = tmp_path / "podman-digest"
    podman_tls(
        podman,
        certs,
        "push",
        "--digestfile",
        str(digestfile),
        image_id,
        f"docker://{host}/team/podman:v2",
    )
    pushed = digestfile.read_text().strip()
    podman.rmi(image_id)
    pulled = podman_tls(podman, certs, "pull", f"docker://{host}/team/podman:v2").split()[-1]
    assert pulled == image_id
    assert podman.image_digest(pulled) == pushed

    # Berth itself holds both, under the names the clients used through the proxy.
    for repo, tag in (("team/app", "v1"), ("team/podman", "v2")):
        tags = requests.get(f"{deployment.berth.url}/v2/{repo}/tags/list", timeout=TIMEOUT)
        assert tags.json()["tags"] == [tag]
    # Every client request reached Berth, none the v1 registry.
    assert deployment.v1.requests == []


def test_locations_stay_https_and_every_answer_has_the_api_version(
    deployment: Deployment,
) -> None:
    session = requests.Session()
    session.verify = str(deployment.certs.ca)
    session.trust_env = False  # else REQUESTS_CA_BUNDLE would replace the CA set here
    base = deployment.proxy.url
    data = os.urandom(200_000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def location(response: requests.Response, status: int) -> str:
        assert response.status_code == status, response.text
        assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
        value = response.headers["Location"]
        assert value.startswith("/") or value.startswith(f"https://{deployment.proxy.host}/")
        return value if value.startswith("https://") else base + value

    started = location(session.post(f"{base}/v2/team/loc/blobs/uploads/"), 202)

    def chunks() -> Iterator[bytes]:  # chunked transfer encoding, as docker sends it
        for start in range(0, len(data), 64 * 1024):
            yield data[start : start + 64 * 1024]

    patched = location(session.patch(started, data=chunks()), 202)
    put = session.put(patched, params={"digest": digest})
    assert location(put, 201).endswith(f"/v2/team/loc/blobs/{digest}")

    config = b"{}"
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    location(
        session.post(f"{base}/v2/team/loc/blobs/uploads/?digest={config_digest}", data=config), 201
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digest,
                    "size": len(data),
                }
            ],
        }
    ).encode()
    response = session.put(
        f"{base}/v2/team/loc/manifests/v1",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    location(response, 201)

    # Errors too, from Berth (unknown manifest) and from the proxy itself (Berth down).
    missing = session.get(f"{base}/v2/team/loc/manifests/nope")
    assert missing.status_code == 404
    assert missing.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    deployment.berth.stop()
    down = session.get(f"{base}/v2/")
    assert down.status_code in (502, 503)
    assert down.headers["Docker-Distribution-Api-Version"] == "registry/2.0"


# --- v1 / v2 routing ----------------------------------------------------------------------

LEGACY_AGENTS = [
    "docker/1.5.0 go/go1.4.1 git-commit/a8a31ef kernel/3.16.0 os/linux arch/amd64",
    "docker/1.0.1 go/go1.2.1 git-commit/990021a kernel/3.13.0 os/linux arch/amd64",
    "Go 1.1 package http",  # docker < 1.6 pinging /v2/
]
MODERN_AGENTS = [
    "docker/1.6.0 go/go1.4.2 git-commit/4749651 kernel/3.16.0 os/linux arch/amd64",
    "docker/1.10.3 go/go1.5.3 git-commit/20f81dd kernel/4.4.0 os/linux arch/amd64",
    "docker/24.0.7 go/go1.20.10 git-commit/311b9ff kernel/6.1.0 os/linux arch/amd64",
    "containers/5.24.2 (github.com/containers/image)",
    "Go-http-client/1.1",
]


def _get(deployment: Deployment, path: str, agent: str) -> requests.Response:
    return requests.get(
        f"{deployment.proxy.url}{path}",
        headers={"User-Agent": agent},
        verify=str(deployment.certs.ca),
        timeout=TIMEOUT,
    )


def test_docker_before_1_6_and_v1_paths_reach_the_v1_registry(deployment: Deployment) -> None:
    stub: V1Stub = deployment.v1
    for agent in LEGACY_AGENTS:
        response = _get(deployment, "/v2/", agent)
        assert response.headers.get("X-Registry-Stub") == "v1", agent
        assert response.status_code == 404  # what tells old docker "no v2 here"
        assert "Docker-Distribution-Api-Version" not in response.headers
        assert stub.requests[-1]["path"] == "/v2/"
        assert stub.requests[-1]["user_agent"] == agent
    # A v1 push: method, path, query and body arrive unchanged.
    response = requests.put(
        f"{deployment.proxy.url}/v1/repositories/team/app/tags/latest?x=1",
        data=b'"abc"',
        headers={"User-Agent": LEGACY_AGENTS[0]},
        verify=str(deployment.certs.ca),
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert stub.requests[-1] == {
        "method": "PUT",
        "path": "/v1/repositories/team/app/tags/latest?x=1",
        "user_agent": LEGACY_AGENTS[0],
        "body": '"abc"',
    }
    # /v1/ paths go to v1 whoever asks.
    before = len(stub.requests)
    assert _get(deployment, "/v1/_ping", MODERN_AGENTS[0]).headers["X-Registry-Stub"] == "v1"
    assert len(stub.requests) == before + 1


def test_docker_1_6_and_modern_clients_reach_berth(deployment: Deployment) -> None:
    for agent in MODERN_AGENTS:
        response = _get(deployment, "/v2/", agent)
        assert response.status_code == 200, agent
        assert response.json() == {}
        assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
        assert "X-Registry-Stub" not in response.headers
    assert deployment.v1.requests == []
    assert f'"{MODERN_AGENTS[0]}"' in deployment.berth.log()


# --- blob offload -------------------------------------------------------------------------


def test_blob_get_is_sent_by_the_front_end_not_by_berth(deployment: Deployment) -> None:
    berth, proxy = deployment.berth, deployment.proxy
    data = os.urandom(BLOB_SIZE)
    digest = push_blob_directly(berth.url, "team/big", data)
    sent_before = metric(berth.url, "berth_http_response_bytes_total", route="blobs.get_blob")
    offloads_before = metric(berth.url, "berth_blob_offloads_total")

    url = f"{proxy.url}/v2/team/big/blobs/{digest}"
    ca = str(deployment.certs.ca)
    whole = requests.get(url, verify=ca, timeout=TIMEOUT)
    assert whole.status_code == 200
    assert whole.content == data
    assert whole.headers["Content-Length"] == str(BLOB_SIZE)
    assert whole.headers["Docker-Content-Digest"] == digest
    assert whole.headers["ETag"] == f'"{digest}"'
    assert whole.headers["Content-Type"] == "application/octet-stream"
    assert whole.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert "X-Accel-Redirect" not in whole.headers and "X-Sendfile" not in whole.headers

    part = requests.get(url, headers={"Range": "bytes=1000-1999"}, verify=ca, timeout=TIMEOUT)
    assert part.status_code == 206
    assert part.content == data[1000:2000]
    assert part.headers["Content-Range"] == f"bytes 1000-1999/{BLOB_SIZE}"
    assert part.headers["Docker-Content-Digest"] == digest

    tail = requests.get(url, headers={"Range": "bytes=-10"}, verify=ca, timeout=TIMEOUT)
    assert tail.status_code == 206 and tail.content == data[-10:]

    head = requests.head(url, verify=ca, timeout=TIMEOUT)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(BLOB_SIZE)
    assert head.headers["Docker-Content-Digest"] == digest

    # Berth answered the three GETs with a header and no body; the proxy sent the bytes.
    assert metric(berth.url, "berth_blob_offloads_total") == offloads_before + 3
    assert (
        metric(berth.url, "berth_http_response_bytes_total", route="blobs.get_blob") == sent_before
    )
    served = re.findall(rf'"GET /v2/team/big/blobs/{digest} HTTP/1\.[01]" (\d+) (\S+)', berth.log())
    assert served == [("200", "0")] * 3, berth.log_tail()
    assert f" 200 {BLOB_SIZE} " in proxy.access_log.read_text()

    # The internal location is not reachable from outside.
    key = f"blobs/sha256/{digest[7:9]}/{digest[7:]}/data"
    assert (
        requests.get(f"{proxy.url}/_berth_blobs/{key}", verify=ca, timeout=TIMEOUT).status_code
        == 404
    )
    # Nor are the metrics: Prometheus scrapes each Berth instance directly.
    assert requests.get(f"{proxy.url}/metrics", verify=ca, timeout=TIMEOUT).status_code in (
        403,
        404,
    )


# --- Apache with distribution's access policy ---------------------------------------------


@pytest.fixture
def policy_deployment(
    request: pytest.FixtureRequest,
    certs: Certs,
    storage_root: Path,
    v1_stub: V1Stub,
    tmp_path: Path,
) -> Iterator[Deployment]:
    htpasswd_tool = require_tool("htpasswd")
    # Beside the storage: Apache's workers (www-data) read it per request; tmp_path is 0700.
    htpasswd = storage_root.parent / "htpasswd"
    for i, (user, password) in enumerate((("reader", "read-pw"), ("docker-deployer", "push-pw"))):
        flags = "-cbB" if i == 0 else "-bB"
        subprocess.run([htpasswd_tool, flags, str(htpasswd), user, password], check=True)
    htpasswd.chmod(0o644)
    yield from start_deployment(
        "apache", request, certs, storage_root, v1_stub, tmp_path, htpasswd=htpasswd
    )


def test_apache_policy_reader_pulls_only_deployer_pushes(
    policy_deployment: Deployment, sandbox: ClientSandbox, image: OciImage, tmp_path: Path
) -> None:
    require_tool("skopeo")
    require_tool("podman")
    deployment = policy_deployment
    host, trust = deployment.proxy.host, str(deployment.certs.trust)
    ref = f"docker://{host}/team/app:v1"

    anonymous = requests.get(
        f"{deployment.proxy.url}/v2/", verify=str(deployment.certs.ca), timeout=TIMEOUT
    )
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert anonymous.headers["Docker-Distribution-Api-Version"] == "registry/2.0"

    skopeo_copy(
        sandbox, image.ref, ref, "--dest-cert-dir", trust, "--dest-creds", "docker-deployer:push-pw"
    )

    back = tmp_path / "back"
    skopeo_copy(
        sandbox, ref, f"oci:{back}:v1", "--src-cert-dir", trust, "--src-creds", "reader:read-pw"
    )
    assert layout_differences(image, read_layout(back, "v1")) == []
    podman = Podman(sandbox=sandbox)
    pulled = podman_tls(podman, deployment.certs, "pull", "--creds", "reader:read-pw", ref).split()[
        -1
    ]
    assert pulled == image.config_digest.removeprefix("sha256:")

    denied = f"docker://{host}/team/reader-push:v1"
    with pytest.raises(ClientError):
        skopeo_copy(
            sandbox, image.ref, denied, "--dest-cert-dir", trust, "--dest-creds", "reader:read-pw"
        )
    with pytest.raises(ClientError):
        skopeo_copy(
            sandbox,
            image.ref,
            denied,
            "--dest-cert-dir",
            trust,
            "--dest-creds",
            "docker-deployer:wrong",
        )
    # Nothing of the refused pushes reached Berth.
    tags = requests.get(f"{deployment.berth.url}/v2/team/reader-push/tags/list", timeout=TIMEOUT)
    assert tags.status_code == 404
    assert "/v2/team/reader-push/blobs/uploads" not in deployment.berth.log()
