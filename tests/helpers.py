"""A thin client over Flask's test client that speaks the registry protocol."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def error_codes(response: TestResponse) -> list[str]:
    return [e["code"] for e in response.get_json()["errors"]]


def descriptor(data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data), **extra}


@dataclass
class Image:
    manifest: bytes
    digest: str
    config: bytes
    layers: list[bytes]


class RegistryClient:
    def __init__(self, client: FlaskClient) -> None:
        self.http = client

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        response = self.http.post(f"/v2/{repo}/blobs/uploads/?digest={digest}", data=data)
        assert response.status_code == 201, response.get_data(as_text=True)
        return digest

    def start_upload(self, repo: str) -> str:
        response = self.http.post(f"/v2/{repo}/blobs/uploads/")
        assert response.status_code == 202, response.get_data(as_text=True)
        return response.headers["Location"]

    def put_manifest(
        self, repo: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST
    ) -> TestResponse:
        return self.http.put(
            f"/v2/{repo}/manifests/{reference}", data=body, headers={"Content-Type": media_type}
        )

    def push_image(
        self,
        repo: str,
        tag: str | None = None,
        layers: int = 2,
        media_type: str = OCI_MANIFEST,
        **fields: Any,
    ) -> Image:
        """Push random layers and a config, then the manifest (by tag, or by digest)."""
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "n": os.urandom(4).hex()}
        ).encode()
        blobs = [os.urandom(1024) for _ in range(layers)]
        for blob in [config, *blobs]:
            self.push_blob(repo, blob)
        layer_type = (
            LAYER
            if media_type == OCI_MANIFEST
            else "application/vnd.docker.image.rootfs.diff.tar.gzip"
        )
        config_type = (
            CONFIG
            if media_type == OCI_MANIFEST
            else "application/vnd.docker.container.image.v1+json"
        )
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": descriptor(config, config_type),
            "layers": [descriptor(b, layer_type) for b in blobs],
            **fields,
        }
        body = json.dumps(doc).encode()
        response = self.put_manifest(repo, tag or sha256(body), body, media_type)
        assert response.status_code == 201, response.get_data(as_text=True)
        return Image(body, sha256(body), config, blobs)

    def push_index(
        self, repo: str, tag: str, children: list[Image], media_type: str = OCI_INDEX
    ) -> str:
        child_type = OCI_MANIFEST if media_type == OCI_INDEX else DOCKER_MANIFEST
        doc = {
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": [
                descriptor(
                    c.manifest, child_type, platform={"architecture": f"arch{i}", "os": "linux"}
                )
                for i, c in enumerate(children)
            ],
        }
        body = json.dumps(doc).encode()
        response = self.put_manifest(repo, tag, body, media_type)
        assert response.status_code == 201, response.get_data(as_text=True)
        return sha256(body)
