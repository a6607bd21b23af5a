"""A real Docker daemon using Berth as its registry mirror: `registry-mirrors` (and
`insecure-registries`, Berth speaks plain HTTP) in the daemon's config, then `docker pull`
of an unprefixed Docker Hub name. Docker asks the mirror for `library/<name>` with no
prefix; Berth fetches it from its default upstream (Debian's docker-registry, started here)
and caches it under the upstream's prefix.

The daemon is a private engine of its own (tests/e2e/dockerd.py), started after Berth, since
its config names Berth's port. Nothing here reaches Docker Hub: were the mirror to fail,
docker would fall back to registry-1.docker.io and the pull would fail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.clients import ClientError, skopeo_copy
from tests.e2e.conftest import BerthServer, StartServer
from tests.e2e.docker.conftest import require_engine
from tests.e2e.dockerd import DockerCLI, DockerEngine, docker_archive, running_engine
from tests.e2e.reference import PASSWORD, USER, Reference

PREFIX = "hub.test"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def berth(reference: Reference, berth_server_factory: StartServer) -> BerthServer:
    upstream = {
        "prefix": PREFIX,
        "url": reference.url,
        "username": USER,
        "password": PASSWORD,
        "default": True,  # what docker's registry-mirrors need: unprefixed names
    }
    return berth_server_factory(env={"BERTH_MIRROR_UPSTREAMS": json.dumps([upstream])})


@pytest.fixture
def mirrored_engine(berth: BerthServer) -> Iterator[DockerEngine]:
    require_engine()
    config = {"registry-mirrors": [berth.url], "insecure-registries": [berth.host]}
    with running_engine(f"berth-test-mirror-{os.getpid()}", config) as engine:
        yield engine


def _manifest_digest(reference: Reference, repo: str, tag: str) -> str:
    head = requests.head(
        f"{reference.url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": f"{MANIFEST_V2}, {OCI_MANIFEST}"},
        auth=(USER, PASSWORD),
        timeout=30,
    )
    assert head.status_code == 200, head.status_code
    return head.headers["Docker-Content-Digest"]


def _misses(berth: BerthServer, kind: str) -> float:
    metrics = requests.get(f"{berth.url}/metrics", timeout=30).text
    pattern = rf'berth_mirror_cache_misses_total\{{kind="{kind}",upstream="{PREFIX}"\}} (\S+)'
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def test_docker_pulls_an_unprefixed_name_through_the_mirror(
    reference: Reference, berth: BerthServer, mirrored_engine: DockerEngine, tmp_path: Path
) -> None:
    archive = tmp_path / "busyecho.tar"
    docker_archive(archive, "busyecho:1.0", {"etc/message": b"pulled through berth"})
    skopeo_copy(
        f"docker-archive:{archive}",
        f"docker://{reference.host}/library/busyecho:1.0",
        dest_creds=(USER, PASSWORD),
        preserve_digests=False,  # skopeo compresses the archive's layers for the registry
    )
    digest = _manifest_digest(reference, "library/busyecho", "1.0")
    docker = DockerCLI(mirrored_engine, tmp_path / "docker-config")
    info = json.loads(docker("info", "--format", "{{json .RegistryConfig.Mirrors}}").stdout)
    assert info == [berth.url + "/"]

    try:
        pulled = docker("pull", "busyecho:1.0").stdout  # docker.io/library/busyecho:1.0
    except ClientError as exc:
        raise AssertionError(f"{exc}\n{mirrored_engine.logs()}\n{berth.log_tail()}") from exc
    assert f"Digest: {digest}" in pulled
    assert docker.inspect("busyecho:1.0")["RepoDigests"] == [f"busyecho@{digest}"]
    assert docker.run_in("busyecho:1.0", "cat", "/etc/message") == "pulled through berth"

    # Berth fetched it from its default upstream and keeps it under the upstream's prefix.
    assert _misses(berth, "manifest") >= 1 and _misses(berth, "blob") >= 3
    blobs = json.loads(
        requests.get(
            f"{berth.url}/v2/{PREFIX}/library/busyecho/manifests/1.0",
            headers={"Accept": f"{MANIFEST_V2}, {OCI_MANIFEST}"},
            timeout=30,
        ).content
    )
    digests = [blobs["config"]["digest"], *(layer["digest"] for layer in blobs["layers"])]
    assert [reference.blob_gets(d) for d in digests] == [1] * len(digests)
    catalog = requests.get(f"{berth.url}/v2/_catalog", timeout=30).json()["repositories"]
    assert f"{PREFIX}/library/busyecho" in catalog

    # Pulled again: the mirror answers from its cache, nothing more reaches the upstream.
    docker.remove_all_images()
    assert f"Digest: {digest}" in docker("pull", "library/busyecho:1.0").stdout
    assert [reference.blob_gets(d) for d in digests] == [1] * len(digests)
