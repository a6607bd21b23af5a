"""Blobs on local disk. Moves are rename(2), with the file and its directory fsynced first:
that is where bytes become a blob. Chunks of an upload are only flushed (see FileWriter)."""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from app.storage.base import (
    FileInfo,
    FileWriter,
    InvalidOffset,
    PathNotFound,
    StorageDriver,
    StorageFull,
    check_path,
)

# open()'s mode for new files under the process umask (read once: os.umask can only be
# read by setting it, which is not safe once threads run).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which os does not wrap; None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
# While a layer streams in, the disk is asked to start writing every this many bytes, so
# that the fsync at completion waits for the last few MiB, not the whole layer (a 64 MiB
# layer's fsync took ~80 ms here; pushes of 4 x 64 MiB went ~170 -> ~210 MB/s without it).
WRITEBACK_EVERY = 8 * 1024 * 1024


class _FileWriter(FileWriter):
    def __init__(self, target: Path, append: bool) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: chunks arrive in 1 MiB pieces anyway, and cancel() must be able to
        # drop what a full disk refused without flushing it first (which would fail again).
        self._file = open(target, "ab" if append else "wb", buffering=0)  # noqa: SIM115 - closed in close()
        self._start = self._file.tell()
        self._size = self._start
        self._written_back = self._start

    @property
    def size(self) -> int:
        return self._size

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        try:
            while view:
                done = self._file.write(view) or 0
                self._size += done
                view = view[done:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(str(exc)) from exc
            raise
        written = len(data)
        if _sync_file_range and self._size - self._written_back >= WRITEBACK_EVERY:
            # Start writeback (no waiting, no durability promise: move() still fsyncs).
            pending = self._size - self._written_back
            _sync_file_range(
                self._file.fileno(), self._written_back, pending, _SYNC_FILE_RANGE_WRITE
            )
            self._written_back = self._size
        return written

    def commit(self) -> None:
        # No fsync per chunk: the upload's bytes are fsynced once, by move() at completion;
        # and nothing is buffered here.
        return None

    def cancel(self) -> None:
        self._file.truncate(self._start)
        self._size = self._start

    def close(self) -> None:
        self._file.close()


def _fsync(path: Path) -> None:
    """Flush a file's bytes, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FilesystemDriver(StorageDriver):
    name = "filesystem"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def full_path(self, path: str) -> Path:
        return self.root / check_path(path)

    def local_path(self, path: str) -> str | None:
        return str(self.full_path(path))

    def get_content(self, path: str) -> bytes:
        try:
            return self.full_path(path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise PathNotFound(path) from exc

    def put_content(self, path: str, data: bytes) -> None:
        target = self.full_path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A unique temporary name per call: threads of one worker may write the same path.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            # mkstemp makes 0600 files; give the mode open() would, so a front end that sends
            # blob files itself (X-Accel-Redirect, X-Sendfile) as another user can read them.
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def reader(self, path: str, offset: int = 0) -> BinaryIO:
        target = self.full_path(path)
        try:
            size = target.stat().st_size
            if offset < 0 or offset > size:
                raise InvalidOffset(f"{path}@{offset}")
            handle = open(target, "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise PathNotFound(path) from exc
        handle.seek(offset)
        return handle

    def writer(self, path: str, append: bool = False) -> FileWriter:
        return _FileWriter(self.full_path(path), append)

    def stat(self, path: str) -> FileInfo:
        try:
            st = self.full_path(path).stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(path) from exc
        is_dir = os.path.isdir(self.full_path(path))
        return FileInfo(path, 0 if is_dir else st.st_size, st.st_mtime, is_dir)

    def list(self, path: str) -> list[str]:
        target = self.root if path in ("", "/") else self.full_path(path)
        try:
            names = sorted(os.listdir(target))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(path) from exc
        prefix = "" if path in ("", "/") else path + "/"
        return [prefix + name for name in names if not name.startswith(".")]

    def sync(self, path: str) -> None:
        try:
            _fsync(self.full_path(path))
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(path) from exc

    def move(self, src: str, dst: str) -> None:
        source, target = self.full_path(src), self.full_path(dst)
        try:
            fd = os.open(source, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(src) from exc
        try:
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise PathNotFound(src)
            created = self._make_parents(target)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(source, target)
        # The rename, and each new directory, is durable only once its entry is on disk.
        # The new directories were made before the file's fsync: a journalling filesystem
        # writes them down with it, and these later fsyncs of their parents are cheap.
        _fsync(target.parent)
        for directory in created:
            _fsync(directory.parent)

    def _make_parents(self, target: Path) -> builtins.list[Path]:
        """Create target's missing parent directories (deepest first in the list returned);
        the caller makes their entries durable: after a crash a renamed-in blob must not
        vanish with a directory that was never written down."""
        missing = []
        parent = target.parent
        while not parent.is_dir() and parent != self.root:
            missing.append(parent)
            parent = parent.parent
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another thread made it meanwhile
                directory.mkdir()
        return missing

    def delete(self, path: str) -> None:
        target = self.full_path(path)
        try:
            try:
                target.unlink()
            except IsADirectoryError:
                try:
                    target.rmdir()  # an upload's directory is empty once its blob moved out
                except OSError:
                    shutil.rmtree(target)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(path) from exc

    def truncate(self, path: str, size: int) -> None:
        target = self.full_path(path)
        try:
            if not target.is_file():
                raise PathNotFound(path)
            if size < 0 or size > target.stat().st_size:
                raise InvalidOffset(f"{path}@{size}")
            os.truncate(target, size)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(path) from exc
