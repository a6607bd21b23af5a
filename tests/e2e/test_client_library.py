"""app.client against a real `berth serve`: listings, every manifest media type, blobs
streamed and verified, uploads (monolithic, chunked, resumed after a dropped connection,
mounted), referrers, typed errors, and copies between two servers."""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator

import pytest

from app.client import DigestMismatch, Manifest, OciLayout, RegistryClient, copy, errors
from app.client.media import OCI_MANIFEST, digest_of
from tests.e2e.conftest import BerthServer, StartServer
from tests.e2e.cutproxy import cut_proxy
from tests.e2e.images import SIGNATURE_TYPE, canonical, push_image, push_index, push_referrer


@pytest.fixture
def client(berth_server: BerthServer) -> Iterator[RegistryClient]:
    with RegistryClient(berth_server.url, auth=False) as c:
        yield c


def test_ping_catalog_and_tags_follow_every_page(client: RegistryClient) -> None:
    assert client.ping()
    for name in ("zeta/app", "alpha", "mid/one"):
        push_image(client, name, "v1", seed=1)
    for i in range(7):
        push_image(client, "alpha", f"t{i}", seed=1)
    assert list(client.catalog(n=2)) == ["alpha", "mid/one", "zeta/app"]
    assert list(client.tags("alpha", n=3)) == ["t0", "t1", "t2", "t3", "t4", "t5", "t6", "v1"]


def test_every_media_type_round_trips_byte_for_byte(client: RegistryClient) -> None:
    oci = push_image(client, "media", "oci", seed=2)
    docker = push_image(client, "media", "docker", seed=3, docker=True)
    oci_index, _ = push_index(client, "media", "index", seed=4)
    docker_list, _ = push_index(client, "media", "list", seed=5, docker=True)
    for tag, sent in (
        ("oci", oci.manifest),
        ("docker", docker.manifest),
        ("index", oci_index),
        ("list", docker_list),
    ):
        got = client.get_manifest("media", tag)
        assert (got.body, got.media_type, got.digest) == (sent.body, sent.media_type, sent.digest)
        head = client.head_manifest("media", sent.digest)
        assert head is not None and (head.digest, head.size) == (sent.digest, sent.size)
    client.delete_manifest("media", "docker")  # the tag only
    assert client.head_manifest("media", "docker") is None
    assert client.get_manifest("media", docker.manifest.digest).body == docker.manifest.body
    client.delete_manifest("media", docker.manifest.digest)
    with pytest.raises(errors.ManifestUnknown) as caught:
        client.get_manifest("media", docker.manifest.digest)
    assert caught.value.code == "MANIFEST_UNKNOWN" and caught.value.status == 404


def test_errors_carry_the_oci_code(client: RegistryClient) -> None:
    missing = "sha256:" + "ab" * 32
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "x", "digest": missing, "size": 1},
        "layers": [],
    }
    with pytest.raises(errors.ManifestBlobUnknown) as caught:
        client.put_manifest("errs", "v1", Manifest.of(canonical(doc)))
    assert caught.value.detail == {"digest": missing}
    with pytest.raises(errors.ManifestInvalid):
        client.put_manifest("errs", "v1", Manifest(digest_of(b"{}"), OCI_MANIFEST, b"{}"))
    with pytest.raises(errors.DigestInvalid):
        client.upload_blob("errs", b"some bytes", digest=digest_of(b"other bytes"))
    with pytest.raises(errors.ManifestUnknown):
        client.get_manifest("errs", "nope")
    assert client.head_blob("errs", missing) is None


def test_blobs_stream_in_chunks_and_are_verified(
    client: RegistryClient, berth_server: BerthServer
) -> None:
    data = random.Random(7).randbytes(3 * 1024 * 1024 + 17)
    digest = client.upload_blob("blobs", io.BytesIO(data), digest_of(data), len(data),
                                chunk_size=1024 * 1024)  # fmt: skip
    assert client.head_blob("blobs", digest) == len(data)
    hasher, chunks = hashlib.sha256(), 0
    with client.open_blob("blobs", digest) as reader:
        while part := reader.read(256 * 1024):
            hasher.update(part)
            chunks += 1
    assert "sha256:" + hasher.hexdigest() == digest and chunks >= 12
    # The same bytes in one PUT land on the same digest.
    assert client.upload_blob("blobs2", data) == digest
    # Bytes that rot on the server's disk are caught by the reader, not handed on as good.
    hex_ = digest.split(":")[1]
    stored = berth_server.storage_root / "blobs" / "sha256" / hex_[:2] / hex_ / "data"
    stored.write_bytes(b"\0" * len(data))
    with pytest.raises(DigestMismatch):
        client.get_blob("blobs", digest)


