"""Deterministic races on PostgreSQL: a trigger makes a push's transaction sleep after it
checked what it depends on, and gc runs exactly then. gc must wait for the push and see it,
not delete what the push is about to commit a reference to."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text

from app.db.session import engine_url
from app.registry.gc import GcOptions, GcReport, collect
from tests.gc.support import age_everything, problems
from tests.helpers import OCI_MANIFEST, RegistryClient, descriptor, sha256

pytestmark = pytest.mark.postgres
PAUSE = 2.0  # seconds a push sleeps inside its transaction


@pytest.fixture
def slow_inserts(database_url: str) -> Iterator[Callable[[str], None]]:
    """slow(table): from now on, every INSERT into table sleeps PAUSE seconds before its
    transaction can commit."""
    engine = create_engine(engine_url(database_url))
    tables: list[str] = []

    def slow(table: str) -> None:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION berth_test_pause() RETURNS trigger AS $$"
                    f" BEGIN PERFORM pg_sleep({PAUSE}); RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    f"CREATE TRIGGER berth_test_pause AFTER INSERT ON {table}"
                    " FOR EACH ROW EXECUTE FUNCTION berth_test_pause()"
                )
            )
        tables.append(table)

    yield slow
    with engine.begin() as conn:  # the database is shared with later tests
        for table in tables:
            conn.execute(text(f"DROP TRIGGER IF EXISTS berth_test_pause ON {table}"))
        conn.execute(text("DROP FUNCTION IF EXISTS berth_test_pause()"))
    engine.dispose()


def _during(push: Callable[[], int], app: Flask, **options: object) -> tuple[int, GcReport, float]:
    """Start push in a thread, run gc while it sleeps in its transaction."""
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(push()))
    thread.start()
    time.sleep(PAUSE / 4)
    started = time.monotonic()
    report = collect(app.extensions["berth"], GcOptions(**options))  # type: ignore[arg-type]
    waited = time.monotonic() - started
    thread.join(timeout=30)
    assert outcome, "the push did not finish"
    return outcome[0], report, waited


def _manifest(config: bytes, layers: list[bytes]) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [descriptor(b, "application/vnd.oci.image.layer.v1.tar") for b in layers],
    }
    return json.dumps(doc).encode()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_manifest_put_racing_the_link_sweep_keeps_its_blobs(
    registry: RegistryClient,
    app: Flask,
    database_url: str,
    storage_root: Path,
    slow_inserts: Callable[[str], None],
) -> None:
    config, layer = b'{"os":"linux"}', os.urandom(1000)
    registry.push_blob("team/app", config)
    registry.push_blob("team/app", layer)  # pushed long ago, named by nothing yet
    age_everything(database_url, storage_root, timedelta(hours=2))
    slow_inserts("manifest")
    body = _manifest(config, [layer])
    client = app.test_client()

    status, report, waited = _during(
        lambda: (
            client.put(
                "/v2/team/app/manifests/v1", data=body, headers={"Content-Type": OCI_MANIFEST}
            ).status_code
        ),
        app,
        grace=3600,
    )

    assert status == 201
    assert problems(database_url, storage_root) == []
    assert (report.links, report.blobs) == (0, 0)
    assert waited > PAUSE / 2, "gc did not wait for the push in flight"
    assert registry.http.get(f"/v2/team/app/blobs/{sha256(layer)}").data == layer


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_index_put_racing_delete_untagged_keeps_its_children(
    registry: RegistryClient,
    app: Flask,
    database_url: str,
    storage_root: Path,
    slow_inserts: Callable[[str], None],
) -> None:
    child = registry.push_image("team/app")  # by digest, untagged: garbage until the index
    age_everything(database_url, storage_root, timedelta(hours=2))
    slow_inserts("manifest")
    client = app.test_client()

    status, report, waited = _during(
        lambda: (
            RegistryClient(client)
            .put_manifest(
                "team/app",
                "latest",
                json.dumps(
                    {
                        "schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [descriptor(child.manifest, OCI_MANIFEST)],
                    }
                ).encode(),
                "application/vnd.oci.image.index.v1+json",
            )
            .status_code
        ),
        app,
        grace=3600,
        delete_untagged=True,
    )

    assert status == 201
    assert registry.http.get(f"/v2/team/app/manifests/{child.digest}").status_code == 200
    assert problems(database_url, storage_root) == []
    assert report.manifests == 0 and report.blobs == 0
    assert waited > PAUSE / 2, "gc did not wait for the push in flight"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_upload_racing_the_blob_sweep_keeps_the_bytes(
    registry: RegistryClient,
    app: Flask,
    database_url: str,
    storage_root: Path,
    slow_inserts: Callable[[str], None],
) -> None:
    data = os.urandom(4000)
    digest = registry.push_blob("team/app", data)
    assert registry.http.delete(f"/v2/team/app/blobs/{digest}").status_code == 202
    age_everything(database_url, storage_root, timedelta(hours=2))  # unlinked, old: garbage
    slow_inserts("repository_blob")
    client = app.test_client()

    status, report, waited = _during(
        lambda: client.post(f"/v2/team/app/blobs/uploads/?digest={digest}", data=data).status_code,
        app,
        grace=3600,
    )

    assert status == 201
    assert registry.http.get(f"/v2/team/app/blobs/{digest}").data == data
    assert problems(database_url, storage_root) == []
    assert report.blobs == 0
    assert waited > PAUSE / 2, "gc did not wait for the push in flight"
