"""Manifest PUT/GET/HEAD/DELETE for OCI and Docker types, indexes, subjects and errors."""

from __future__ import annotations

import json
import os
import threading

import pytest
from flask import Flask

from tests.helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryClient,
    descriptor,
    error_codes,
    sha256,
)


def test_put_by_tag_and_get_exact_bytes(registry: RegistryClient) -> None:
    image = registry.push_image("team/app", "v1")
    for reference in ("v1", image.digest):
        response = registry.http.get(f"/v2/team/app/manifests/{reference}")
        assert response.status_code == 200
        assert response.data == image.manifest
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.headers["Docker-Content-Digest"] == image.digest
        assert response.headers["ETag"] == f'"{image.digest}"'


def test_put_response_headers(registry: RegistryClient) -> None:
    config = b"{}"
    registry.push_blob("team/app", config)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config, OCI_EMPTY),
            "layers": [],
        }
    ).encode()
    response = registry.put_manifest("team/app", "latest", body)
    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == sha256(body)
    assert response.headers["Location"] == f"/v2/team/app/manifests/{sha256(body)}"
    assert "OCI-Subject" not in response.headers


def test_bytes_are_kept_exactly_as_sent(registry: RegistryClient) -> None:
    config = b"{}"
    registry.push_blob("team/app", config)
    # Odd whitespace and key order must survive: the digest is over these bytes.
    body = (
        b'{\n  "layers": [],\n "schemaVersion":2,   "mediaType": "%s",\n'
        b' "config": {"mediaType": "%s", "size": 2, "digest": "%s"}}\n'
        % (OCI_MANIFEST.encode(), OCI_EMPTY.encode(), sha256(config).encode())
    )
    assert registry.put_manifest("team/app", "odd", body).status_code == 201
    assert registry.http.get("/v2/team/app/manifests/odd").data == body


def test_head_keeps_the_real_content_length(registry: RegistryClient) -> None:
    image = registry.push_image("team/app", "v1")
    response = registry.http.head("/v2/team/app/manifests/v1")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(image.manifest))
    assert response.headers["Docker-Content-Digest"] == image.digest
    assert response.data == b""


def test_if_none_match_gives_304(registry: RegistryClient) -> None:
    image = registry.push_image("team/app", "v1")
    response = registry.http.get(
        "/v2/team/app/manifests/v1", headers={"If-None-Match": f'"{image.digest}"'}
    )
    assert response.status_code == 304
    assert response.data == b""


def test_put_by_digest(registry: RegistryClient) -> None:
    image = registry.push_image("team/app")  # pushed by digest
    assert registry.http.get(f"/v2/team/app/manifests/{image.digest}").data == image.manifest
    assert registry.http.get("/v2/team/app/tags/list").get_json()["tags"] == []


def test_digest_reference_must_match_the_body(registry: RegistryClient) -> None:
    image = registry.push_image("team/app", "v1")
    response = registry.put_manifest("team/app", sha256(b"something else"), image.manifest)
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_retag_moves_the_tag(registry: RegistryClient) -> None:
    first = registry.push_image("team/app", "latest")
    second = registry.push_image("team/app", "latest")
    assert registry.http.get("/v2/team/app/manifests/latest").data == second.manifest
    assert registry.http.get(f"/v2/team/app/manifests/{first.digest}").status_code == 200


def test_docker_schema2_manifest_and_list(registry: RegistryClient) -> None:
    amd = registry.push_image("team/app", media_type=DOCKER_MANIFEST)
    arm = registry.push_image("team/app", media_type=DOCKER_MANIFEST)
    digest = registry.push_index("team/app", "multi", [amd, arm], media_type=DOCKER_LIST)
    response = registry.http.get("/v2/team/app/manifests/multi")
    assert response.headers["Content-Type"] == DOCKER_LIST
    assert response.headers["Docker-Content-Digest"] == digest
    child = registry.http.get(f"/v2/team/app/manifests/{amd.digest}")
    assert child.headers["Content-Type"] == DOCKER_MANIFEST


def test_oci_index(registry: RegistryClient) -> None:
    children = [registry.push_image("team/app") for _ in range(3)]
    digest = registry.push_index("team/app", "v1", children)
    response = registry.http.get("/v2/team/app/manifests/v1")
    assert response.headers["Content-Type"] == OCI_INDEX
    assert response.headers["Docker-Content-Digest"] == digest


def test_index_with_a_missing_child_is_refused(registry: RegistryClient) -> None:
    child = registry.push_image("other/app")
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [descriptor(child.manifest, OCI_MANIFEST)],
        }
    ).encode()
    response = registry.put_manifest("team/app", "v1", body, OCI_INDEX)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_BLOB_UNKNOWN"]


