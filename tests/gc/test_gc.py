"""Garbage collection in process, on SQLite and PostgreSQL, against a real filesystem store."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import create_engine, select, text

from app.cli import main
from app.db.models import Base
from app.db.session import engine_url
from app.registry import paths
from app.registry.gc import GcOptions, GcReport, collect
from app.registry.references import Digest
from tests.gc.support import age_everything, blob_file, problems, stored_digests
from tests.helpers import OCI_MANIFEST, RegistryClient, descriptor, sha256

HOUR = timedelta(hours=1)


def run_gc(app: Flask, **options: object) -> GcReport:
    lines: list[str] = []
    report = collect(app.extensions["berth"], GcOptions(**options), lines.append)  # type: ignore[arg-type]
    assert lines and lines[-1].startswith("gc: done in"), lines
    return report


def blob_status(registry: RegistryClient, repo: str, digest: str) -> int:
    return registry.http.get(f"/v2/{repo}/blobs/{digest}").status_code


def manifest_status(registry: RegistryClient, repo: str, reference: str) -> int:
    return registry.http.get(f"/v2/{repo}/manifests/{reference}").status_code


def referrer(registry: RegistryClient, repo: str, subject_manifest: bytes) -> str:
    """An OCI 1.1 artifact (a signature, say) whose subject is the given manifest."""
    config, payload = b"{}", os.urandom(64)
    registry.push_blob(repo, config)
    registry.push_blob(repo, payload)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": descriptor(config, "application/vnd.oci.empty.v1+json"),
        "layers": [descriptor(payload, "application/octet-stream")],
        "subject": descriptor(subject_manifest, OCI_MANIFEST),
    }
    body = json.dumps(doc).encode()
    response = registry.put_manifest(repo, sha256(body), body)
    assert response.status_code == 201, response.get_data(as_text=True)
    return sha256(body)


def test_unreferenced_blobs_go_and_referenced_ones_stay(
    registry: RegistryClient, app: Flask, database_url: str, storage_root: Path
) -> None:
    image = registry.push_image("team/app", "v1")
    stray = registry.push_blob("team/app", os.urandom(2048))
    report = run_gc(app, grace=0)
    assert (report.manifests, report.links, report.blobs) == (0, 1, 1)
    assert report.bytes_freed == 2048
    assert blob_status(registry, "team/app", stray) == 404
    assert not blob_file(storage_root, stray).exists()
    for blob in [image.config, *image.layers]:
        response = registry.http.get(f"/v2/team/app/blobs/{sha256(blob)}")
        assert response.status_code == 200 and response.data == blob
    assert problems(database_url, storage_root) == []


def test_grace_period_protects_recent_pushes(
    registry: RegistryClient, app: Flask, database_url: str, storage_root: Path
) -> None:
    registry.push_image("team/app", "v1")
    stray = registry.push_blob("team/app", os.urandom(100))
    untagged = registry.push_image("team/app")
    report = run_gc(app, grace=3600, delete_untagged=True)
    assert (report.manifests, report.links, report.blobs) == (0, 0, 0)
    assert blob_status(registry, "team/app", stray) == 200
    age_everything(database_url, storage_root, 2 * HOUR)
    report = run_gc(app, grace=3600, delete_untagged=True)
    assert report.manifests == 1 and report.blobs == 4  # stray + config + 2 layers
    assert blob_status(registry, "team/app", stray) == 404
    assert manifest_status(registry, "team/app", untagged.digest) == 404


def test_pushing_a_blob_again_restarts_its_grace_period(
    registry: RegistryClient, app: Flask, database_url: str, storage_root: Path
) -> None:
    data = os.urandom(300)
    digest = registry.push_blob("team/app", data)
    age_everything(database_url, storage_root, 2 * HOUR)
    registry.push_blob("team/app", data)  # a client about to push a manifest naming it
    run_gc(app, grace=3600)
    assert blob_status(registry, "team/app", digest) == 200


def test_multi_arch_index_with_untagged_children_survives_delete_untagged(
    registry: RegistryClient, app: Flask, database_url: str, storage_root: Path
) -> None:
    amd64 = registry.push_image("team/app")  # children are pushed by digest, untagged
    arm64 = registry.push_image("team/app")
    index = registry.push_index("team/app", "latest", [amd64, arm64])
    signature = referrer(registry, "team/app", amd64.manifest)  # kept: its subject is kept
    orphan = registry.push_image("team/app")  # untagged, in no index
    orphan_signature = referrer(registry, "team/app", orphan.manifest)
    # A layer the orphan shares with a kept child stays.
    shared = amd64.layers[0]
    doc = json.loads(orphan.manifest)
    doc["layers"].append(descriptor(shared, "application/vnd.oci.image.layer.v1.tar+gzip"))
    body = json.dumps(doc).encode()
    assert registry.put_manifest("team/app", sha256(body), body).status_code == 201
    age_everything(database_url, storage_root, 2 * HOUR)

    report = run_gc(app, delete_untagged=True, grace=3600)

    assert report.manifests == 3  # orphan, orphan + shared layer, orphan's signature
    for reference in ("latest", index, amd64.digest, arm64.digest, signature):
        assert manifest_status(registry, "team/app", reference) == 200, reference
    for reference in (orphan.digest, sha256(body), orphan_signature):
        assert manifest_status(registry, "team/app", reference) == 404, reference
    for image in (amd64, arm64):
        for blob in [image.config, *image.layers]:
            assert blob_status(registry, "team/app", sha256(blob)) == 200
    for blob in [orphan.config, *orphan.layers]:
        assert blob_status(registry, "team/app", sha256(blob)) == 404
        assert not blob_file(storage_root, sha256(blob)).exists()
    referrers = registry.http.get(f"/v2/team/app/referrers/{amd64.digest}").get_json()
    assert [m["digest"] for m in referrers["manifests"]] == [signature]
    assert problems(database_url, storage_root) == []


def test_without_delete_untagged_every_manifest_is_kept(
    registry: RegistryClient, app: Flask, database_url: str, storage_root: Path
) -> None:
    untagged = registry.push_image("team/app")
    age_everything(database_url, storage_root, 2 * HOUR)
    report = run_gc(app, grace=0)
    assert (report.manifests, report.blobs) == (0, 0)
    assert manifest_status(registry, "team/app", untagged.digest) == 200
    assert blob_status(registry, "team/app", sha256(untagged.layers[0])) == 200


def test_deleted_manifest_and_untagged_image_are_collected(
    registry: RegistryClient, app: Flask, database_url: str, storage_root: Path
) -> None:
    deleted = registry.push_image("team/app", "old")
    retagged = registry.push_image("team/app", "v1")
    registry.push_image("team/app", "v1")  # v1 moves on: `retagged` is now untagged
    response = registry.http.delete(f"/v2/team/app/manifests/{deleted.digest}")
    assert response.status_code == 202
    report = run_gc(app, grace=0)
    assert report.blobs == 3 and not blob_file(storage_root, sha256(deleted.config)).exists()
    assert blob_status(registry, "team/app", sha256(retagged.config)) == 200
    report = run_gc(app, grace=0, delete_untagged=True)
    assert report.manifests == 1 and report.blobs == 3
    assert manifest_status(registry, "team/app", retagged.digest) == 404
    assert manifest_status(registry, "team/app", "v1") == 200
    assert problems(database_url, storage_root) == []


def _snapshot(database_url: str, storage_root: Path) -> tuple[object, ...]:
    engine = create_engine(engine_url(database_url))
    with engine.connect() as conn:
        tables = {
            table.name: sorted(map(repr, conn.execute(select(table)).all()))
            for table in Base.metadata.sorted_tables
        }
    engine.dispose()
    files = sorted(
        (str(p.relative_to(storage_root)), p.stat().st_size, p.stat().st_mtime)
        for p in storage_root.rglob("*")
    )
    return tables, files


def test_dry_run_changes_nothing(
    registry: RegistryClient, app: Flask, database_url: str, storage_root: Path
) -> None:
    registry.push_image("team/app", "v1")
    registry.push_image("team/app")  # untagged
    registry.push_blob("team/app", os.urandom(500))  # unreferenced
    registry.start_upload("team/app")  # abandoned
    orphan = os.urandom(10)
    orphan_file = blob_file(storage_root, sha256(orphan))  # bytes whose row a crash lost
    orphan_file.parent.mkdir(parents=True)
    orphan_file.write_bytes(orphan)
    age_everything(database_url, storage_root, timedelta(days=2))
    before = _snapshot(database_url, storage_root)

    dry = run_gc(app, dry_run=True, delete_untagged=True, grace=3600)

    assert _snapshot(database_url, storage_root) == before
    assert (dry.manifests, dry.links, dry.blobs, dry.orphans, dry.uploads) == (1, 4, 4, 1, 1)
    real = run_gc(app, delete_untagged=True, grace=3600)
    assert (real.manifests, real.links, real.blobs, real.orphans, real.uploads) == (
        dry.manifests,
        dry.links,
        dry.blobs,
        dry.orphans,
        dry.uploads,
    )
    assert real.bytes_freed == dry.bytes_freed
    assert _snapshot(database_url, storage_root) != before
    assert problems(database_url, storage_root) == []


def test_orphaned_files_go_after_the_grace_period(
    registry: RegistryClient, app: Flask, storage_root: Path
) -> None:
    registry.push_image("team/app", "v1")
    old, young = os.urandom(10), os.urandom(11)
    for data in (old, young):
        path = blob_file(storage_root, sha256(data))
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
    stamp = blob_file(storage_root, sha256(old)).stat().st_mtime - 7200
    os.utime(blob_file(storage_root, sha256(old)), (stamp, stamp))
    before = stored_digests(storage_root)
    report = run_gc(app, grace=3600)
    assert report.orphans == 1 and report.bytes_freed == 10
    assert stored_digests(storage_root) == before - {sha256(old)}
    assert not (storage_root / paths.blob_dir(Digest.parse(sha256(old)))).exists()


def test_abandoned_uploads_are_purged(
    registry: RegistryClient, app: Flask, database_url: str, storage_root: Path
) -> None:
    location = registry.start_upload("team/app")
    fresh = registry.start_upload("team/app")
    engine = create_engine(engine_url(database_url))
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE upload SET updated_at = :t WHERE id = :id"),
            {"t": "2000-01-01 00:00:00", "id": location.rstrip("/").rsplit("/", 1)[-1]},
        )
    engine.dispose()
    assert run_gc(app, grace=0).uploads == 1
    assert registry.http.get(location).status_code == 404
    assert registry.http.get(fresh).status_code == 204


def _shared_repositories(registry: RegistryClient) -> tuple[bytes, bytes, bytes]:
    shared, own, other = os.urandom(700), os.urandom(800), os.urandom(900)
    config_a, config_b = b'{"a":1}', b'{"b":1}'
    for repo, blobs in (("team/a", (config_a, shared, own)), ("team/b", (config_b, shared, other))):
        for blob in blobs:
            registry.push_blob(repo, blob)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(blobs[0], "application/vnd.oci.image.config.v1+json"),
            "layers": [descriptor(b, "application/vnd.oci.image.layer.v1.tar") for b in blobs[1:]],
        }
        response = registry.put_manifest(repo, "v1", json.dumps(doc).encode())
        assert response.status_code == 201
    registry.start_upload("team/a")
    return shared, own, config_a


def test_repository_delete_frees_its_own_blobs_only(
    registry: RegistryClient, database_url: str, storage_root: Path
) -> None:
    shared, own, config_a = _shared_repositories(registry)

    response = registry.http.delete("/api/v1/repositories/team/a")

    assert response.status_code == 202
    assert response.get_json() == {
        "name": "team/a",
        "tags": 1,
        "manifests": 1,
        "blobs_unlinked": 3,
        "uploads": 1,
        "blobs_freed": 2,
        "bytes_freed": len(own) + len(config_a),
    }
    assert manifest_status(registry, "team/a", "v1") == 404
    assert blob_status(registry, "team/a", sha256(shared)) == 404
    assert not blob_file(storage_root, sha256(own)).exists()
    assert blob_file(storage_root, sha256(shared)).read_bytes() == shared
    response = registry.http.get(f"/v2/team/b/blobs/{sha256(shared)}")
    assert response.status_code == 200 and response.data == shared
    assert manifest_status(registry, "team/b", "v1") == 200
    assert registry.http.get("/v2/_catalog").get_json()["repositories"] == ["team/b"]
    assert not list((storage_root / paths.UPLOADS_ROOT).iterdir())
    assert problems(database_url, storage_root) == []
    # The name can be pushed to again, from scratch.
    registry.push_image("team/a", "v2")
    assert manifest_status(registry, "team/a", "v2") == 200


def test_repository_delete_errors(registry: RegistryClient) -> None:
    response = registry.http.delete("/api/v1/repositories/no/such")
    assert response.status_code == 404
    assert response.get_json()["errors"][0]["code"] == "NAME_UNKNOWN"
    response = registry.http.delete("/api/v1/repositories/Bad//Name")
    assert response.status_code == 400
    assert response.get_json()["errors"][0]["code"] == "NAME_INVALID"


@pytest.mark.parametrize("settings_overrides", [{"delete_enabled": False}])
def test_repository_delete_is_behind_the_delete_switch(registry: RegistryClient) -> None:
    registry.push_image("team/a", "v1")
    response = registry.http.delete("/api/v1/repositories/team/a")
    assert response.status_code == 405
    assert response.get_json()["errors"][0]["code"] == "UNSUPPORTED"
    assert manifest_status(registry, "team/a", "v1") == 200


def test_cli_gc_and_repo_delete(
    registry: RegistryClient, database_url: str, storage_root: Path
) -> None:
    shared, own, _config = _shared_repositories(registry)
    stray = registry.push_blob("team/b", os.urandom(50))
    env = {
        "BERTH_DATABASE_URL": database_url,
        "BERTH_STORAGE_ROOT": str(storage_root),
        "BERTH_CONFIG": None,
    }
    runner = CliRunner()
    result = runner.invoke(main, ["gc", "--dry-run", "--grace", "0s"], env=env)
    assert result.exit_code == 0, result.output
    assert "would delete 0 manifests, 1 blob links, 1 blobs" in result.stdout
    assert "gc: mark:" in result.stderr and "gc: done in" in result.stderr
    assert blob_status(registry, "team/b", stray) == 200

    result = runner.invoke(main, ["gc", "--grace", "soon"], env=env)
    assert result.exit_code != 0 and "--grace" in result.output

    result = runner.invoke(main, ["repo", "delete", "team/a"], env=env)
    assert result.exit_code == 0, result.output
    assert "2 blobs freed" in result.stdout
    assert not blob_file(storage_root, sha256(own)).exists()
    assert blob_file(storage_root, sha256(shared)).exists()
    result = runner.invoke(main, ["repo", "delete", "team/a"], env=env)
    assert result.exit_code == 1 and "NAME_UNKNOWN" in result.output

    result = runner.invoke(main, ["gc", "--grace", "0"], env=env)
    assert result.exit_code == 0, result.output
    assert blob_status(registry, "team/b", stray) == 404
    result = runner.invoke(
        main, ["repo", "delete", "team/b"], env={**env, "BERTH_DELETE_ENABLED": "false"}
    )
    assert result.exit_code == 1 and "UNSUPPORTED" in result.output


def test_small_batches_sweep_the_same_garbage_across_batch_boundaries(
    registry: RegistryClient, app: Flask, database_url: str, storage_root: Path
) -> None:
    # Two rows per batch: every sweep crosses many batch boundaries, and the manifests'
    # order forces a second pass (a referrer is met before its doomed subject).
    kept = [registry.push_image("team/a", "v1")]
    amd64, arm64 = registry.push_image("team/a"), registry.push_image("team/a")
    signature = referrer(registry, "team/a", amd64.manifest)  # of a kept child: kept
    old_children = [registry.push_image("team/a"), registry.push_image("team/a")]
    old_index = registry.push_index("team/a", "multi", old_children)
    registry.push_index("team/a", "multi", [amd64, arm64])  # the tag moves on
    kept += [amd64, arm64]
    untagged = [registry.push_image(repo) for repo in ["team/a", "team/b"] * 2 + ["team/a"]]
    doomed_signature = referrer(registry, "team/b", untagged[1].manifest)
    strays = [registry.push_blob("team/b", os.urandom(100 + i)) for i in range(3)]
    orphans = [os.urandom(20 + i) for i in range(3)]
    for data in orphans:
        blob_file(storage_root, sha256(data)).parent.mkdir(parents=True)
        blob_file(storage_root, sha256(data)).write_bytes(data)
    age_everything(database_url, storage_root, 2 * HOUR)
    doomed = [*old_children, *untagged]

    dry = run_gc(app, dry_run=True, delete_untagged=True, grace=3600, batch_size=2)
    real = run_gc(app, delete_untagged=True, grace=3600, batch_size=2)

    # 2 old children + their index + 5 untagged + 1 signature; 3 blobs an image, the
    # signature's payload and the strays; its "{}" config stays (the kept signature's too)
    # but not its link in team/b.
    expected = (9, 7 * 3 + 2 + 3, 7 * 3 + 1 + 3, 3)
    assert (dry.manifests, dry.links, dry.blobs, dry.orphans) == expected
    assert (real.manifests, real.links, real.blobs, real.orphans) == expected
    assert real.bytes_freed == dry.bytes_freed
    for repo, reference in [("team/a", "v1"), ("team/a", "multi"), ("team/a", signature)]:
        assert manifest_status(registry, repo, reference) == 200, reference
    for image in kept:
        assert manifest_status(registry, "team/a", image.digest) == 200
        for blob in [image.config, *image.layers]:
            assert blob_status(registry, "team/a", sha256(blob)) == 200
    for reference in (old_index, doomed_signature, *(image.digest for image in doomed)):
        for repo in ("team/a", "team/b"):
            assert manifest_status(registry, repo, reference) == 404, reference
    gone = [sha256(b) for image in doomed for b in [image.config, *image.layers]]
    gone += strays + [sha256(data) for data in orphans]
    assert not stored_digests(storage_root) & set(gone)
    assert problems(database_url, storage_root) == []
