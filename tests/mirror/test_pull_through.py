"""The pull-through cache through Flask's test client, against a real Berth upstream serving
HTTP on a free port (tests/upstream.py): pulls by tag and digest, indexes, routing by prefix,
`?ns=` and the default upstream, refused pushes, an upstream that is down, wrong or slow.

Every test runs on SQLite and on PostgreSQL (the `database_url` fixture). Outside `make
check`'s paths: each starts an upstream server, and together they take ~10 s per database.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete

from app import create_app
from app.auth import users
from app.db.models import MirrorTag
from app.mirror.pull import CorruptUpstream
from app.registry import paths, queries
from app.storage import StorageDriver
from tests.helpers import OCI_INDEX, OCI_MANIFEST, RegistryClient, error_codes, sha256
from tests.mirror.conftest import database_copy
from tests.upstream import Upstream

PREFIX = "up.test"


@pytest.fixture
def mirror_entry(request: pytest.FixtureRequest, upstream: Upstream) -> dict[str, object]:
    """The upstream's `mirror_upstreams` entry; a test parametrizes it indirectly."""
    entry = {"prefix": PREFIX, "url": upstream.url, "ttl": "1h", "read_timeout": "5s"}
    return {**entry, **getattr(request, "param", {})}


@pytest.fixture
def settings_overrides(mirror_entry: dict[str, object]) -> dict[str, object]:
    return {"mirror_upstreams": [mirror_entry]}


def pull_all(client: FlaskClient, name: str, reference: str) -> dict[str, bytes]:
    """Manifest and every blob it names, as a client pulls them: {digest: bytes}."""
    got = client.get(f"/v2/{name}/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
    assert got.status_code == 200, got.get_data(as_text=True)
    found = {got.headers["Docker-Content-Digest"]: got.data}
    doc = json.loads(got.data)
    for desc in [doc["config"], *doc["layers"]]:
        blob = client.get(f"/v2/{name}/blobs/{desc['digest']}")
        assert blob.status_code == 200, blob.get_data(as_text=True)
        found[desc["digest"]] = blob.data
    return found


def test_pull_by_tag_is_byte_for_byte_and_cached(client: FlaskClient, upstream: Upstream) -> None:
    image = upstream.registry.push_image("team/app", "v1")
    pulled = pull_all(client, f"{PREFIX}/team/app", "v1")
    assert pulled == {
        image.digest: image.manifest,
        sha256(image.config): image.config,
        **{sha256(layer): layer for layer in image.layers},
    }
    gets = upstream.count("GET", "blob")
    assert gets == 3
    # The second pull is the cache's: no blob GET and no manifest GET reach the upstream.
    manifest_gets = upstream.count("GET", "manifest")
    assert pull_all(client, f"{PREFIX}/team/app", "v1") == pulled
    assert upstream.count("GET", "blob") == gets
    assert upstream.count("GET", "manifest") == manifest_gets
    # Cached content is ordinary content: listed, tagged.
    assert client.get(f"/v2/{PREFIX}/team/app/tags/list").get_json()["tags"] == ["v1"]
    assert f"{PREFIX}/team/app" in client.get("/v2/_catalog").get_json()["repositories"]


def test_pull_index_and_children_by_digest(client: FlaskClient, upstream: Upstream) -> None:
    children = [upstream.registry.push_image("multi") for _ in range(2)]
    index = upstream.registry.push_index("multi", "latest", children)
    got = client.get(f"/v2/{PREFIX}/multi/manifests/latest", headers={"Accept": OCI_INDEX})
    assert got.status_code == 200
    assert got.headers["Docker-Content-Digest"] == index
    assert got.headers["Content-Type"] == OCI_INDEX
    for child in children:
        assert pull_all(client, f"{PREFIX}/multi", child.digest)[child.digest] == child.manifest
    head = client.head(f"/v2/{PREFIX}/multi/manifests/{index}")
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(got.data))


def test_pushes_into_a_mirrored_prefix_are_denied(client: FlaskClient) -> None:
    registry = RegistryClient(client)
    name = f"{PREFIX}/team/app"
    started = client.post(f"/v2/{name}/blobs/uploads/")
    assert started.status_code == 403 and error_codes(started) == ["DENIED"]
    message = started.get_json()["errors"][0]["message"]
    assert "mirror" in message and PREFIX in message
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST}).encode()
    assert registry.put_manifest(name, "v1", body).status_code == 403
    # Everything outside the prefix is Berth's own, as before.
    registry.push_image("team/app", "v1")
    assert client.get("/v2/team/app/manifests/v1").status_code == 200


