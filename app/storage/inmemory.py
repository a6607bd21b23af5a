"""A dict of bytes: for unit tests only (nothing survives the process)."""

from __future__ import annotations

import io
import threading
import time
from typing import BinaryIO

from app.storage.base import (
    FileInfo,
    FileWriter,
    InvalidOffset,
    PathNotFound,
    StorageDriver,
    check_path,
)


class _MemoryWriter(FileWriter):
    def __init__(self, driver: InMemoryDriver, path: str, append: bool) -> None:
        self._driver, self._path = driver, path
        with driver.lock:
            existing = driver.files.get(path, (b"", 0.0))[0] if append else b""
            driver.files[path] = (existing, time.time())
        self._start = len(existing)
        self._size = self._start

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> int:
        self._size += len(data)
        with self._driver.lock:
            current = self._driver.files.get(self._path, (b"", 0.0))[0]
            self._driver.files[self._path] = (current + data, time.time())
        return len(data)

    def commit(self) -> None:
        pass

    def cancel(self) -> None:
        with self._driver.lock:
            current = self._driver.files.get(self._path, (b"", 0.0))[0]
            self._driver.files[self._path] = (current[: self._start], time.time())
        self._size = self._start

    def close(self) -> None:
        pass


class InMemoryDriver(StorageDriver):
    name = "inmemory"

    def __init__(self) -> None:
        self.files: dict[str, tuple[bytes, float]] = {}
        self.lock = threading.Lock()

    def _get(self, path: str) -> bytes:
        check_path(path)
        with self.lock:
            try:
                return self.files[path][0]
            except KeyError as exc:
                raise PathNotFound(path) from exc

    def get_content(self, path: str) -> bytes:
        return self._get(path)

    def put_content(self, path: str, data: bytes) -> None:
        check_path(path)
        with self.lock:
            self.files[path] = (bytes(data), time.time())

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        data = self._get(path)
        if offset < 0 or offset > len(data):
            raise InvalidOffset(f"{path}@{offset}")
        stream = io.BytesIO(data)
        stream.seek(offset)
        return stream

    def writer(self, path: str, append: bool = False) -> FileWriter:
        return _MemoryWriter(self, check_path(path), append)

    def _is_dir(self, path: str) -> bool:
        prefix = path + "/"
        return any(key.startswith(prefix) for key in self.files)

    def stat(self, path: str) -> FileInfo:
        check_path(path)
        with self.lock:
            if path in self.files:
                data, mtime = self.files[path]
                return FileInfo(path, len(data), mtime, False)
            if self._is_dir(path):
                return FileInfo(path, 0, 0.0, True)
        raise PathNotFound(path)

    def list(self, path: str) -> list[str]:
        prefix = "" if path in ("", "/") else check_path(path) + "/"
        with self.lock:
            children = {
                prefix + key[len(prefix) :].split("/")[0]
                for key in self.files
                if key.startswith(prefix)
            }
        if not children and prefix:
            raise PathNotFound(path)
        return sorted(children)

    def move(self, src: str, dst: str) -> None:
        check_path(src), check_path(dst)
        with self.lock:
            try:
                self.files[dst] = self.files.pop(src)
            except KeyError as exc:
                raise PathNotFound(src) from exc

    def delete(self, path: str) -> None:
        check_path(path)
        prefix = path + "/"
        with self.lock:
            doomed = [key for key in self.files if key == path or key.startswith(prefix)]
            if not doomed:
                raise PathNotFound(path)
            for key in doomed:
                del self.files[key]

    def truncate(self, path: str, size: int) -> None:
        data = self._get(path)
        if size < 0 or size > len(data):
            raise InvalidOffset(f"{path}@{size}")
        with self.lock:
            self.files[path] = (data[:size], time.time())
