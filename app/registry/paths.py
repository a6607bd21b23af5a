"""The only module that knows where things live inside the storage driver."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from app.registry.references import Digest
from app.storage import PathNotFound

UPLOADS_ROOT = "uploads"
BLOBS_ROOT = "blobs"


def blob_data(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


def upload_dir(upload_id: str) -> str:
    return f"{UPLOADS_ROOT}/{upload_id}"


def upload_data(upload_id: str) -> str:
    return f"{upload_dir(upload_id)}/data"


def blob_dir(digest: Digest) -> str:
    """Everything stored for one blob: deleting this directory frees it."""
    return f"{BLOBS_ROOT}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def stored_blobs(listdir: Callable[[str], list[str]]) -> Iterator[tuple[str, str]]:
    """(blob_dir, digest) of every blob directory in storage, given the driver's `list`."""
    for algorithm_dir in _children(listdir, BLOBS_ROOT):
        algorithm = algorithm_dir.rsplit("/", 1)[-1]
        for prefix_dir in _children(listdir, algorithm_dir):
            for hex_dir in _children(listdir, prefix_dir):
                yield hex_dir, f"{algorithm}:{hex_dir.rsplit('/', 1)[-1]}"


def _children(listdir: Callable[[str], list[str]], path: str) -> list[str]:
    try:
        return listdir(path)
    except PathNotFound:  # not created yet, or removed while we walk
        return []
