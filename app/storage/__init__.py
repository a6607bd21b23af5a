"""Pluggable blob storage: pick a driver by name from the settings."""

from __future__ import annotations

from app.storage.base import (
    FileInfo,
    FileWriter,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
    StorageDriver,
    StorageError,
)

__all__ = [
    "FileInfo",
    "FileWriter",
    "InvalidOffset",
    "InvalidPath",
    "PathNotFound",
    "StorageDriver",
    "StorageError",
    "create_driver",
]


def create_driver(name: str, params: dict[str, str]) -> StorageDriver:
    if name == "filesystem":
        from app.storage.filesystem import FilesystemDriver

        return FilesystemDriver(params["root"])
    if name == "inmemory":
        from app.storage.inmemory import InMemoryDriver

        return InMemoryDriver()
    raise ValueError(f"unknown storage driver {name!r}")