def test_missing_blobs_are_each_reported(registry: RegistryClient) -> None:
    config, layer1, layer2 = b"{}", os.urandom(100), os.urandom(100)
    registry.push_blob("team/app", layer1)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config, OCI_EMPTY),
            "layers": [descriptor(layer1, "x/y"), descriptor(layer2, "x/y")],
        }
    ).encode()
    response = registry.put_manifest("team/app", "v1", body)
    assert response.status_code == 400
    errors = response.get_json()["errors"]
    assert [e["code"] for e in errors] == ["MANIFEST_BLOB_UNKNOWN"] * 2
    assert {e["detail"]["digest"] for e in errors} == {sha256(config), sha256(layer2)}
    assert registry.http.get("/v2/team/app/manifests/v1").status_code == 404


def test_blobs_of_another_repository_do_not_count(registry: RegistryClient) -> None:
    image = registry.push_image("team/app", "v1")
    response = registry.put_manifest("other/app", "v1", image.manifest)
    assert response.status_code == 400
    assert set(error_codes(response)) == {"MANIFEST_BLOB_UNKNOWN"}


def test_foreign_layers_need_not_be_pushed(registry: RegistryClient) -> None:
    config = b"{}"
    registry.push_blob("team/win", config)
    foreign = descriptor(
        b"windows base layer",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        urls=["https://example.invalid/layer"],
    )
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": descriptor(config, "application/vnd.docker.container.image.v1+json"),
            "layers": [foreign],
        }
    ).encode()
    assert registry.put_manifest("team/win", "v1", body, DOCKER_MANIFEST).status_code == 201


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", OCI_MANIFEST),
        (b"[]", OCI_MANIFEST),
        (b'{"schemaVersion": 2}', "application/x-unknown"),
        (b'{"schemaVersion": 2, "mediaType": "text/plain"}', "text/plain"),
        (
            b'{"schemaVersion": 1, "mediaType": "%s", "config": {}, "layers": []}'
            % OCI_MANIFEST.encode(),
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion": 2, "mediaType": "%s", "layers": []}' % OCI_MANIFEST.encode(),
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion": 2, "mediaType": "%s", "layers": [],'
            b' "config": {"digest": "sha256:nope", "size": 1}}' % OCI_MANIFEST.encode(),
            OCI_MANIFEST,
        ),
        (
            b'{"schemaVersion": 2, "mediaType": "%s", "manifests": {}}' % OCI_INDEX.encode(),
            OCI_INDEX,
        ),
        (b'{"schemaVersion": 2, "mediaType": "%s"}' % OCI_INDEX.encode(), OCI_MANIFEST),
        (b"\xff\xfe", OCI_MANIFEST),
    ],
)
def test_malformed_manifests_are_manifest_invalid(
    registry: RegistryClient, body: bytes, content_type: str
) -> None:
    response = registry.put_manifest("team/app", "v1", body, content_type)
    assert response.status_code == 400
    assert error_codes(response) == ["MANIFEST_INVALID"]
    assert registry.http.get("/v2/team/app/manifests/v1").status_code == 404


def test_manifest_over_4_mib_is_413(registry: RegistryClient) -> None:
    body = b'{"schemaVersion": 2, "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}'
    response = registry.put_manifest("team/app", "big", body)
    assert response.status_code == 413
    assert response.get_json()["errors"]


def test_manifest_of_exactly_4_mib_is_accepted(registry: RegistryClient) -> None:
    config = b"{}"
    registry.push_blob("team/app", config)
    head = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config, OCI_EMPTY),
            "layers": [],
        }
    ).encode()[:-1]
    pad = 4 * 1024 * 1024 - len(head) - len(b', "annotations": {"p": ""}}')
    body = head + b', "annotations": {"p": "' + b"x" * pad + b'"}}'
    assert len(body) == 4 * 1024 * 1024
    assert registry.put_manifest("team/app", "big", body).status_code == 201


@pytest.mark.parametrize("tag", ["-bad", ".bad", "a" * 129, "bad+tag"])
def test_invalid_tag_is_tag_invalid(registry: RegistryClient, tag: str) -> None:
    image = registry.push_image("team/app")
    response = registry.put_manifest("team/app", tag, image.manifest)
    assert response.status_code == 400
    assert error_codes(response) == ["TAG_INVALID"]


def test_unknown_manifest_is_404(registry: RegistryClient) -> None:
    for reference in ("nope", sha256(b"nope")):
        response = registry.http.get(f"/v2/team/app/manifests/{reference}")
        assert response.status_code == 404
        assert error_codes(response) == ["MANIFEST_UNKNOWN"]


def test_delete_by_tag_only_untags(registry: RegistryClient) -> None:
    image = registry.push_image("team/app", "v1")
    registry.put_manifest("team/app", "v2", image.manifest)
    assert registry.http.delete("/v2/team/app/manifests/v1").status_code == 202
    assert registry.http.get("/v2/team/app/manifests/v1").status_code == 404
    assert registry.http.get("/v2/team/app/manifests/v2").status_code == 200
    assert registry.http.get(f"/v2/team/app/manifests/{image.digest}").status_code == 200


