"""Pluggable blob storage: pick a driver by name from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.storage.base import (
    FileInfo,
    FileWriter,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
    StorageDriver,
    StorageError,
)

if TYPE_CHECKING:
    from app.config import Settings

__all__ = [
    "FileInfo",
    "FileWriter",
    "InvalidOffset",
    "InvalidPath",
    "PathNotFound",
    "StorageDriver",
    "StorageError",
    "create_driver",
    "driver_params",
]


def driver_params(settings: Settings) -> dict[str, str]:
    """create_driver's params from the Settings (storage_root and the s3_* fields)."""
    return {
        "root": settings.storage_root,
        "bucket": settings.s3_bucket,
        "endpoint_url": settings.s3_endpoint_url,
        "region": settings.s3_region,
        "access_key": settings.s3_access_key,
        "secret_key": settings.s3_secret_key,
        "prefix": settings.s3_prefix,
        "redirect": str(settings.s3_redirect),
        "part_size": str(settings.s3_part_size),
    }


def create_driver(name: str, params: dict[str, str]) -> StorageDriver:
    if name == "filesystem":
        from app.storage.filesystem import FilesystemDriver

        return FilesystemDriver(params["root"])
    if name == "inmemory":
        from app.storage.inmemory import InMemoryDriver

        return InMemoryDriver()
    if name == "s3":
        from app.storage.s3 import S3Driver

        return S3Driver(
            params.get("bucket", ""),
            endpoint_url=params.get("endpoint_url", ""),
            region=params.get("region", ""),
            access_key=params.get("access_key", ""),
            secret_key=params.get("secret_key", ""),
            prefix=params.get("prefix", ""),
            redirect=params.get("redirect", "").lower() in ("1", "true", "yes", "on"),
            part_size=int(params.get("part_size") or 8 * 1024 * 1024),
        )
    raise ValueError(f"unknown storage driver {name!r}")
