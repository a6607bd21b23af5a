"""Real clients against a real `berth serve`: skopeo, podman and buildah push and pull.

Every test runs once on SQLite and once on PostgreSQL. Each test gets its own client
sandbox (config, storage, blob-info cache), so no test's cached knowledge of where blobs
live changes another test's traffic.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests

from tests.e2e.clients import (
    Buildah,
    ClientError,
    ClientSandbox,
    Podman,
    require_tool,
    skopeo_copy,
    skopeo_delete,
    skopeo_inspect,
)
from tests.e2e.conftest import BerthServer, StartServer
from tests.e2e.ocilayout import OciImage, build_oci_layout, layout_differences, read_layout

HTTP_TIMEOUT = 30  # seconds, per request
LAYERS = 4
LAYER_SIZE = 192 * 1024


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest) -> BerthServer:
    """A fresh registry, on SQLite or on a fresh PostgreSQL database."""
    # The database first: fixtures tear down in reverse, so the server stops before the drop.
    database_url = request.getfixturevalue("pg_database") if request.param == "postgres" else None
    start: StartServer = request.getfixturevalue("berth_server_factory")
    return start(database_url=database_url)


@pytest.fixture
def sandbox(server: BerthServer) -> Iterator[ClientSandbox]:
    # Not under tmp_path: podman refuses a runroot longer than 50 characters.
    workdir = tempfile.mkdtemp(prefix="berth-e2e-")
    try:
        yield ClientSandbox(Path(workdir), insecure_registries=[server.host])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def image(tmp_path: Path) -> OciImage:
    return build_oci_layout(tmp_path / "src", tag="v1", layers=LAYERS, layer_size=LAYER_SIZE)


def _manifest(server: BerthServer, repo: str, reference: str) -> requests.Response:
    return requests.get(
        f"{server.url}/v2/{repo}/manifests/{reference}",
        headers={
            "Accept": ", ".join(
                [
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json",
                ]
            )
        },
        timeout=HTTP_TIMEOUT,
    )


def _tags(server: BerthServer, repo: str) -> list[str]:
    response = requests.get(f"{server.url}/v2/{repo}/tags/list", timeout=HTTP_TIMEOUT)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == repo
    return list(body["tags"])


def _error_codes(response: requests.Response) -> list[str]:
    return [error["code"] for error in response.json()["errors"]]


# --- skopeo --------------------------------------------------------------------------------


def test_skopeo_round_trip_is_byte_exact(
    server: BerthServer, sandbox: ClientSandbox, image: OciImage, tmp_path: Path
) -> None:
    require_tool("skopeo")
    ref = f"docker://{server.host}/team/app:v1"

    pushed = skopeo_copy(image.ref, ref, sandbox=sandbox)
    assert pushed == image.manifest_digest

    back = tmp_path / "back"
    skopeo_copy(ref, f"oci:{back}:v1", sandbox=sandbox)
    assert layout_differences(image, read_layout(back, "v1")) == []

    by_digest = tmp_path / "by-digest"
    digest_ref = f"docker://{server.host}/team/app@{image.manifest_digest}"
    assert skopeo_copy(digest_ref, f"oci:{by_digest}:pinned", sandbox=sandbox) == pushed
    assert layout_differences(image, read_layout(by_digest, "pinned")) == []

    info = skopeo_inspect(ref, sandbox=sandbox)
    assert info["Digest"] == image.manifest_digest
    assert "v1" in info["RepoTags"]
    assert info["Layers"] == image.layer_digests
    assert skopeo_inspect(ref, raw=True, sandbox=sandbox).encode() == image.manifest_bytes()

    # What a plain HTTP client sees: the stored bytes, their media type and digest.
    response = _manifest(server, "team/app", "v1")
    assert response.status_code == 200
    assert response.content == image.manifest_bytes()
    assert response.headers["Content-Type"] == image.manifest_media_type
    assert response.headers["Docker-Content-Digest"] == image.manifest_digest


def test_skopeo_tags_list_and_delete(
    server: BerthServer, sandbox: ClientSandbox, image: OciImage, tmp_path: Path
) -> None:
    require_tool("skopeo")
    repo = f"{server.host}/team/app"
    other = build_oci_layout(tmp_path / "other", tag="latest", layers=3, seed=7)

    skopeo_copy(image.ref, f"docker://{repo}:v1", sandbox=sandbox)
    assert _tags(server, "team/app") == ["v1"]
    skopeo_copy(other.ref, f"docker://{repo}:latest", sandbox=sandbox)
    # Lexical order, not push order.
    assert _tags(server, "team/app") == ["latest", "v1"]

    skopeo_delete(f"docker://{repo}@{image.manifest_digest}", sandbox=sandbox)

    for reference in ("v1", image.manifest_digest):
        response = _manifest(server, "team/app", reference)
        assert response.status_code == 404, reference
        assert _error_codes(response) == ["MANIFEST_UNKNOWN"]
    assert _tags(server, "team/app") == ["latest"]
    with pytest.raises(ClientError):
        skopeo_inspect(f"docker://{repo}:v1", sandbox=sandbox)

    # The other image is untouched and still pulls byte for byte.
    back = tmp_path / "back"
    skopeo_copy(f"docker://{repo}:latest", f"oci:{back}:latest", sandbox=sandbox)
    assert layout_differences(other, read_layout(back, "latest")) == []


# --- podman / buildah ----------------------------------------------------------------------


def test_podman_push_then_pull_back(
    server: BerthServer, sandbox: ClientSandbox, image: OciImage
) -> None:
    require_tool("podman")
    podman = Podman(sandbox=sandbox, insecure_registries=[server.host])
    image_id = podman.pull(image.ref)

    pushed = podman.push(image_id, f"{server.host}/team/podman:v1")
    assert pushed.startswith("sha256:")
    # The registry serves exactly the manifest podman pushed.
    response = _manifest(server, "team/podman", "v1")
    assert response.status_code == 200
    assert "sha256:" + hashlib.sha256(response.content).hexdigest() == pushed

    podman.rmi(image_id)
    assert not podman.exists(image_id)

    pulled_id = podman.pull(f"docker://{server.host}/team/podman:v1")
    assert pulled_id == image_id  # same config, hence the same image
    assert podman.image_digest(pulled_id) == pushed
    assert _tags(server, "team/podman") == ["v1"]


def test_podman_pulls_what_skopeo_pushed(
    server: BerthServer, sandbox: ClientSandbox, image: OciImage
) -> None:
    require_tool("skopeo")
    require_tool("podman")
    skopeo_copy(image.ref, f"docker://{server.host}/team/app:v1", sandbox=sandbox)

    podman = Podman(sandbox=sandbox, insecure_registries=[server.host])
    image_id = podman.pull(f"docker://{server.host}/team/app:v1")
    assert image_id == image.config_digest.removeprefix("sha256:")
    assert podman.image_digest(image_id) == image.manifest_digest
    assert podman.inspect(image_id)["RootFS"]["Layers"] == image.diff_ids


_MOUNT_LINE = re.compile(
    r'"POST /v2/team/buildah/blobs/uploads/\?(?P<query>[^ ]*mount=[^ ]*) HTTP/[\d.]+"'
    r" (?P<status>\d+)"
)


def test_buildah_push_matches_podman_and_mounts_blobs(
    server: BerthServer, sandbox: ClientSandbox, image: OciImage
) -> None:
    require_tool("podman")
    require_tool("buildah")
    podman = Podman(sandbox=sandbox, insecure_registries=[server.host])
    image_id = podman.pull(image.ref)
    podman_digest = podman.push(image_id, f"{server.host}/team/podman:v1")

    buildah = Buildah(podman.sandbox)
    buildah_digest = buildah.push(image_id, f"{server.host}/team/buildah:v1")
    assert buildah_digest == podman_digest

    manifest = _manifest(server, "team/buildah", "v1")
    assert manifest.status_code == 200
    assert "sha256:" + hashlib.sha256(manifest.content).hexdigest() == podman_digest
    body = manifest.json()

    # buildah knew (shared blob-info cache) that team/podman holds these layers, so it had the
    # registry mount them (POST ?mount=&from=team/podman -> 201) instead of uploading again.
    mounts = list(_MOUNT_LINE.finditer(server.log()))
    assert mounts, "buildah made no cross-repository mount request"
    assert all(m["status"] == "201" for m in mounts), [m.group(0) for m in mounts]
    mounted = {unquote(q) for m in mounts for q in re.findall(r"mount=([^&]+)", m["query"])}
    assert mounted == {layer["digest"] for layer in body["layers"]}
    assert all("from=team%2Fpodman" in m["query"] for m in mounts)

    # Every blob is served through team/buildah, whether mounted or uploaded.
    for descriptor in [body["config"], *body["layers"]]:
        blob = requests.get(
            f"{server.url}/v2/team/buildah/blobs/{descriptor['digest']}", timeout=HTTP_TIMEOUT
        )
        assert blob.status_code == 200, descriptor
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == descriptor["digest"]
        assert len(blob.content) == descriptor["size"]
