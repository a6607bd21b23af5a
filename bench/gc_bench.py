"""How long `berth gc` takes on 10,000 manifests and 50,000 blobs, on SQLite and PostgreSQL.

    .venv/bin/python bench/gc_bench.py                  # both databases, full size
    .venv/bin/python bench/gc_bench.py --quick          # tiny sizes: checks the script works
    .venv/bin/python bench/gc_bench.py --database sqlite --manifests 20000 --blobs 100000

The data set is written straight into the database (bulk inserts) and a filesystem store,
not pushed over HTTP, so building it takes seconds. Every manifest has a config and three
layers of its own; half the manifests are tagged; the blobs no manifest names (blobs minus
4 x manifests) are linked but garbage. Everything is two days old. Three timed runs, each
on a freshly built data set, through the same code path as `berth gc`:
  --dry-run                   marks and counts, deletes nothing
  (default)                   sweeps the unreferenced blobs: links, rows and files
  --delete-untagged           also sweeps the untagged half of the manifests and their blobs
PostgreSQL: a scratch database on BERTH_TEST_POSTGRES (default postgres@127.0.0.1), dropped
at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, insert, select, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.config import load_settings  # noqa: E402
from app.context import Registry  # noqa: E402
from app.db.models import (  # noqa: E402
    Blob,
    Manifest,
    ManifestReference,
    Repository,
    RepositoryBlob,
    Tag,
)
from app.db.session import engine_url  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.registry import paths  # noqa: E402
from app.registry.gc import GcOptions, GcReport, collect  # noqa: E402
from app.registry.references import Digest  # noqa: E402
from bench.scratch import postgres_database  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
BLOB_BYTES = 64  # small files: the cost measured is metadata and unlink, not disk bandwidth


def build(database_url: str, storage: Path, manifests: int, blobs: int, repos: int) -> None:
    """Repositories, blobs (+ files), links, manifests, references and tags, in bulk."""
    if blobs < 4 * manifests:
        raise SystemExit("--blobs must be at least 4 x --manifests")
    old = datetime.now(UTC) - timedelta(days=2)
    engine = create_engine(engine_url(database_url))
    digests: list[str] = []
    for i in range(blobs):
        data = i.to_bytes(8, "big") * (BLOB_BYTES // 8)
        digest = Digest("sha256", hashlib.sha256(data).hexdigest())
        target = storage / paths.blob_data(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        os.utime(target, (old.timestamp(), old.timestamp()))
        digests.append(str(digest))
    with engine.begin() as conn:
        conn.execute(
            insert(Repository),
            [{"id": r + 1, "name": f"bench/repo{r}", "created_at": old} for r in range(repos)],
        )
        conn.execute(
            insert(Blob),
            [
                {"id": i + 1, "digest": d, "size": BLOB_BYTES, "created_at": old}
                for i, d in enumerate(digests)
            ],
        )
        # Blob i lives in repository i % repos; manifest m names blobs 4m..4m+3.
        conn.execute(
            insert(RepositoryBlob),
            [
                {"repository_id": (i // 4) % repos + 1, "blob_id": i + 1, "created_at": old}
                for i in range(blobs)
            ],
        )
        manifest_rows, reference_rows, tag_rows = [], [], []
        for m in range(manifests):
            named = digests[4 * m : 4 * m + 4]
            doc = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": named[0],
                    "size": BLOB_BYTES,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": d,
                        "size": BLOB_BYTES,
                    }
                    for d in named[1:]
                ],
            }
            body = json.dumps(doc).encode()
            repo_id = m % repos + 1
            manifest_rows.append(
                {
                    "id": m + 1,
                    "repository_id": repo_id,
                    "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
                    "media_type": OCI_MANIFEST,
                    "payload": body,
                    "size": len(body),
                    "created_at": old,
                }
            )
            reference_rows += [{"manifest_id": m + 1, "digest": d, "kind": "blob"} for d in named]
            if m % 2 == 0:
                tag_rows.append({"repository_id": repo_id, "name": f"t{m}", "manifest_id": m + 1})
        conn.execute(insert(Manifest), manifest_rows)
        conn.execute(insert(ManifestReference), reference_rows)
        conn.execute(insert(Tag), tag_rows)
        if conn.dialect.name == "postgresql":
            for table in ("repository", "blob", "manifest", "tag"):
                conn.execute(
                    text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                )
            conn.execute(text("ANALYZE"))
    engine.dispose()


def fresh_database(kind: str, workdir: Path) -> tuple[str, Callable[[], None]]:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}", lambda: None
    return postgres_database("berth_gcbench")


def timed_run(kind: str, args: argparse.Namespace, options: GcOptions) -> tuple[float, GcReport]:
    workdir = Path(tempfile.mkdtemp(prefix="berth-gcbench-"))
    url, drop = fresh_database(kind, workdir)
    try:
        upgrade(url)
        started = time.monotonic()
        build(url, workdir / "storage", args.manifests, args.blobs, args.repos)
        built = time.monotonic() - started
        settings = load_settings(
            {}, {"database_url": url, "storage_root": str(workdir / "storage")}
        )
        reg = Registry.from_settings(settings)
        report = collect(reg, options, None if args.quiet else print)
        with reg.db.transaction() as session:
            left = len(session.execute(select(Blob.id)).all())
        reg.db.dispose()
        on_disk = sum(1 for _ in (workdir / "storage").glob("blobs/*/*/*/data"))
        if not options.dry_run and left != on_disk:
            raise SystemExit(f"{left} blob rows but {on_disk} files after gc")
        print(f"  ({kind}: data set built in {built:.1f}s; {left} blobs left)", file=sys.stderr)
        return report.seconds, report
    finally:
        drop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--manifests", type=int, default=10_000)
    parser.add_argument("--blobs", type=int, default=50_000)
    parser.add_argument("--repos", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="200 manifests, 1,000 blobs")
    parser.add_argument("--quiet", action="store_true", help="no per-phase progress lines")
    args = parser.parse_args()
    if args.quick:
        args.manifests, args.blobs, args.repos = 200, 1000, 10
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    runs = {
        "gc --dry-run": GcOptions(dry_run=True, grace=3600),
        "gc": GcOptions(grace=3600),
        "gc --delete-untagged": GcOptions(delete_untagged=True, grace=3600),
    }
    rows = []
    for kind in kinds:
        for label, options in runs.items():
            seconds, report = timed_run(kind, args, options)
            rows.append((kind, label, seconds, report))
    print(f"\n{args.manifests} manifests, {args.blobs} blobs, {args.repos} repositories")
    print(
        f"{'database':<11} {'run':<22} {'seconds':>8} {'manifests':>10} {'blobs':>7} {'files':>7}"
    )
    for kind, label, seconds, report in rows:
        print(
            f"{kind:<11} {label:<22} {seconds:>8.2f} {report.manifests:>10} {report.blobs:>7}"
            f" {report.blobs + report.orphans:>7}"
        )


if __name__ == "__main__":
    main()