def test_delete_by_digest_removes_every_tag(registry: RegistryClient) -> None:
    image = registry.push_image("team/app", "v1")
    registry.put_manifest("team/app", "v2", image.manifest)
    assert registry.http.delete(f"/v2/team/app/manifests/{image.digest}").status_code == 202
    for reference in ("v1", "v2", image.digest):
        assert registry.http.get(f"/v2/team/app/manifests/{reference}").status_code == 404
    assert registry.http.get("/v2/team/app/tags/list").get_json()["tags"] == []
    response = registry.http.delete(f"/v2/team/app/manifests/{image.digest}")
    assert response.status_code == 404
    assert error_codes(response) == ["MANIFEST_UNKNOWN"]


@pytest.mark.parametrize("settings_overrides", [{"delete_enabled": False}])
def test_delete_disabled(registry: RegistryClient) -> None:
    image = registry.push_image("team/app", "v1")
    for reference in ("v1", image.digest):
        response = registry.http.delete(f"/v2/team/app/manifests/{reference}")
        assert response.status_code == 405
        assert error_codes(response) == ["UNSUPPORTED"]
    assert registry.http.get("/v2/team/app/manifests/v1").status_code == 200


def test_subject_and_referrers(registry: RegistryClient) -> None:
    subject = registry.push_image("team/app", "v1")
    empty = b"{}"
    registry.push_blob("team/app", empty)
    signature = os.urandom(64)
    registry.push_blob("team/app", signature)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": descriptor(empty, OCI_EMPTY),
        "layers": [descriptor(signature, "application/octet-stream")],
        "subject": descriptor(subject.manifest, OCI_MANIFEST),
        "annotations": {"org.example.signer": "ci"},
    }
    body = json.dumps(doc).encode()
    response = registry.put_manifest("team/app", sha256(body), body)
    assert response.status_code == 201
    assert response.headers["OCI-Subject"] == subject.digest
    sbom = registry.push_image(
        "team/app",
        subject=descriptor(subject.manifest, OCI_MANIFEST),
        artifactType="application/spdx+json",
    )

    response = registry.http.get(f"/v2/team/app/referrers/{subject.digest}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    index = response.get_json()
    assert index["schemaVersion"] == 2 and index["mediaType"] == OCI_INDEX
    by_digest = {m["digest"]: m for m in index["manifests"]}
    assert by_digest[sha256(body)] == {
        "mediaType": OCI_MANIFEST,
        "digest": sha256(body),
        "size": len(body),
        "artifactType": "application/vnd.example.signature",
        "annotations": {"org.example.signer": "ci"},
    }
    assert by_digest[sbom.digest]["artifactType"] == "application/spdx+json"

    filtered = registry.http.get(
        f"/v2/team/app/referrers/{subject.digest}?artifactType=application/spdx%2Bjson"
    )
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in filtered.get_json()["manifests"]] == [sbom.digest]


def test_referrer_artifact_type_defaults_to_config_media_type(registry: RegistryClient) -> None:
    subject = registry.push_image("team/app", "v1")
    referrer = registry.push_image("team/app", subject=descriptor(subject.manifest, OCI_MANIFEST))
    index = registry.http.get(f"/v2/team/app/referrers/{subject.digest}").get_json()
    assert index["manifests"][0]["digest"] == referrer.digest
    assert index["manifests"][0]["artifactType"] == "application/vnd.oci.image.config.v1+json"


def test_subject_may_be_missing(registry: RegistryClient) -> None:
    absent = sha256(b"not pushed yet")
    subject = {"mediaType": OCI_MANIFEST, "digest": absent, "size": 10}
    response_image = registry.push_image("team/app", subject=subject)
    index = registry.http.get(f"/v2/team/app/referrers/{absent}").get_json()
    assert [m["digest"] for m in index["manifests"]] == [response_image.digest]


def test_referrers_empty_and_invalid(registry: RegistryClient) -> None:
    response = registry.http.get(f"/v2/team/app/referrers/{sha256(b'none')}")
    assert response.status_code == 200
    assert response.get_json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    response = registry.http.get("/v2/team/app/referrers/sha256:bad")
    assert response.status_code == 400
    assert error_codes(response) == ["DIGEST_INVALID"]


def test_referrers_go_with_a_deleted_manifest(registry: RegistryClient) -> None:
    subject = registry.push_image("team/app", "v1")
    referrer = registry.push_image("team/app", subject=descriptor(subject.manifest, OCI_MANIFEST))
    registry.http.delete(f"/v2/team/app/manifests/{referrer.digest}")
    index = registry.http.get(f"/v2/team/app/referrers/{subject.digest}").get_json()
    assert index["manifests"] == []


def test_concurrent_pushes_of_the_same_tag(app: Flask, registry: RegistryClient) -> None:
    images = [registry.push_image("team/app") for _ in range(6)]
    statuses: list[int] = []

    def push(body: bytes) -> None:
        client = app.test_client()
        response = client.put(
            "/v2/team/app/manifests/latest", data=body, headers={"Content-Type": OCI_MANIFEST}
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=push, args=(image.manifest,)) for image in images * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [201] * 12
    final = registry.http.get("/v2/team/app/manifests/latest").data
    assert final in {image.manifest for image in images}
    assert registry.http.get("/v2/team/app/tags/list").get_json()["tags"] == ["latest"]
