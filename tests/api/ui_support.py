"""Helpers for the web UI tests: seeding content through the registry API, reading forms."""

from __future__ import annotations

import json
import re

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.helpers import CONFIG, LAYER, OCI_MANIFEST, Image, RegistryClient, descriptor, sha256

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def html(response: TestResponse) -> str:
    return response.get_data(as_text=True)


def csrf_of(client: FlaskClient, path: str = "/ui/") -> str:
    """The CSRF token the forms of `path` carry for this client's session."""
    page = client.get(path)
    found = _CSRF.search(html(page))
    assert found, f"no form with a CSRF token on {path} ({page.status_code})"
    return found.group(1)


def push_config_image(
    registry: RegistryClient, repo: str, tag: str, config: dict[str, object], layers: int = 2
) -> Image:
    """An image whose config is `config` (created, Env, Labels, history ...)."""
    config_bytes = json.dumps(config).encode()
    blobs = [f"{repo}:{tag}:layer{i}".encode() * 50 for i in range(layers)]
    for blob in [config_bytes, *blobs]:
        registry.push_blob(repo, blob)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config_bytes, CONFIG),
            "layers": [descriptor(b, LAYER) for b in blobs],
        }
    ).encode()
    response = registry.put_manifest(repo, tag, body)
    assert response.status_code == 201, response.get_data(as_text=True)
    return Image(body, sha256(body), config_bytes, blobs)


def push_referrer(
    registry: RegistryClient,
    repo: str,
    subject: Image | str,
    artifact_type: str,
    annotations: dict[str, str] | None = None,
) -> str:
    """An OCI 1.1 artifact (empty config, one blob) whose subject is `subject`."""
    subject_digest = subject if isinstance(subject, str) else subject.digest
    subject_body = b"" if isinstance(subject, str) else subject.manifest
    empty = b"{}"
    payload = f"{artifact_type} for {subject_digest}".encode()
    registry.push_blob(repo, empty)
    registry.push_blob(repo, payload)
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor(empty, "application/vnd.oci.empty.v1+json"),
        "layers": [descriptor(payload, "application/octet-stream")],
        "subject": {
            "mediaType": OCI_MANIFEST,
            "digest": subject_digest,
            "size": len(subject_body),
        },
    }
    if annotations:
        doc["annotations"] = annotations
    body = json.dumps(doc).encode()
    response = registry.put_manifest(repo, sha256(body), body)
    assert response.status_code == 201, response.get_data(as_text=True)
    return sha256(body)
