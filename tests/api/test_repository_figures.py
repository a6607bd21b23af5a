"""The figures the UI lists per repository (tags, size, last push), kept on the repository row
by every write: after pushes, retags, mounts, deletes, a repository delete and gc they agree
with a count of the rows themselves, on SQLite and PostgreSQL, and concurrent pushes into one
repository lose no update."""

from __future__ import annotations

import json
import os
import re
import threading
from datetime import UTC, datetime

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from app.db.session import engine_url
from app.registry.gc import GcOptions, collect
from tests.api.ui_support import csrf_of
from tests.helpers import OCI_INDEX, OCI_MANIFEST, RegistryClient, descriptor, sha256

# Counted from the rows, independently of how the writes keep them.
COUNTED = text(
    """
    SELECT r.name,
      (SELECT count(*) FROM tag t WHERE t.repository_id = r.id) AS tags,
      (SELECT count(*) FROM manifest m WHERE m.repository_id = r.id) AS manifests,
      (SELECT count(*) FROM repository_blob l WHERE l.repository_id = r.id) AS blobs,
      (SELECT coalesce(sum(b.size), 0) FROM repository_blob l JOIN blob b ON b.id = l.blob_id
        WHERE l.repository_id = r.id)
      + (SELECT coalesce(sum(m.size), 0) FROM manifest m WHERE m.repository_id = r.id) AS size
    FROM repository r
    """
)
KEPT = text(
    "SELECT name, tag_count, manifest_count, blob_count, total_size, last_push FROM repository"
)


def figures(database_url: str) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(kept on the rows, counted from the content) per repository name."""
    engine = create_engine(engine_url(database_url))
    try:
        with engine.connect() as conn:
            counted = {row[0]: tuple(int(v) for v in row[1:]) for row in conn.execute(COUNTED)}
            kept = {row[0]: tuple(int(v) for v in row[1:5]) for row in conn.execute(KEPT)}
    finally:
        engine.dispose()
    return kept, counted


def assert_figures_right(database_url: str) -> dict[str, tuple[int, ...]]:
    kept, counted = figures(database_url)
    assert kept == counted
    return kept


def listed(client: FlaskClient, query: str = "") -> list[tuple[str, str]]:
    """(name, tag count) of each row of the UI's repository list."""
    page = client.get(f"/ui/{query}").get_data(as_text=True)
    rows = re.findall(r'<a class="repo" href="[^"]+">([^<]+)</a>.*?<td[^>]*>(\d+)</td>', page, re.S)
    return [(name, tags) for name, tags in rows]


def test_figures_follow_pushes_retags_and_deletes(
    app: Flask, client: FlaskClient, registry: RegistryClient, database_url: str
) -> None:
    one = registry.push_image("team/app", "v1")
    registry.push_image("team/app", "v2")
    registry.push_image("other", "latest", layers=1)
    kept = assert_figures_right(database_url)
    assert kept["team/app"][:3] == (2, 2, 6)  # tags, manifests, linked blobs
    assert listed(client, "?sort=tags&order=desc") == [("team/app", "2"), ("other", "1")]

    # Retag: v2 moves onto v1's manifest (no new tag), then a new tag on it, then the same
    # manifest pushed again under its own tag (nothing new at all).
    assert registry.put_manifest("team/app", "v2", one.manifest).status_code == 201
    assert registry.put_manifest("team/app", "v3", one.manifest).status_code == 201
    assert registry.put_manifest("team/app", "v1", one.manifest).status_code == 201
    assert assert_figures_right(database_url)["team/app"][:2] == (3, 2)

    # A push by digest with ?tag= tags it twice in one transaction; a blob pushed again
    # links nothing new.
    image = registry.push_image("other", None, layers=1)
    tagged = client.put(
        f"/v2/other/manifests/{image.digest}?tag=a&tag=b",
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert tagged.status_code == 201
    registry.push_blob("other", image.layers[0])
    assert assert_figures_right(database_url)["other"][:3] == (3, 2, 4)

    # A mount links a blob without an upload; deleting a blob unlinks it.
    mounted = client.post(f"/v2/mounted/blobs/uploads/?mount={sha256(one.layers[0])}&from=team/app")
    assert mounted.status_code == 201
    assert client.delete(f"/v2/team/app/blobs/{sha256(one.layers[1])}").status_code == 202
    kept = assert_figures_right(database_url)
    assert kept["mounted"] == (0, 0, 1, len(one.layers[0]))

    # Untag, and a manifest delete that takes its three tags with it.
    assert client.delete("/v2/other/manifests/a").status_code == 202
    assert client.delete(f"/v2/team/app/manifests/{one.digest}").status_code == 202
    kept = assert_figures_right(database_url)
    assert kept["team/app"][:2] == (0, 1) and kept["other"][0] == 2
    assert listed(client, "?sort=tags&order=asc")[0] == ("mounted", "0")

    # A whole repository deleted (the UI's form) leaves no row to count, and a failed push
    # changes nothing.
    form = {"confirm": "team/app", "csrf_token": csrf_of(client, "/ui/repo/team/app/-/delete")}
    assert client.post("/ui/repo/team/app/-/delete", data=form).status_code == 200
    before = assert_figures_right(database_url)
    assert "team/app" not in before
    bad = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(b"nope", "application/vnd.oci.image.config.v1+json"),
            "layers": [],
        }
    ).encode()
    assert registry.put_manifest("other", "broken", bad).status_code == 400
    assert assert_figures_right(database_url) == before