@pytest.mark.parametrize("mirror_entry", [{"default": True}], indirect=True)
def test_unprefixed_names_go_to_the_default_upstream(
    client: FlaskClient, upstream: Upstream
) -> None:
    # Docker's registry-mirrors send `library/alpine`, no prefix.
    image = upstream.registry.push_image("library/alpine", "3")
    pulled = pull_all(client, "library/alpine", "3")
    assert pulled[image.digest] == image.manifest
    # Cached under the prefix, so prefixed and unprefixed pulls share it.
    assert client.get(f"/v2/{PREFIX}/library/alpine/manifests/3").data == image.manifest
    # Berth's own repository of a name wins over the default upstream.
    upstream.registry.push_image("team/own", "v1")
    mine = RegistryClient(client).push_image("team/own", "v1")
    assert client.get("/v2/team/own/manifests/v1").data == mine.manifest


def test_containerd_ns_picks_the_upstream(client: FlaskClient, upstream: Upstream) -> None:
    image = upstream.registry.push_image("library/redis", "7")
    got = client.get(f"/v2/library/redis/manifests/7?ns={PREFIX}")
    assert got.status_code == 200 and got.data == image.manifest
    layer = client.get(f"/v2/library/redis/blobs/{sha256(image.layers[0])}?ns={PREFIX}")
    assert layer.status_code == 200 and layer.data == image.layers[0]
    # Without ns (and no default upstream) the name is Berth's own: not there.
    assert client.get("/v2/library/redis/manifests/7").status_code == 404


def test_upstream_not_found_maps_to_oci_errors(client: FlaskClient, upstream: Upstream) -> None:
    upstream.registry.push_image("team/app", "v1")
    missing_tag = client.get(f"/v2/{PREFIX}/team/app/manifests/nope")
    assert missing_tag.status_code == 404 and error_codes(missing_tag) == ["MANIFEST_UNKNOWN"]
    assert PREFIX in missing_tag.get_json()["errors"][0]["message"]
    missing_blob = client.get(f"/v2/{PREFIX}/team/app/blobs/{sha256(b'nothing')}")
    assert missing_blob.status_code == 404 and error_codes(missing_blob) == ["BLOB_UNKNOWN"]


def test_upstream_down_serves_the_cache_and_names_the_upstream(
    client: FlaskClient, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="app.mirror")
    image = upstream.registry.push_image("team/app", "v1")
    other = upstream.registry.push_image("team/other", "v1")
    pulled = pull_all(client, f"{PREFIX}/team/app", "v1")
    upstream.stop()
    # Make the cached tag due for its check, as if its ttl had passed.
    with client.application.extensions["berth"].db.transaction(write=True) as session:
        session.execute(delete(MirrorTag))
    got = client.get(f"/v2/{PREFIX}/team/app/manifests/v1")
    assert got.status_code == 200 and got.data == image.manifest
    assert "stale" in got.headers["Warning"] and PREFIX in got.headers["Warning"]
    assert any("stale" in r.getMessage() for r in caplog.records)
    assert pull_all(client, f"{PREFIX}/team/app", image.digest) == pulled
    # Never cached: a clear error naming the upstream, not a 500.
    missing = client.get(f"/v2/{PREFIX}/team/other/manifests/v1")
    assert missing.status_code == 503 and error_codes(missing) == ["UNAVAILABLE"]
    assert PREFIX in missing.get_json()["errors"][0]["message"]
    blob = client.get(f"/v2/{PREFIX}/team/other/blobs/{sha256(other.config)}")
    assert blob.status_code == 503
    assert client.get("/readyz").status_code == 200
    upstream.start()  # back on the same port: it pulls
    assert client.get(f"/v2/{PREFIX}/team/other/manifests/v1").data == other.manifest


@pytest.mark.parametrize("mirror_entry", [{"ttl": "0s"}], indirect=True)
def test_a_moved_tag_is_seen_once_the_ttl_has_passed(
    client: FlaskClient, upstream: Upstream
) -> None:
    first = upstream.registry.push_image("team/app", "v1")
    assert client.get(f"/v2/{PREFIX}/team/app/manifests/v1").data == first.manifest
    second = upstream.registry.push_image("team/app", "v1")
    assert client.get(f"/v2/{PREFIX}/team/app/manifests/v1").data == second.manifest


def test_a_moved_tag_is_not_seen_before_the_ttl(client: FlaskClient, upstream: Upstream) -> None:
    first = upstream.registry.push_image("team/app", "v1")
    assert client.get(f"/v2/{PREFIX}/team/app/manifests/v1").data == first.manifest
    upstream.registry.push_image("team/app", "v1")
    before = upstream.count("HEAD", "manifest") + upstream.count("GET", "manifest")
    assert client.get(f"/v2/{PREFIX}/team/app/manifests/v1").data == first.manifest
    assert upstream.count("HEAD", "manifest") + upstream.count("GET", "manifest") == before


