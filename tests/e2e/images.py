"""Small images, indexes and referrers built and pushed with app.client, and a reference
registry (Debian's docker-registry, distribution 2.8) on a free port for tests to use."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from app.client import Manifest, RegistryClient, RemoteRepository
from app.client.media import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, digest_of
from tests.e2e.clients import require_tool

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar.gzip"
SIGNATURE_TYPE = "application/vnd.example.signature.v1"


def canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def descriptor(data: bytes, media_type: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}


@dataclass
class Pushed:
    manifest: Manifest
    blobs: dict[str, bytes]


def push_image(
    client: RegistryClient,
    repo: str,
    tag: str | None,
    seed: int = 0,
    layer_size: int = 64 * 1024,
    layers: int = 2,
    docker: bool = False,
    arch: str = "amd64",
) -> Pushed:
    rng = random.Random(seed)
    config = canonical({"architecture": arch, "os": "linux", "seed": seed, "rootfs": {}})
    blobs = {digest_of(config): config}
    layer_blobs = [rng.randbytes(layer_size) for _ in range(layers)]
    for data in [config, *layer_blobs]:
        blobs[digest_of(data)] = data
        client.upload_blob(repo, data)
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": descriptor(config, DOCKER_CONFIG_TYPE if docker else CONFIG_TYPE),
        "layers": [descriptor(b, DOCKER_LAYER_TYPE if docker else LAYER_TYPE) for b in layer_blobs],
    }
    manifest = Manifest.of(canonical(doc))
    client.put_manifest(repo, tag or manifest.digest, manifest)
    return Pushed(manifest, blobs)


def push_index(
    client: RegistryClient, repo: str, tag: str, seed: int = 0, docker: bool = False
) -> tuple[Manifest, list[Pushed]]:
    children = [
        push_image(client, repo, None, seed=seed * 10 + i, arch=arch, docker=docker)
        for i, arch in enumerate(("amd64", "arm64"))
    ]
    doc = {
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST if docker else OCI_INDEX,
        "manifests": [
            {
                **descriptor(child.manifest.body, child.manifest.media_type),
                "platform": {"os": "linux", "architecture": arch},
            }
            for child, arch in zip(children, ("amd64", "arm64"), strict=True)
        ],
    }
    index = Manifest.of(canonical(doc))
    client.put_manifest(repo, tag, index)
    return index, children


def push_referrer(
    client: RegistryClient, repo: str, subject: Manifest, note: str = "signed"
) -> Manifest:
    """An OCI 1.1 artifact (empty config, one small blob) whose subject is `subject`."""
    empty = b"{}"
    payload = note.encode()
    client.upload_blob(repo, empty)
    client.upload_blob(repo, payload)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SIGNATURE_TYPE,
        "config": descriptor(empty, "application/vnd.oci.empty.v1+json"),
        "layers": [descriptor(payload, "application/octet-stream")],
        "subject": descriptor(subject.body, subject.media_type),
        "annotations": {"note": note},
    }
    referrer = Manifest.of(canonical(doc))
    RemoteRepository(client, repo).put_manifest(referrer.digest, referrer)
    return referrer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ReferenceRegistry:
    url: str
    host: str
    root: Path  # its storage rootdirectory: root/docker/registry/v2/...
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@contextlib.contextmanager
def reference_registry(
    workdir: Path, htpasswd: tuple[str, str] | None = None
) -> Iterator[ReferenceRegistry]:
    """Debian's docker-registry on a free loopback port, storage under workdir/data."""
    binary = require_tool("docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    auth = ""
    if htpasswd is not None:
        require_tool("htpasswd")
        users = workdir / "htpasswd"
        line = subprocess.run(
            ["htpasswd", "-Bbn", *htpasswd], check=True, capture_output=True, text=True
        ).stdout.strip()
        users.write_text(line + "\n")
        auth = f"auth:\n  htpasswd:\n    realm: reference\n    path: {users}\n"
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{auth}"
    )
    log = (workdir / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    registry = ReferenceRegistry(
        f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", workdir / "data", process
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"{registry.url}/v2/", timeout=2).status_code in (200, 401):
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"docker-registry did not start: {(workdir / 'registry.log').read_text()}"
                )
            time.sleep(0.1)
        yield registry
    finally:
        registry.stop()
        log.close()
