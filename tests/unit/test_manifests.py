"""What a manifest PUT accepts, what it refuses with MANIFEST_INVALID, and which blobs and
child manifests it must find in the repository (manifests.parse, no database)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.errors import ManifestInvalid
from app.registry.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ParsedManifest,
    parse,
)

CONFIG = "sha256:" + "c" * 64
LAYER = "sha256:" + "1" * 64
LAYER2 = "sha256:" + "2" * 64
CHILD = "sha256:" + "a" * 64
CHILD2 = "sha256:" + "b" * 64
SUBJECT = "sha256:" + "5" * 64
SHA512 = "sha512:" + "e" * 128
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def descriptor(digest: str, media_type: Any = OCI_LAYER, size: Any = 10) -> dict:
    found: dict[str, Any] = {"digest": digest, "size": size}
    if media_type is not None:
        found["mediaType"] = media_type
    return found


def image(media_type: str | None = OCI_MANIFEST, **fields: Any) -> dict:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "config": descriptor(CONFIG, OCI_CONFIG),
        "layers": [descriptor(LAYER), descriptor(LAYER2)],
    }
    if media_type is not None:
        doc["mediaType"] = media_type
    doc.update(fields)
    return doc


def index(media_type: str | None = OCI_INDEX, **fields: Any) -> dict:
    children = [descriptor(CHILD, OCI_MANIFEST), descriptor(CHILD2, OCI_MANIFEST)]
    doc: dict[str, Any] = {"schemaVersion": 2, "manifests": children}
    if media_type is not None:
        doc["mediaType"] = media_type
    doc.update(fields)
    return doc


def put(doc: Any, content_type: str | None = None) -> ParsedManifest:
    return parse(json.dumps(doc).encode(), content_type)


def refused(doc: Any, content_type: str | None = None) -> ManifestInvalid:
    with pytest.raises(ManifestInvalid) as info:
        put(doc, content_type)
    return info.value


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("media_type", [OCI_MANIFEST, DOCKER_MANIFEST])
def test_image_references_its_config_and_layers(media_type: str) -> None:
    parsed = put(image(media_type), media_type)
    assert parsed.media_type == media_type
    # Config first, then layers in order: every one must exist in the repository.
    assert parsed.blobs == [CONFIG, LAYER, LAYER2]
    assert parsed.manifests == []
    assert parsed.subject is None


@pytest.mark.parametrize("media_type", [OCI_INDEX, DOCKER_LIST])
def test_index_references_its_children_as_manifests(media_type: str) -> None:
    parsed = put(index(media_type), media_type)
    assert parsed.media_type == media_type
    assert parsed.manifests == [CHILD, CHILD2]
    assert parsed.blobs == []


def test_media_type_may_come_from_content_type_alone() -> None:
    # Older clients leave mediaType out of the body and send it only as the header.
    parsed = put(image(media_type=None), f"{DOCKER_MANIFEST}; charset=utf-8")
    assert parsed.media_type == DOCKER_MANIFEST
    assert parsed.blobs == [CONFIG, LAYER, LAYER2]


def test_media_type_in_body_suffices_without_content_type() -> None:
    assert put(index(), None).media_type == OCI_INDEX


@pytest.mark.parametrize("header", ["application/json", "application/json; charset=utf-8"])
def test_generic_json_content_type_is_tolerated(header: str) -> None:
    assert put(image(), header).media_type == OCI_MANIFEST


def test_sha512_descriptors_are_accepted() -> None:
    doc = image(layers=[descriptor(SHA512)])
    assert put(doc).blobs == [CONFIG, SHA512]


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ],
)
def test_foreign_layers_with_urls_are_not_required(media_type: str) -> None:
    # Windows base layers are fetched from their urls; clients never push them here.
    foreign = {**descriptor(LAYER2, media_type), "urls": ["https://mcr.example/layer"]}
    parsed = put(image(layers=[descriptor(LAYER), foreign]))
    assert parsed.blobs == [CONFIG, LAYER]


def test_foreign_layer_without_urls_must_be_pushed() -> None:
    # With nowhere else to fetch it from, the registry must hold it.
    foreign = descriptor(LAYER2, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    assert put(image(layers=[foreign])).blobs == [CONFIG, LAYER2]


def test_urls_on_an_ordinary_layer_do_not_excuse_it() -> None:
    ordinary = {**descriptor(LAYER2), "urls": ["https://elsewhere.example/blob"]}
    assert put(image(layers=[ordinary])).blobs == [CONFIG, LAYER2]


def test_image_with_no_layers() -> None:
    # Artifacts (ORAS, cosign) may carry only a config.
    assert put(image(layers=[])).blobs == [CONFIG]


@pytest.mark.parametrize("make", [image, index])
def test_subject_is_recorded_but_not_required(make: Any) -> None:
    parsed = put(make(subject=descriptor(SUBJECT, OCI_MANIFEST)))
    assert parsed.subject == SUBJECT
    # A referrer may be pushed before its subject: the subject is not a reference to check.
    assert SUBJECT not in parsed.blobs and SUBJECT not in parsed.manifests


def test_null_subject_is_no_subject() -> None:
    assert put(image(subject=None)).subject is None


def test_image_artifact_type_explicit_wins_over_config() -> None:
    parsed = put(image(artifactType="application/vnd.example.sbom"))
    assert parsed.artifact_type == "application/vnd.example.sbom"


def test_image_artifact_type_falls_back_to_config_media_type() -> None:
    # What the referrers API reports for an image without artifactType (OCI 1.1).
    assert put(image()).artifact_type == OCI_CONFIG


def test_image_without_artifact_type_or_config_media_type() -> None:
    doc = image(config=descriptor(CONFIG, media_type=None))
    assert put(doc).artifact_type is None


def test_index_artifact_type_is_only_the_explicit_one() -> None:
    assert put(index()).artifact_type is None
    assert put(index(artifactType="application/vnd.example")).artifact_type == (
        "application/vnd.example"
    )


def test_annotations_are_kept() -> None:
    notes = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    assert put(image(annotations=notes)).annotations == notes
    assert put(index()).annotations is None


# --------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    "body", [b"", b"{", b"not json", b'{"schemaVersion": 2,}', b"\xff\xfe\xfa"]
)
def test_body_that_is_not_json(body: bytes) -> None:
    with pytest.raises(ManifestInvalid, match="not valid JSON"):
        parse(body, OCI_MANIFEST)


@pytest.mark.parametrize("doc", [[], [image()], "manifest", 2, None])
def test_json_that_is_not_an_object(doc: Any) -> None:
    assert "not a JSON object" in str(refused(doc, OCI_MANIFEST))


@pytest.mark.parametrize(
    ("doc", "header"),
    [
        (image(OCI_MANIFEST), DOCKER_MANIFEST),
        (image(DOCKER_MANIFEST), OCI_MANIFEST),
        (index(OCI_INDEX), OCI_MANIFEST),
        (image(OCI_MANIFEST), "text/plain"),
    ],
)
def test_media_type_must_match_content_type(doc: dict, header: str) -> None:
    error = refused(doc, header)
    assert "does not match" in str(error)
    assert error.detail == {"mediaType": doc["mediaType"], "Content-Type": header}


@pytest.mark.parametrize(
    ("doc", "header"),
    [
        (image(media_type=None), None),  # no media type anywhere
        (image(media_type=None), "application/json"),
        (image("application/vnd.docker.distribution.manifest.v1+json"), None),  # schema 1
        (image("application/vnd.oci.image.config.v1+json"), None),
        (image(media_type=None), "application/octet-stream"),
    ],
)
def test_unsupported_media_type(doc: dict, header: str | None) -> None:
    assert "unsupported manifest media type" in str(refused(doc, header))


@pytest.mark.parametrize("version", [1, 3, "2", None, True])
def test_schema_version_must_be_2(version: Any) -> None:
    assert "schemaVersion" in str(refused(image(schemaVersion=version)))


def test_missing_schema_version() -> None:
    doc = image()
    del doc["schemaVersion"]
    assert "schemaVersion" in str(refused(doc))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("sha256:" + "c" * 64, "not a descriptor"),  # a bare digest
        (None, "not a descriptor"),
        ({"size": 10, "mediaType": OCI_CONFIG}, "has no digest"),
        ({"digest": 12, "size": 10}, "has no digest"),
        (descriptor("sha256:" + "C" * 64), "bad digest"),
        (descriptor("sha256:abc"), "bad digest"),
        (descriptor("md5:" + "c" * 32), "bad digest"),
        (descriptor("sha256:../../etc/passwd"), "bad digest"),
        (descriptor(CONFIG, size=-1), "no valid size"),
        (descriptor(CONFIG, size=True), "no valid size"),
        (descriptor(CONFIG, size=10.0), "no valid size"),
        (descriptor(CONFIG, size="10"), "no valid size"),
        ({"digest": CONFIG, "mediaType": OCI_CONFIG}, "no valid size"),
        (descriptor(CONFIG, media_type=7), "invalid mediaType"),
    ],
)
def test_bad_config_descriptor(bad: Any, message: str) -> None:
    error = refused(image(config=bad))
    assert message in str(error)
    # The client is told which descriptor is wrong.
    assert error.detail["field"] == "config"


def test_missing_config() -> None:
    doc = image()
    del doc["config"]
    assert refused(doc).detail == {"field": "config"}


def test_bad_layer_names_its_index() -> None:
    error = refused(image(layers=[descriptor(LAYER), descriptor("sha256:nothex")]))
    assert error.detail == {"field": "layers[1]", "digest": "sha256:nothex"}


def test_bad_foreign_layer_is_still_refused() -> None:
    # Skipping foreign layers must not skip checking them.
    foreign = descriptor(LAYER, "application/vnd.oci.image.layer.nondistributable.v1.tar", -1)
    error = refused(image(layers=[{**foreign, "urls": ["https://x.example/l"]}]))
    assert error.detail == {"field": "layers[0]"}


@pytest.mark.parametrize("layers", [None, {"0": LAYER}, LAYER, 3])
def test_layers_must_be_a_list(layers: Any) -> None:
    doc = image(layers=layers)
    assert "layers must be a list" in str(refused(doc))


def test_missing_layers() -> None:
    doc = image()
    del doc["layers"]
    assert "layers must be a list" in str(refused(doc))


@pytest.mark.parametrize("manifests", [None, {}, CHILD])
def test_manifests_must_be_a_list(manifests: Any) -> None:
    assert "manifests must be a list" in str(refused(index(manifests=manifests)))


def test_bad_child_names_its_index() -> None:
    children = [descriptor(CHILD, OCI_MANIFEST), {"digest": CHILD2, "mediaType": OCI_MANIFEST}]
    assert refused(index(manifests=children)).detail == {"field": "manifests[1]"}


@pytest.mark.parametrize("make", [image, index])
def test_bad_subject(make: Any) -> None:
    error = refused(make(subject={"digest": "sha256:short", "size": 1}))
    assert error.detail["field"] == "subject"


@pytest.mark.parametrize("make", [image, index])
@pytest.mark.parametrize("artifact_type", [1, True, ["a"], {"a": "b"}])
def test_artifact_type_must_be_a_string(make: Any, artifact_type: Any) -> None:
    assert "artifactType must be a string" in str(refused(make(artifactType=artifact_type)))


@pytest.mark.parametrize("make", [image, index])
@pytest.mark.parametrize("annotations", [["a", "b"], "a=b", 1])
def test_annotations_must_be_an_object(make: Any, annotations: Any) -> None:
    assert "annotations must be an object" in str(refused(make(annotations=annotations)))


@pytest.mark.parametrize("media_type", [{"x": 1}, ["application/json"]])
def test_non_string_media_type_is_refused(media_type: Any) -> None:
    refused(image(media_type=media_type))


def test_deeply_nested_json_is_refused() -> None:
    with pytest.raises(ManifestInvalid):
        parse(b"[" * 100_000, OCI_MANIFEST)


@pytest.mark.parametrize("annotations", [{"a": 1}, {"a": {"b": "c"}}, {"a": ["b"]}])
def test_annotation_values_must_be_strings(annotations: dict) -> None:
    refused(image(annotations=annotations))
