"""The storage driver contract, modelled on distribution's storagedriver.

Drivers see opaque slash-separated paths; only app.registry.paths knows the layout.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import BinaryIO

# Components start with a letter, digit or underscore: no '.', '..', no hidden temp names.
_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


class StorageError(Exception):
    pass


class PathNotFound(StorageError):
    pass


class InvalidPath(StorageError):
    pass


class InvalidOffset(StorageError):
    pass


class Unsupported(StorageError):
    pass


class StorageFull(StorageError):
    """No space left (or the quota is used up): the bytes were not stored."""


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    mtime: float
    is_dir: bool


def check_path(path: str) -> str:
    """Reject anything that could escape the root: empty parts, '.', '..', odd characters."""
    if not _PATH.fullmatch(path):
        raise InvalidPath(path)
    return path


class FileWriter(abc.ABC):
    """Writes bytes to one path: appended to what is there, or (append=False) to an emptied
    file. Nothing is kept before commit(); after it, every reader and the next writer see
    the bytes. Surviving a power loss takes a move(), which is where an upload becomes a blob
    (so a chunked upload pays for one fsync, not one per chunk). cancel() drops every byte
    written through this writer, leaving what was there when it opened (nothing, for
    append=False)."""

    @property
    @abc.abstractmethod
    def size(self) -> int: ...

    @abc.abstractmethod
    def write(self, data: bytes) -> int: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def cancel(self) -> None: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> FileWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.cancel()
        self.close()


class StorageDriver(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    def get_content(self, path: str) -> bytes: ...

    @abc.abstractmethod
    def put_content(self, path: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def reader(self, path: str, offset: int = 0) -> BinaryIO: ...

    @abc.abstractmethod
    def writer(self, path: str, append: bool = False) -> FileWriter: ...

    @abc.abstractmethod
    def stat(self, path: str) -> FileInfo: ...

    @abc.abstractmethod
    def list(self, path: str) -> list[str]:
        """Full paths of the direct children of a directory."""

    @abc.abstractmethod
    def move(self, src: str, dst: str) -> None:
        """Atomically replace dst with src; once it returns, dst's bytes survive a crash."""

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Remove a file or a whole directory tree."""

    @abc.abstractmethod
    def truncate(self, path: str, size: int) -> None:
        """Cut a file back to size bytes (drops a partial write a crash left behind);
        a size beyond the end is InvalidOffset."""

    def sync(self, path: str) -> None:
        """Make a committed file survive a power loss now. move() does this itself; calling
        it first keeps the wait (long, for a big layer) out of a caller's critical section.
        Drivers whose commit() is already durable (object stores) have nothing to do."""
        return None

    def redirect_url(self, path: str, method: str = "GET") -> str | None:
        """A URL the client may fetch the bytes from directly; None: serve them yourself."""
        return None

    def local_path(self, path: str) -> str | None:
        """The file holding `path` on this host, for a front end to send (blob offload);
        None where the bytes are not a local file."""
        return None

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except PathNotFound:
            return False
        return True