def _platform(arch: str) -> dict[str, str]:
    return {"os": "linux", "architecture": arch}


def test_figures_follow_indexes_and_gc(
    app: Flask, client: FlaskClient, registry: RegistryClient, database_url: str
) -> None:
    amd, arm = registry.push_image("multi", None), registry.push_image("multi", None)
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(
                    image.manifest, OCI_MANIFEST, platform={"os": "linux", "architecture": a}
                )
                for image, a in ((amd, "amd64"), (arm, "arm64"))
            ],
        }
    ).encode()
    assert registry.put_manifest("multi", "v1", index, OCI_INDEX).status_code == 201
    registry.push_image("multi", "old")
    assert client.delete("/v2/multi/manifests/old").status_code == 202  # untagged now
    assert assert_figures_right(database_url)["multi"][:3] == (1, 4, 9)

    report = collect(app.extensions["berth"], GcOptions(delete_untagged=True, grace=0))
    assert report.manifests == 1 and report.links == 3
    kept = assert_figures_right(database_url)
    assert kept["multi"][:3] == (1, 3, 6)
    # Its tag goes: gc then takes the index, its children and every link.
    assert client.delete("/v2/multi/manifests/v1").status_code == 202
    collect(app.extensions["berth"], GcOptions(delete_untagged=True, grace=0))
    kept = assert_figures_right(database_url)
    assert kept["multi"] == (0, 0, 0, 0)
    assert "multi" not in [name for name, _ in listed(client)]  # nothing left to list


def test_last_push_is_the_latest_push_and_sorts_the_list(
    client: FlaskClient, registry: RegistryClient, database_url: str
) -> None:
    started = datetime.now(UTC)
    registry.push_image("first", "v1")
    registry.push_image("second", "v1")
    registry.push_image("first", "v2")
    assert [name for name, _ in listed(client, "?sort=pushed&order=desc")] == ["first", "second"]
    # Deleting the latest tag does not un-push it.
    assert client.delete("/v2/first/manifests/v2").status_code == 202
    assert [name for name, _ in listed(client, "?sort=pushed&order=asc")] == ["second", "first"]
    engine = create_engine(engine_url(database_url))
    with engine.connect() as conn:
        pushed = conn.execute(text("SELECT last_push FROM repository")).scalars().all()
    engine.dispose()
    for value in pushed:
        value = datetime.fromisoformat(value) if isinstance(value, str) else value
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
        assert started <= value <= datetime.now(UTC)


def test_concurrent_pushes_into_one_repository_lose_no_update(
    app: Flask, database_url: str
) -> None:
    """Eight clients push at once into one repository, each its own tags and blobs, some onto
    the same tag: every tag, manifest, link and byte is counted once."""
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def push(worker: int) -> None:
        try:
            registry = RegistryClient(app.test_client())
            start.wait()
            for round_ in range(4):
                image = registry.push_image("busy", f"w{worker}-{round_}", layers=1)
                # Everybody also moves the shared tag, and pushes one shared blob.
                assert registry.put_manifest("busy", "shared", image.manifest).status_code == 201
                registry.push_blob("busy", b"shared blob")
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=push, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    kept = assert_figures_right(database_url)
    assert kept["busy"][:3] == (8 * 4 + 1, 8 * 4, 8 * 4 * 2 + 1)


def test_figures_of_random_layers_add_up_to_the_bytes_pushed(
    registry: RegistryClient, database_url: str
) -> None:
    layers = [os.urandom(n) for n in (10, 2000, 30000)]
    for layer in layers:
        registry.push_blob("sizes", layer)
    kept = assert_figures_right(database_url)
    assert kept["sizes"] == (0, 0, 3, sum(map(len, layers)))
