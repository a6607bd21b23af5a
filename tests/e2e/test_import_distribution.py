"""`berth import distribution`: images pushed with skopeo into a real reference registry
(docker-registry), which is then stopped; its directory is imported, and every tag pulled
back from a Berth serving the result is the same, byte for byte."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.client import Manifest, RegistryClient
from app.client.media import OCI_INDEX
from app.db.session import engine_url
from tests.e2e.clients import require_tool, skopeo_copy
from tests.e2e.conftest import BERTH, StartServer
from tests.e2e.images import canonical, push_image, push_referrer, reference_registry
from tests.e2e.ocilayout import ANNOTATION_REF_NAME, build_oci_layout, read_layout


def _berth(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    full.pop("BERTH_CONFIG", None)
    return subprocess.run(
        [str(BERTH), *args], env=full, capture_output=True, text=True, timeout=300
    )


def _multi_arch_layout(path: Path) -> str:
    """An OCI layout whose tag v1 is an index of two images; returns the index digest."""
    parts = [build_oci_layout(path / f"part{i}", seed=40 + i, layers=2) for i in range(2)]
    combined = path / "multi"
    shutil.copytree(parts[0].path, combined)
    shutil.copytree(parts[1].path / "blobs", combined / "blobs", dirs_exist_ok=True)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": part.manifest_media_type,
                "digest": part.manifest_digest,
                "size": part.manifest_size,
                "platform": {"os": "linux", "architecture": arch},
            }
            for part, arch in zip(parts, ("amd64", "arm64"), strict=True)
        ],
    }
    body = canonical(index)
    digest = Manifest.of(body).digest
    (combined / "blobs" / "sha256" / digest[7:]).write_bytes(body)
    entry = {
        "mediaType": OCI_INDEX,
        "digest": digest,
        "size": len(body),
        "annotations": {ANNOTATION_REF_NAME: "v1"},
    }
    (combined / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
    )
    return digest


def _fill_reference(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A stopped reference registry's storage and the {repo:tag: digest} it holds."""
    require_tool("skopeo")
    pushed: dict[str, str] = {}
    with reference_registry(tmp_path / "reference") as ref:
        single = build_oci_layout(tmp_path / "single", seed=31, layers=3)
        dest = f"docker://{ref.host}"
        pushed["library/app:v1"] = skopeo_copy(single.ref, f"{dest}/library/app:v1") or ""
        pushed["library/app:v1.1"] = skopeo_copy(single.ref, f"{dest}/library/app:v1.1") or ""
        # Docker schema 2 (skopeo converts, so the digest is new).
        pushed["tools/docker-app:latest"] = (
            skopeo_copy(
                single.ref,
                f"{dest}/tools/docker-app:latest",
                preserve_digests=False,
                extra_args=["--format", "v2s2"],
            )
            or ""
        )
        multi = _multi_arch_layout(tmp_path / "layouts")
        skopeo_copy(
            f"oci:{tmp_path / 'layouts' / 'multi'}:v1",
            f"{dest}/multi/arch:v1",
            extra_args=["--all"],
        )
        pushed["multi/arch:v1"] = multi
        with RegistryClient(ref.url, auth=False) as client:
            subject = client.get_manifest("library/app", "v1")
            referrer = push_referrer(client, "library/app", subject, "signature")
            pushed["library/app@referrer"] = referrer.digest
            # A tag the reference registry made for the referrer (OCI 1.1 fallback).
            tags = list(client.tags("library/app"))
            assert f"sha256-{subject.digest[7:]}" in tags
            more = push_image(client, "many/tags", "t0", seed=50)
            for i in range(1, 12):
                client.put_manifest("many/tags", f"t{i}", more.manifest)
                pushed[f"many/tags:t{i}"] = more.manifest.digest
            pushed["many/tags:t0"] = more.manifest.digest
    return ref.root, pushed


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'berth.db'}"
    return str(request.getfixturevalue("pg_database"))


