"""How long the web UI takes to render its pages at 10,000 repositories and 10,000 tags.

    .venv/bin/python bench/ui_bench.py                       # SQLite and PostgreSQL, full size
    .venv/bin/python bench/ui_bench.py --quick               # tiny sizes: checks the script works
    .venv/bin/python bench/ui_bench.py --database sqlite --repositories 50000

The data set is written straight into the database (bulk inserts) and a filesystem store:
`--repositories` repositories of one tagged image each, plus `big/app` with `--tags` tags
over 100 images whose configs are on disk (the tag page reads one per row). Each page is
rendered through Flask's test client, so the figure is server time: routing, the queries,
the template, no network. The median and the worst of `--runs` renders are printed.
PostgreSQL: a scratch database on BERTH_TEST_POSTGRES (default postgres@127.0.0.1),
dropped at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, insert, text

from app import create_app
from app.db.models import Base
from app.db.session import engine_url
from app.migrate import upgrade
from app.registry import paths
from app.registry.references import Digest
from app.storage import create_driver
from bench.scratch import postgres_database

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
TABLES = {t.name: t for t in Base.metadata.sorted_tables}
BATCH = 2000


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _image(seed: str) -> tuple[bytes, bytes, str]:
    """(manifest, config, layer digest) of a small image."""
    config = json.dumps(
        {
            "created": "2025-01-02T03:04:05Z",
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Labels": {"seed": seed}},
            "history": [{"created_by": f"/bin/sh -c echo {seed}"}],
        }
    ).encode()
    layer = _digest(f"layer {seed}".encode())
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": LAYER, "digest": layer, "size": 1234567}],
        }
    ).encode()
    return manifest, config, layer


def build(url: str, storage: Path, repositories: int, tags: int) -> None:
    driver = create_driver("filesystem", {"root": str(storage)})
    engine = create_engine(engine_url(url))
    now = datetime.now(UTC)
    repos, manifests, blobs, links, tag_rows = [], [], [], [], []
    blob_ids: dict[str, int] = {}

    def blob(digest: str, size: int) -> int:
        if digest not in blob_ids:
            blob_ids[digest] = len(blob_ids) + 1
            blobs.append(
                {"id": blob_ids[digest], "digest": digest, "size": size, "created_at": now}
            )
        return blob_ids[digest]

    def image(repo_id: int, seed: str, store_config: bool) -> int:
        manifest, config, layer = _image(seed)
        if store_config:
            driver.put_content(paths.blob_data(Digest.parse(_digest(config))), config)
        manifest_id = len(manifests) + 1
        manifests.append(
            {
                "id": manifest_id,
                "repository_id": repo_id,
                "digest": _digest(manifest),
                "media_type": OCI_MANIFEST,
                "artifact_type": OCI_CONFIG,
                "payload": manifest,
                "size": len(manifest),
                "created_at": now,
            }
        )
        for digest, size in ((_digest(config), len(config)), (layer, 1234567)):
            links.append(
                {"repository_id": repo_id, "blob_id": blob(digest, size), "created_at": now}
            )
        return manifest_id

    for number in range(repositories):
        repo_id = number + 1
        repos.append({"id": repo_id, "name": f"team{number % 97}/service-{number:05d}"})
        manifest_id = image(repo_id, f"r{number}", store_config=False)
        tag_rows.append(
            {
                "repository_id": repo_id,
                "name": "latest",
                "manifest_id": manifest_id,
                "updated_at": now - timedelta(seconds=number),
            }
        )
    big = repositories + 1
    repos.append({"id": big, "name": "big/app"})
    images = [image(big, f"big{i}", store_config=True) for i in range(100)]
    for number in range(tags):
        tag_rows.append(
            {
                "repository_id": big,
                "name": f"v{number // 100}.{number % 100}.{number % 7}",
                "manifest_id": images[number % 100],
                "updated_at": now - timedelta(seconds=number),
            }
        )
    unique_links = list({(r["repository_id"], r["blob_id"]): r for r in links}.values())
    # The figures every write keeps on the repository row (app/registry/queries.py), as the
    # writes would have left them.
    figures = {r["id"]: r for r in repos}
    for r in repos:
        r.update(tag_count=0, manifest_count=0, blob_count=0, total_size=0, last_push=None)
    sizes = {b["id"]: b["size"] for b in blobs}
    for row in manifests:
        figure = figures[row["repository_id"]]
        figure["manifest_count"] += 1
        figure["total_size"] += row["size"]
        figure["last_push"] = max(filter(None, (figure["last_push"], row["created_at"])))
    for row in unique_links:
        figure = figures[row["repository_id"]]
        figure["blob_count"] += 1
        figure["total_size"] += sizes[row["blob_id"]]
    for row in tag_rows:
        figure = figures[row["repository_id"]]
        figure["tag_count"] += 1
        figure["last_push"] = max(filter(None, (figure["last_push"], row["updated_at"])))
    with engine.begin() as conn:
        for table, rows in (
            ("repository", repos),
            ("blob", blobs),
            ("manifest", manifests),
            ("repository_blob", unique_links),
            ("tag", tag_rows),
        ):
            for start in range(0, len(rows), BATCH):
                conn.execute(insert(TABLES[table]), rows[start : start + BATCH])
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
    engine.dispose()


PAGES = [
    ("repositories, by name", "/ui/"),
    ("repositories, by size", "/ui/?sort=size&order=desc"),
    ("repositories, by last push", "/ui/?sort=pushed&order=desc"),
    ("repositories, search", "/ui/?q=service-042"),
    ("repositories, page 100", "/ui/?page=100"),
    ("tags, number-aware", "/ui/repo/big/app"),
    ("tags, by push time", "/ui/repo/big/app?sort=pushed&order=desc"),
    ("tags, last page", "/ui/repo/big/app?page=200"),
    ("manifest", "/ui/repo/big/app/-/manifest/v0.1.1"),
]


def measure(url: str, storage: Path, runs: int) -> list[tuple[str, float, float]]:
    app = create_app(
        {"database_url": url, "storage_root": str(storage), "notifications_in_server": False}
    )
    client = app.test_client()
    figures = []
    for label, path in PAGES:
        assert client.get(path).status_code == 200, path  # warm: connections, templates
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            response = client.get(path)
            times.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, path
        figures.append((label, statistics.median(times), max(times)))
    app.extensions["berth"].db.dispose()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--repositories", type=int, default=10_000)
    parser.add_argument("--tags", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    args = parser.parse_args()
    if args.quick:
        args.repositories, args.tags, args.runs = 120, 300, 2
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    print(
        f"{args.repositories} repositories, {args.tags} tags in big/app, {args.runs} renders each"
    )
    print("| page | database | median ms | worst ms |")
    print("| --- | --- | ---: | ---: |")
    for database in databases:
        with tempfile.TemporaryDirectory(prefix="berth-uibench-") as work:
            url, drop = (
                (f"sqlite:///{work}/bench.db", lambda: None)
                if database == "sqlite"
                else postgres_database("berth_uibench")
            )
            try:
                upgrade(url)
                build(url, Path(work) / "storage", args.repositories, args.tags)
                for label, median, worst in measure(url, Path(work) / "storage", args.runs):
                    print(f"| {label} | {database} | {median:.1f} | {worst:.1f} |", flush=True)
            finally:
                drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
