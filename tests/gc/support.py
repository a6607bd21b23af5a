"""What the gc tests check: the database and the storage agree, and what is left of a push."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, select, update

from app.db.models import Blob, Manifest, ManifestReference, Repository, RepositoryBlob, Upload
from app.db.session import engine_url
from app.registry import paths
from app.registry.references import Digest


def blob_file(storage_root: Path, digest: str) -> Path:
    return storage_root / paths.blob_data(Digest.parse(digest))


def stored_digests(storage_root: Path) -> set[str]:
    """Digests with a data file in storage."""
    root = storage_root / paths.BLOBS_ROOT
    if not root.exists():
        return set()
    return {f"{p.parts[-4]}:{p.parts[-2]}" for p in root.glob("*/*/*/data")}


def problems(database_url: str, storage_root: Path) -> list[str]:
    """Every way in which a manifest points at something that is not there, and every blob
    row without its bytes. Empty when the registry is consistent."""
    engine = create_engine(engine_url(database_url))
    found: list[str] = []
    try:
        with engine.connect() as conn:
            manifests = conn.execute(
                select(Manifest.id, Manifest.repository_id, Manifest.digest)
            ).all()
            in_repo = {(repo, digest) for _id, repo, digest in manifests}
            links = set(
                conn.execute(
                    select(RepositoryBlob.repository_id, Blob.digest).join(
                        Blob, Blob.id == RepositoryBlob.blob_id
                    )
                ).all()
            )
            sizes = dict(conn.execute(select(Blob.digest, Blob.size)).all())
            repo_of = {mid: repo for mid, repo, _d in manifests}
            refs = conn.execute(
                select(
                    ManifestReference.manifest_id, ManifestReference.digest, ManifestReference.kind
                )
            ).all()
    finally:
        engine.dispose()
    on_disk = stored_digests(storage_root)
    for manifest_id, digest, kind in refs:
        repo = repo_of.get(manifest_id)
        if repo is None:
            found.append(f"reference {digest} of missing manifest {manifest_id}")
        elif kind == "manifest" and (repo, digest) not in in_repo:
            found.append(f"manifest {manifest_id}: child {digest} is gone")
        elif kind == "blob":
            if (repo, digest) not in links:
                found.append(f"manifest {manifest_id}: blob {digest} not linked in its repo")
            if digest not in sizes:
                found.append(f"manifest {manifest_id}: blob {digest} has no row")
    for digest, size in sizes.items():
        if digest not in on_disk:
            found.append(f"blob {digest}: row without bytes")
        elif blob_file(storage_root, digest).stat().st_size != size:
            found.append(f"blob {digest}: bytes of the wrong size")
    return found


def age_everything(database_url: str, storage_root: Path, by: timedelta) -> None:
    """Make every row and file look `by` older, as if pushed long ago."""
    old = datetime.now(UTC) - by
    engine = create_engine(engine_url(database_url))
    with engine.begin() as conn:
        for model in (Manifest, Blob, RepositoryBlob, Repository):
            conn.execute(update(model).values(created_at=old))
        conn.execute(update(Upload).values(updated_at=old, started_at=old))
    engine.dispose()
    stamp = time.time() - by.total_seconds()
    for path in storage_root.rglob("*"):
        os.utime(path, (stamp, stamp))


def count_rows(database_url: str, model: type) -> int:
    engine = create_engine(engine_url(database_url))
    try:
        with engine.connect() as conn:
            return len(conn.execute(select(model)).all())
    finally:
        engine.dispose()