def test_import_distribution_then_pull_every_tag_byte_for_byte(
    tmp_path: Path, berth_server_factory: StartServer, database_url: str
) -> None:
    root, pushed = _fill_reference(tmp_path)
    db = database_url
    storage = tmp_path / "storage"
    env = {"BERTH_DATABASE_URL": database_url, "BERTH_STORAGE_ROOT": str(storage)}

    dry = _berth(env, "import", "distribution", str(root), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would import 4 repositories" in dry.stdout
    assert "multi/arch:v1 -> " + pushed["multi/arch:v1"] in dry.stdout
    assert not (storage / "blobs").exists()  # nothing written

    # Interrupted after one repository, as far as the database can tell; then finished.
    first = _berth(env, "import", "distribution", str(root), "--repository", "library/app")
    assert first.returncode == 0, first.stdout + first.stderr
    links_before = _rows(db, "SELECT blob_id, created_at FROM repository_blob")
    full = _berth(env, "import", "distribution", str(root), "--hardlink")
    assert full.returncode == 0, full.stdout + full.stderr
    assert "imported 4 repositories" in full.stdout
    assert "already in Berth: 3 tags" in full.stdout  # library/app's two, and its referrer tag
    again = _berth(env, "import", "distribution", str(root), "--hardlink")
    assert again.returncode == 0, again.stderr
    assert "0 tags, 0 manifests, 0 blobs (0 bytes)" in again.stdout
    # Nothing done before was touched by the later runs.
    assert set(links_before) <= set(_rows(db, "SELECT blob_id, created_at FROM repository_blob"))
    # --hardlink: what the full run brought in shares its inode with the reference's file;
    # library/app's blobs, copied by the first run, do not.
    links = {p.stat().st_nlink for p in (root / "docker/registry/v2/blobs").glob("*/*/*/data")}
    assert links == {1, 2}

    server = berth_server_factory(database_url=database_url, storage_root=storage)
    with RegistryClient(server.url, auth=False) as client:
        v2 = root / "docker" / "registry" / "v2" / "blobs" / "sha256"
        for name_tag, digest in pushed.items():
            if "@" in name_tag:
                continue
            repo, tag = name_tag.split(":")
            got = client.get_manifest(repo, tag)
            assert got.digest == digest, name_tag
            assert got.body == (v2 / digest[7:9] / digest[7:] / "data").read_bytes()
            for manifest in [
                got,
                *[client.get_manifest(repo, c["digest"]) for c in got.children()],
            ]:
                for blob in manifest.blobs():
                    hex_ = blob["digest"][7:]
                    stored = (v2 / hex_[:2] / hex_ / "data").read_bytes()
                    assert client.get_blob(repo, blob["digest"]) == stored
        subject = client.get_manifest("library/app", "v1")
        found = client.referrers("library/app", subject.digest)
        assert [d["digest"] for d in found] == [pushed["library/app@referrer"]]
        assert sorted(client.catalog()) == [
            "library/app",
            "many/tags",
            "multi/arch",
            "tools/docker-app",
        ]
    # And a real client pulls every platform of the index with its digests intact.
    out = tmp_path / "pulled"
    digest = skopeo_copy(f"docker://{server.host}/multi/arch:v1", f"oci:{out}:v1",
                         extra_args=["--all"])  # fmt: skip
    assert digest == pushed["multi/arch:v1"]
    single = tmp_path / "pulled-single"
    skopeo_copy(f"docker://{server.host}/library/app:v1", f"oci:{single}:v1")
    assert read_layout(single, "v1").manifest_digest == pushed["library/app:v1"]


def test_a_corrupt_blob_is_refused_and_reported(tmp_path: Path) -> None:
    with (
        reference_registry(tmp_path / "reference") as ref,
        RegistryClient(ref.url, auth=False) as client,
    ):
        image = push_image(client, "broken", "v1", seed=60)
    layer = image.manifest.blobs()[1]["digest"][7:]
    data = ref.root / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    data.write_bytes(b"\0" * data.stat().st_size)
    env = {
        "BERTH_DATABASE_URL": f"sqlite:///{tmp_path / 'berth.db'}",
        "BERTH_STORAGE_ROOT": str(tmp_path / "storage"),
    }
    result = _berth(env, "import", "distribution", str(ref.root))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"blob sha256:{layer}: DIGEST_INVALID" in result.stderr
    assert "MANIFEST_BLOB_UNKNOWN" in result.stderr  # so the manifest and tag stay out
    assert not list((tmp_path / "storage" / "blobs" / "sha256").glob(f"{layer[:2]}/{layer}"))


def test_not_a_distribution_store_is_a_clear_error(tmp_path: Path) -> None:
    env = {"BERTH_DATABASE_URL": f"sqlite:///{tmp_path / 'berth.db'}"}
    result = _berth(env, "import", "distribution", str(tmp_path))
    assert result.returncode == 1
    assert "no docker/registry/v2" in result.stderr


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    engine = create_engine(engine_url(url))
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]
    finally:
        engine.dispose()


pytestmark = pytest.mark.e2e
