"""Retention of cached repositories: `berth gc` removes those nobody pulled for longer than
their upstream's `retention` (or a `retention_rules` entry) says, keeps those pulled since,
and never touches Berth's own repositories. Pulls are recorded cheaply: a pull answered from
the cache writes nothing while the last record is younger than the recording interval.

On SQLite and on PostgreSQL (the `database_url` fixture), against a real Berth upstream on a
free port (tests/upstream.py), with `berth gc` run as the operator runs it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from app import create_app
from app.cli import main
from app.db.models import NotificationEvent
from app.mirror import queries
from app.registry import paths
from app.registry.references import Digest
from tests.helpers import CONFIG, LAYER, OCI_MANIFEST, Image, RegistryClient, descriptor, sha256
from tests.mirror.test_pull_through import PREFIX, pull_all
from tests.upstream import Upstream

RETENTION = 5.0  # seconds; pulls are recorded every tenth of it
ENDPOINT = {"name": "hook", "url": "http://127.0.0.1:9/events", "timeout": "1s"}


@pytest.fixture
def settings(database_url: str, upstream: Upstream, tmp_path: Path) -> dict[str, object]:
    entry = {
        "prefix": PREFIX,
        "url": upstream.url,
        "ttl": "1h",
        "retention": f"{RETENTION:g}s",
        "retention_rules": [{"repository": f"{PREFIX}/keep/*", "retention": "off"}],
    }
    return {
        "database_url": database_url,
        "storage_root": str(tmp_path / "storage"),
        "mirror_upstreams": [entry],
        "notifications": [ENDPOINT],
    }


@pytest.fixture
def mirror(settings: dict[str, object]) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    app.extensions["berth"].db.dispose()


def berth_gc(settings: dict[str, object], *args: str) -> Result:
    """`berth gc`, configured through the environment as an operator would."""
    env = {
        f"BERTH_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
        for k, v in settings.items()
    }
    result = CliRunner().invoke(
        main, ["gc", "--grace", "0s", *args], env={**env, "BERTH_CONFIG": ""}
    )
    assert result.exit_code == 0, result.output
    return result


def last_pull(app: Flask, name: str) -> datetime | None:
    return queries.last_pull(app.extensions["berth"].db, name)


def stored(app: Flask, image: Image) -> list[bool]:
    driver = app.extensions["berth"].driver
    return [
        driver.exists(paths.blob_data(Digest.parse(sha256(blob))))
        for blob in [image.config, *image.layers]
    ]


def test_gc_removes_what_was_not_pulled_within_its_retention(
    mirror: Flask, upstream: Upstream, settings: dict[str, object]
) -> None:
    client = mirror.test_client()
    old = upstream.registry.push_image("team/old", "v1")
    fresh = upstream.registry.push_image("team/fresh", "v1")
    kept = upstream.registry.push_image("keep/base", "v1")
    for name in ("team/old", "team/fresh", "keep/base"):
        pull_all(client, f"{PREFIX}/{name}", "v1")
    own = RegistryClient(client).push_image("team/own", "v1")  # Berth's own, never pulled

    time.sleep(RETENTION * 0.6)
    pull_all(client, f"{PREFIX}/team/fresh", "v1")  # from the cache: recorded all the same
    time.sleep(RETENTION * 0.6)
    assert berth_gc(settings, "--dry-run").stdout.startswith(
        f"would remove {PREFIX}/team/old: not pulled within its retention\nwould delete 0 manifests"
    )
    assert stored(mirror, old) == [True, True, True]
    preview = client.get("/ui/gc?run=1").get_data(as_text=True)  # the UI's dry run agrees
    assert '<td class="num" id="gc-expired">1</td>' in preview

    done = berth_gc(settings)
    assert f"removed {PREFIX}/team/old: not pulled within its retention" in done.stdout
    assert "1 cached repositories past their retention" in done.stdout
    catalog = client.get("/v2/_catalog").get_json()["repositories"]
    assert f"{PREFIX}/team/old" not in catalog
    assert {f"{PREFIX}/team/fresh", f"{PREFIX}/keep/base", "team/own"} <= set(catalog)
    # Its blobs were nobody else's: their bytes went in the same run.
    assert stored(mirror, old) == [False, False, False]
    assert stored(mirror, fresh) == stored(mirror, kept) == stored(mirror, own) == [True] * 3
    assert client.get("/v2/team/own/manifests/v1").data == own.manifest
    # A webhook event says so, as for `berth repo delete`.
    with mirror.extensions["berth"].db.transaction() as session:
        payloads = [json.loads(p) for p in session.scalars(select(NotificationEvent.payload))]
    deleted = [p for p in payloads if p["action"] == "delete"]
    assert [p["target"]["repository"] for p in deleted] == [f"{PREFIX}/team/old"]

    # Pulled again, it comes back from the upstream, byte for byte.
    gets = upstream.count("GET", "blob")
    assert pull_all(client, f"{PREFIX}/team/old", "v1")[old.digest] == old.manifest
    assert upstream.count("GET", "blob") == gets + 3


@pytest.mark.parametrize("untagged", [False, True], ids=["plain", "delete-untagged"])
def test_a_dry_run_counts_what_removing_expired_repositories_frees(
    mirror: Flask, upstream: Upstream, settings: dict[str, object], untagged: bool
) -> None:
    """The dry run says what the real run then does, blobs and bytes included: the blobs
    only an expired repository names are freed, those another repository names stay."""
    client = mirror.test_client()
    old = upstream.registry.push_image("team/old", "v1")
    pull_all(client, f"{PREFIX}/team/old", "v1")
    own = RegistryClient(client)
    shared, config = old.layers[0], json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    for blob in (shared, config):
        own.push_blob("team/own", blob)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(config, CONFIG),
            "layers": [descriptor(shared, LAYER)],
        }
    ).encode()
    assert own.put_manifest("team/own", "v1", body).status_code == 201
    loose = own.push_image("team/own")  # by digest: untagged, its 3 blobs its own
    time.sleep(RETENTION * 1.2)

    args = ["--delete-untagged"] if untagged else []
    dry = berth_gc(settings, *args, "--dry-run").stdout.splitlines()
    assert stored(mirror, old) == [True, True, True]
    done = berth_gc(settings, *args).stdout.splitlines()
    assert done == [
        line.replace("would remove", "removed").replace("would delete", "deleted") for line in dry
    ]
    # old's config and second layer; with --delete-untagged, the loose image and its blobs.
    blobs = 2 + (3 if untagged else 0)
    assert f", {blobs} blobs and 0 orphaned" in done[-1], done
    assert f"deleted {1 if untagged else 0} manifests" in done[-1], done
    assert stored(mirror, old) == [False, True, False]
    assert stored(mirror, loose) == [not untagged] * 3
    assert client.get("/v2/team/own/manifests/v1").data == body


def test_own_repositories_under_no_retention_are_never_removed(
    mirror: Flask, upstream: Upstream, settings: dict[str, object]
) -> None:
    """A repository the cache did not write has no pull record: retention leaves it alone,
    however old; and an upstream without retention keeps everything."""
    client = mirror.test_client()
    own = RegistryClient(client).push_image("team/own", "v1")
    upstream.registry.push_image("keep/base", "v1")
    pull_all(client, f"{PREFIX}/keep/base", "v1")
    time.sleep(RETENTION * 1.2)
    assert "0 cached repositories past their retention" in berth_gc(settings).stdout
    catalog = client.get("/v2/_catalog").get_json()["repositories"]
    assert catalog == sorted([f"{PREFIX}/keep/base", "team/own"])
    assert stored(mirror, own) == [True] * 3
    assert last_pull(mirror, "team/own") is None


def test_pulls_from_the_cache_are_recorded_once_per_interval(
    mirror: Flask, upstream: Upstream
) -> None:
    client: FlaskClient = mirror.test_client()
    image = upstream.registry.push_image("team/app", "v1")
    name = f"{PREFIX}/team/app"
    pull_all(client, name, "v1")
    first = last_pull(mirror, name)
    assert first is not None
    for _ in range(5):  # hits within the interval (a tenth of the retention): no write
        assert client.get(f"/v2/{name}/manifests/{image.digest}").status_code == 200
    assert last_pull(mirror, name) == first
    time.sleep(RETENTION / 10 + 0.1)
    assert client.head(f"/v2/{name}/manifests/v1").status_code == 200
    later = last_pull(mirror, name)
    assert later is not None and later > first
    # Another worker (its own memory of what it recorded) reads the record, writes nothing.
    other = create_app({**_settings_of(mirror)})
    try:
        assert other.test_client().get(f"/v2/{name}/manifests/v1").status_code == 200
        assert last_pull(mirror, name) == later
    finally:
        other.extensions["berth"].db.dispose()


def _settings_of(app: Flask) -> dict[str, object]:
    settings = app.extensions["berth"].settings
    return {
        "database_url": settings.database_url,
        "storage_root": settings.storage_root,
        "mirror_upstreams": list(settings.mirror_upstreams),
    }


def test_status_shows_each_cached_repository_last_pull_and_expiry(
    mirror: Flask, upstream: Upstream, settings: dict[str, object]
) -> None:
    client = mirror.test_client()
    for name in ("team/app", "keep/base"):
        upstream.registry.push_image(name, "v1")
        pull_all(client, f"{PREFIX}/{name}", "v1")
    env = {f"BERTH_{k.upper()}": json.dumps(v) for k, v in settings.items() if k != "storage_root"}
    env.update(BERTH_DATABASE_URL=str(settings["database_url"]), BERTH_CONFIG="")
    result = CliRunner().invoke(main, ["mirror", "status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    (status,) = json.loads(result.output)
    assert status["retention"] == RETENTION
    listed = {r["name"]: r for r in status["repositories"]}
    assert sorted(listed) == [f"{PREFIX}/keep/base", f"{PREFIX}/team/app"]
    app = listed[f"{PREFIX}/team/app"]
    pulled = datetime.fromisoformat(app["last_pull"])
    assert pulled == last_pull(mirror, f"{PREFIX}/team/app")
    assert (datetime.fromisoformat(app["expires"]) - pulled).total_seconds() == RETENTION
    assert listed[f"{PREFIX}/keep/base"]["expires"] is None  # retention_rules: "off"
    table = CliRunner().invoke(main, ["mirror", "status", "--repositories"], env=env)
    assert table.exit_code == 0, table.output
    assert f"\t{RETENTION:g}s\t" in table.output.splitlines()[1]
    assert f"{PREFIX}/keep/base\t" in table.output and "\tnever" in table.output
