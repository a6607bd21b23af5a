"""Pluggable blob storage: a driver by name and parameters (app/context.py passes the settings)."""

from __future__ import annotations

from app.storage.base import (
    FileInfo,
    FileWriter,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
    StorageDriver,
    StorageError,
    StorageFull,
)

__all__ = [
    "FileInfo",
    "FileWriter",
    "InvalidOffset",
    "InvalidPath",
    "PathNotFound",
    "StorageDriver",
    "StorageError",
    "StorageFull",
    "create_driver",
]


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
