"""docker push, pull and run against `berth serve` over plain HTTP, no access control.

The engine is private (tests/e2e/dockerd.py); docker treats registries on 127.0.0.0/8 as
insecure, so plain HTTP needs no daemon configuration.
"""

from __future__ import annotations

from pathlib import Path

import requests

from tests.e2e.conftest import BerthServer
from tests.e2e.docker.conftest import LoadImage
from tests.e2e.dockerd import BigFile, DockerCLI, docker_archive

MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _manifest_digest(server: BerthServer, repo: str, ref: str) -> str:
    response = requests.head(
        f"{server.url}/v2/{repo}/manifests/{ref}",
        headers={"Accept": f"{MANIFEST_LIST}, {MANIFEST_V2}"},
        timeout=10,
    )
    assert response.status_code == 200, (repo, ref, response.status_code)
    return response.headers["Docker-Content-Digest"]


def test_push_pull_by_tag_and_digest_then_run(
    berth_server: BerthServer, docker: DockerCLI, load_image: LoadImage
) -> None:
    ref = load_image(f"{berth_server.host}/team/app:v1", "hello from a layer")
    digest, _ = docker.push(ref)
    assert _manifest_digest(berth_server, "team/app", "v1") == digest

    docker.rmi(ref)
    assert docker("images", "--quiet").stdout.strip() == ""
    pulled = docker("pull", ref).stdout
    assert f"Digest: {digest}" in pulled
    assert docker.run_in(ref, "cat", "/etc/message") == "hello from a layer"

    docker.remove_all_images()
    by_digest = f"{berth_server.host}/team/app@{digest}"
    docker("pull", by_digest)
    assert docker.inspect(by_digest)["RepoDigests"] == [by_digest]
    assert docker.run_in(by_digest, "cat", "/etc/message") == "hello from a layer"


def test_cross_repository_mount(
    berth_server: BerthServer, docker: DockerCLI, load_image: LoadImage
) -> None:
    # Both images share the busybox layer: the second push mounts it instead of uploading.
    first = load_image(f"{berth_server.host}/team/first:v1", "first")
    second = load_image(f"{berth_server.host}/team/second:v1", "second")
    docker.push(first)
    _, output = docker.push(second)
    assert output.count("Mounted from team/first") == 1, output
    assert output.count(": Pushed") == 1, output  # the layer holding /etc/message

    docker.remove_all_images()
    docker("pull", second)
    assert docker.run_in(second, "cat", "/etc/message") == "second"


def test_manifest_list_and_pull_by_platform(
    berth_server: BerthServer, docker: DockerCLI, load_image: LoadImage
) -> None:
    repo = f"{berth_server.host}/team/multi"
    amd64 = load_image(f"{repo}:amd64", "built for amd64", arch="amd64")
    arm64 = load_image(f"{repo}:arm64", "built for arm64", arch="arm64")
    amd64_digest, _ = docker.push(amd64)
    arm64_digest, _ = docker.push(arm64)

    # `docker manifest` talks to the registry itself, not through the daemon.
    docker("manifest", "create", "--insecure", f"{repo}:list", amd64, arm64)
    list_digest = docker("manifest", "push", "--insecure", f"{repo}:list").stdout.strip()
    assert list_digest.startswith("sha256:")
    listed = requests.get(
        f"{berth_server.url}/v2/team/multi/manifests/list",
        headers={"Accept": MANIFEST_LIST},
        timeout=10,
    )
    assert listed.headers["Content-Type"] == MANIFEST_LIST
    assert listed.headers["Docker-Content-Digest"] == list_digest
    platforms = {m["platform"]["architecture"]: m["digest"] for m in listed.json()["manifests"]}
    assert platforms == {"amd64": amd64_digest, "arm64": arm64_digest}

    docker.remove_all_images()
    docker("pull", "--platform", "linux/arm64", f"{repo}:list")
    assert docker.inspect(f"{repo}:list")["Architecture"] == "arm64"
    docker.remove_all_images()
    docker("pull", "--platform", "linux/amd64", f"{repo}:list")
    assert docker.inspect(f"{repo}:list")["Architecture"] == "amd64"
    assert docker.run_in(f"{repo}:list", "cat", "/etc/message") == "built for amd64"


def test_large_layer(berth_server: BerthServer, docker: DockerCLI, tmp_path: Path) -> None:
    size = 200 * 1024 * 1024
    ref = f"{berth_server.host}/team/big:v1"
    archive = tmp_path / "big.tar"
    sums = docker_archive(archive, ref, {"data/big.bin": BigFile(size, seed=15)})
    docker.load(archive)
    archive.unlink()
    digest, _ = docker.push(ref)
    layers = requests.get(
        f"{berth_server.url}/v2/team/big/manifests/{digest}",
        headers={"Accept": MANIFEST_V2},
        timeout=10,
    ).json()["layers"]
    assert max(layer["size"] for layer in layers) > size  # random data: gzip cannot shrink it

    docker.remove_all_images()
    docker("pull", ref)
    checked = docker.run_in(ref, "sh", "-c", "sha256sum /data/big.bin; ls -l /data/big.bin")
    assert checked.split()[0] == sums["data/big.bin"]
    assert f" {size} " in checked