def test_chunked_upload_resumes_after_a_dropped_connection(berth_server: BerthServer) -> None:
    data = random.Random(8).randbytes(3 * 1024 * 1024)
    with cut_proxy(berth_server.host, cut_after=600 * 1024) as proxy:
        with RegistryClient(f"http://127.0.0.1:{proxy.port}", auth=False) as through:
            digest = through.upload_blob(
                "resume", io.BytesIO(data), digest_of(data), len(data), chunk_size=1024 * 1024
            )
        assert proxy.cuts == 1
    with RegistryClient(berth_server.url, auth=False) as direct:
        assert direct.get_blob("resume", digest) == data


def test_mount_links_a_blob_without_sending_it(client: RegistryClient) -> None:
    data = b"shared layer" * 1000
    digest = client.upload_blob("source/repo", data)
    assert client.mount_blob("target/repo", digest, "source/repo")
    assert client.head_blob("target/repo", digest) == len(data)
    assert not client.mount_blob("target/repo", digest_of(b"absent"), "source/repo")


def test_referrers_are_listed_and_filtered(client: RegistryClient) -> None:
    image = push_image(client, "signed", "v1", seed=9)
    referrer = push_referrer(client, "signed", image.manifest, "first")
    found = client.referrers("signed", image.manifest.digest)
    assert [d["digest"] for d in found] == [referrer.digest]
    assert found[0]["artifactType"] == SIGNATURE_TYPE
    assert client.referrers("signed", image.manifest.digest, artifact_type="other/type") == []


def test_copy_an_index_with_referrers_skips_what_the_target_has(
    berth_server_factory: StartServer,
) -> None:
    src_server, dst_server = berth_server_factory(name="src"), berth_server_factory(name="dst")
    with (
        RegistryClient(src_server.url, auth=False) as src,
        RegistryClient(dst_server.url, auth=False) as dst,
    ):
        index, children = push_index(src, "multi", "v1", seed=11)
        referrer = push_referrer(src, "multi", index, "index-signature")
        child_referrer = push_referrer(src, "multi", children[1].manifest, "arm64-sbom")
        report = copy(_repo(src, "multi"), "v1", _repo(dst, "multi"))
        assert report.digest == index.digest
        assert report.manifests == 5  # index, two images, two referrers
        assert dst.get_manifest("multi", "v1").body == index.body
        for child in children:
            for digest, data in child.blobs.items():
                assert dst.get_blob("multi", digest) == data
        assert [d["digest"] for d in dst.referrers("multi", index.digest)] == [referrer.digest]
        listed = dst.referrers("multi", children[1].manifest.digest)
        assert [d["digest"] for d in listed] == [child_referrer.digest]
        again = copy(_repo(src, "multi"), "v1", _repo(dst, "multi"), "v2")
        assert (again.manifests, again.blobs, again.bytes) == (0, 0, 0)
        assert dst.head_manifest("multi", "v2").digest == index.digest  # type: ignore[union-attr]
        # One platform only: the amd64 image, tagged by itself.
        single = copy(_repo(src, "multi"), "v1", _repo(dst, "single"), all_platforms=False,
                      platform=("linux", "arm64"))  # fmt: skip
        assert dst.get_manifest("single", "v1").digest == children[1].manifest.digest
        assert single.digest == children[1].manifest.digest


def test_copy_to_an_oci_layout_and_back(client: RegistryClient, tmp_path) -> None:
    index, children = push_index(client, "layout", "v1", seed=12)
    push_referrer(client, "layout", index, "sig")
    layout = OciLayout(tmp_path / "layout")
    copy(_repo(client, "layout"), "v1", layout)
    assert layout.tags() == ["v1"]
    assert layout.manifest("v1").body == index.body
    entries = json.loads((tmp_path / "layout" / "index.json").read_text())["manifests"]
    assert len(entries) == 2  # the tag and the referrer
    report = copy(layout, "v1", _repo(client, "back"), "v2")
    assert report.manifests == 4
    assert client.get_manifest("back", "v2").body == index.body
    assert len(client.referrers("back", index.digest)) == 1
    blob = children[0].manifest.blobs()[1]["digest"]
    assert client.get_blob("back", blob) == children[0].blobs[blob]


def _repo(client: RegistryClient, name: str):
    from app.client import RemoteRepository

    return RemoteRepository(client, name)