def test_a_corrupting_upstream_stores_nothing(app: Flask, upstream: Upstream) -> None:
    image = upstream.registry.push_image("team/app", "v1")
    digest = sha256(image.layers[0])
    client = app.test_client()
    upstream.corrupt = True
    with pytest.raises(CorruptUpstream):
        client.get(f"/v2/{PREFIX}/team/app/blobs/{digest}")
    reg = app.extensions["berth"]
    assert queries.linked_blob_size(reg.db, f"{PREFIX}/team/app", digest) is None
    with reg.db.transaction() as session:
        assert queries.known_digests(session, [digest]) == set()
    assert not [p for p in _stored(reg.driver) if digest.split(":")[1] in p]
    upstream.corrupt = False  # a good upstream again: the next pull succeeds
    got = client.get(f"/v2/{PREFIX}/team/app/blobs/{digest}")
    assert got.status_code == 200 and got.data == image.layers[0]


def _stored(driver: StorageDriver) -> list[str]:
    return [d for d, _ in paths.stored_blobs(driver.list)]


def test_concurrent_pulls_of_one_uncached_blob_fetch_it_once(
    app: Flask, upstream: Upstream
) -> None:
    big = os.urandom(2 * 1024 * 1024)
    digest = upstream.registry.push_blob("team/big", big)
    upstream.delay = 0.01  # ~0.3 s for the whole blob: the pulls overlap
    results: list[bytes] = []

    def pull() -> None:
        got = app.test_client().get(f"/v2/{PREFIX}/team/big/blobs/{digest}")
        results.append(got.data if got.status_code == 200 else got.get_data())

    threads = [threading.Thread(target=pull) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [big] * 6
    assert upstream.count("GET", "blob") == 1


@pytest.fixture
def token_upstream(tmp_path: Path, sqlite_template: Path) -> Iterator[Upstream]:
    server = Upstream(
        database_copy(sqlite_template, tmp_path / "token-upstream.db"),
        {
            "auth": "token",
            "auth_rules": [{"repository": "*", "users": ["puller"], "actions": ["pull"]}],
            "auth_admins": {"users": ["root"]},
        },
    )
    users.add(server.app.extensions["berth"].db, "puller", "secret", cost=4)
    users.add(server.app.extensions["berth"].db, "root", "rootpw", cost=4)
    yield server.start()
    server.close()


@pytest.mark.parametrize(
    "creds,status", [(("puller", "secret"), 200), (("puller", "wrong"), 403), (None, 403)]
)
def test_bearer_token_upstream(
    database_url: str, token_upstream: Upstream, creds: tuple[str, str] | None, status: int
) -> None:
    admin = token_upstream.app.test_client()
    auth = "Basic " + base64.b64encode(b"root:rootpw").decode()
    token = admin.get(
        "/auth/token?service=berth&scope=repository:team/app:pull,push",
        headers={"Authorization": auth},
    ).get_json()["token"]
    admin.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    image = RegistryClient(admin).push_image("team/app", "v1")
    entry: dict[str, object] = {"prefix": PREFIX, "url": token_upstream.url}
    if creds:
        entry.update(username=creds[0], password=creds[1])
    mirror = create_app(
        {"database_url": database_url, "storage_driver": "inmemory", "mirror_upstreams": [entry]}
    )
    try:
        client = mirror.test_client()
        got = client.get(f"/v2/{PREFIX}/team/app/manifests/v1")
        assert got.status_code == status, got.get_data(as_text=True)
        if status == 200:
            assert got.data == image.manifest
            assert pull_all(client, f"{PREFIX}/team/app", "v1")[image.digest] == image.manifest
        else:
            assert (
                error_codes(got) == ["DENIED"] and PREFIX in got.get_json()["errors"][0]["message"]
            )
    finally:
        mirror.extensions["berth"].db.dispose()


def test_status_and_metrics_report_the_cache(
    client: FlaskClient, upstream: Upstream, database_url: str, mirror_entry: dict[str, object]
) -> None:
    from click.testing import CliRunner

    from app.cli import main

    image = upstream.registry.push_image("team/app", "v1")
    pull_all(client, f"{PREFIX}/team/app", "v1")
    pull_all(client, f"{PREFIX}/team/app", "v1")
    env = {
        "BERTH_DATABASE_URL": database_url,
        "BERTH_STORAGE_DRIVER": "inmemory",
        "BERTH_MIRROR_UPSTREAMS": json.dumps([mirror_entry]),
        "BERTH_CONFIG": "",
    }
    result = CliRunner().invoke(main, ["mirror", "status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    (status,) = json.loads(result.output)
    assert status["prefix"] == PREFIX and status["health"] == "up"
    total = len(image.config) + sum(len(layer) for layer in image.layers)
    assert status["cached"] == {"repositories": 1, "blobs": 3, "bytes": total}
    upstream.stop()
    result = CliRunner().invoke(main, ["mirror", "status"], env=env)
    assert result.exit_code == 0 and "down" in result.output
    metrics = client.get("/metrics").get_data(as_text=True)
    for name in ("hits", "misses"):
        assert f'berth_mirror_cache_{name}_total{{kind="blob",upstream="{PREFIX}"}}' in metrics
    assert f'berth_mirror_upstream_bytes_total{{upstream="{PREFIX}"}}' in metrics
