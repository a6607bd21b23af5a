"""The only module that knows where things live inside the storage driver."""

from __future__ import annotations

from app.registry.references import Digest

UPLOADS_ROOT = "uploads"


def blob_data(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


def upload_dir(upload_id: str) -> str:
    return f"{UPLOADS_ROOT}/{upload_id}"


def upload_data(upload_id: str) -> str:
    return f"{upload_dir(upload_id)}/data"
