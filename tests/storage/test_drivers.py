"""One contract suite for every storage driver, plus filesystem-only checks.

Every test in the first part runs against each driver built through create_driver, so a
behaviour the registry relies on cannot silently differ between them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from app.config import ConfigError, load_settings
from app.context import storage_driver
from app.storage import (
    FileWriter,
    InvalidOffset,
    InvalidPath,
    PathNotFound,
    StorageDriver,
    StorageError,
    create_driver,
)
from app.storage import s3 as s3_module
from app.storage.filesystem import FilesystemDriver
from app.storage.s3 import S3Driver
from tests.s3server import S3Server

DRIVERS = ["filesystem", "inmemory", "s3"]
MiB = 1024 * 1024
CHUNK = 64 * 1024
S3_PART = 5 * MiB  # the smallest part S3 allows: large-object tests span several parts


@pytest.fixture(scope="module")
def s3_bucket(s3_server: S3Server) -> str:
    """One bucket for this module; each test works under a key prefix of its own. A key
    outside every prefix proves that a driver never sees past its prefix."""
    bucket = s3_server.new_bucket()
    s3_server.client().put_object(Bucket=bucket, Key="outside-the-prefix", Body=b"x")
    return bucket


@pytest.fixture
def s3_params(request: pytest.FixtureRequest, s3_server: S3Server, s3_bucket: str) -> dict:
    prefix = f"t-{secrets.token_hex(6)}"
    yield s3_server.driver_params(s3_bucket, prefix=prefix, part_size=str(S3_PART))
    client = s3_server.client()
    keys = s3_server.keys(s3_bucket, prefix + "/")
    for start in range(0, len(keys), 1000):
        objects = [{"Key": key} for key in keys[start : start + 1000]]
        client.delete_objects(Bucket=s3_bucket, Delete={"Objects": objects})


@pytest.fixture(params=DRIVERS)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    params: dict[str, str] = {}
    if request.param == "filesystem":
        params = {"root": str(tmp_path / "root")}
    elif request.param == "s3":
        params = request.getfixturevalue("s3_params")
    built = create_driver(request.param, params)
    assert built.name == request.param
    return built


@pytest.fixture
def fs_driver(tmp_path: Path) -> FilesystemDriver:
    built = create_driver("filesystem", {"root": str(tmp_path / "root")})
    assert isinstance(built, FilesystemDriver)
    return built


def _read_all(driver: StorageDriver, path: str, offset: int = 0) -> bytes:
    with driver.reader(path, offset) as stream:
        return stream.read()


def _write_chunks(writer: FileWriter, data: bytes, chunk: int = CHUNK) -> None:
    for start in range(0, len(data), chunk):
        writer.write(data[start : start + chunk])


def _run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    """Start all targets together; return whatever they raised."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(targets))

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait()
                target()
            except BaseException as exc:  # reported to the test
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(t)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a storage call hung"
    return errors


# --------------------------------------------------------------------------- content


def test_put_get_content_round_trip(driver: StorageDriver) -> None:
    payload = bytes(range(256)) * 4
    driver.put_content("repos/library/alpine/_layers/sha256/abc/link", payload)
    assert driver.get_content("repos/library/alpine/_layers/sha256/abc/link") == payload


def test_put_content_replaces_previous_value(driver: StorageDriver) -> None:
    driver.put_content("tag/current", b"a much longer first value")
    driver.put_content("tag/current", b"short")
    assert driver.get_content("tag/current") == b"short"


def test_empty_content_round_trip(driver: StorageDriver) -> None:
    driver.put_content("empty", b"")
    assert driver.get_content("empty") == b""
    assert driver.stat("empty").size == 0


def test_get_missing_path_is_path_not_found(driver: StorageDriver) -> None:
    with pytest.raises(PathNotFound):
        driver.get_content("no/such/blob")


# A path that is not there must say so on every method, including when a parent
# component is a file (the registry maps PathNotFound to 404; anything else is a 500).
_MISSING_CALLS: dict[str, Callable[[StorageDriver, str], Any]] = {
    "get_content": lambda d, p: d.get_content(p),
    "reader": lambda d, p: d.reader(p),
    "stat": lambda d, p: d.stat(p),
    "list": lambda d, p: d.list(p),
    "move": lambda d, p: d.move(p, "elsewhere"),
    "delete": lambda d, p: d.delete(p),
    "truncate": lambda d, p: d.truncate(p, 0),
}


@pytest.mark.parametrize("method", sorted(_MISSING_CALLS))
@pytest.mark.parametrize("missing", ["absent", "absent/child", "afile/child"])
def test_missing_path_is_path_not_found_everywhere(
    driver: StorageDriver, method: str, missing: str
) -> None:
    driver.put_content("afile", b"x")
    with pytest.raises(PathNotFound):
        _MISSING_CALLS[method](driver, missing)
    assert driver.get_content("afile") == b"x"
    assert not driver.exists(missing)


# --------------------------------------------------------------------------- paths

INVALID_PATHS = [
    "",
    "/abs",
    "/",
    "a/../b",
    "..",
    "../escape",
    "a//b",
    "a/",
    ".",
    "a/./b",
    "with space",
    "nul\x00byte",
    "trailing\n",
    "back\\slash",
]

_PATH_CALLS: dict[str, Callable[[StorageDriver, str], Any]] = {
    "get_content": lambda d, p: d.get_content(p),
    "put_content": lambda d, p: d.put_content(p, b"x"),
    "reader": lambda d, p: d.reader(p),
    "writer": lambda d, p: d.writer(p),
    "writer_append": lambda d, p: d.writer(p, append=True),
    "stat": lambda d, p: d.stat(p),
    "list": lambda d, p: d.list(p),
    "move_src": lambda d, p: d.move(p, "valid/dst"),
    "move_dst": lambda d, p: d.move("valid/src", p),
    "delete": lambda d, p: d.delete(p),
    "truncate": lambda d, p: d.truncate(p, 0),
    "exists": lambda d, p: d.exists(p),
}


@pytest.mark.parametrize("method", sorted(_PATH_CALLS))
@pytest.mark.parametrize("bad", INVALID_PATHS, ids=repr)
def test_invalid_path_is_rejected_by_every_method(
    driver: StorageDriver, method: str, bad: str
) -> None:
    if method == "list" and bad in ("", "/"):
        return  # list("") and list("/") name the driver root: see test_list_root
    driver.put_content("valid/src", b"source")
    with pytest.raises(InvalidPath):
        _PATH_CALLS[method](driver, bad)
    # A rejected call changes nothing.
    assert driver.get_content("valid/src") == b"source"
    assert driver.list("") == ["valid"]
    assert driver.list("valid") == ["valid/src"]


def test_valid_path_characters_are_accepted(driver: StorageDriver) -> None:
    path = "v2/Library_x/my-repo.name/sha256/0123456789abcdef"
    driver.put_content(path, b"ok")
    assert driver.get_content(path) == b"ok"


# --------------------------------------------------------------------------- reader


@pytest.fixture
def ten_bytes(driver: StorageDriver) -> str:
    driver.put_content("blob/data", b"0123456789")
    return "blob/data"


@pytest.mark.parametrize(
    ("offset", "expected"), [(0, b"0123456789"), (4, b"456789"), (9, b"9"), (10, b"")]
)
def test_reader_starts_at_offset(
    driver: StorageDriver, ten_bytes: str, offset: int, expected: bytes
) -> None:
    assert _read_all(driver, ten_bytes, offset) == expected


@pytest.mark.parametrize("offset", [11, 1000, -1])
def test_reader_offset_outside_content_is_invalid(
    driver: StorageDriver, ten_bytes: str, offset: int
) -> None:
    with pytest.raises(InvalidOffset):
        driver.reader(ten_bytes, offset)


def test_reader_missing_path(driver: StorageDriver) -> None:
    with pytest.raises(PathNotFound):
        driver.reader("blob/missing", 0)


# --------------------------------------------------------------------------- writer


def test_writer_commit_makes_content_readable(driver: StorageDriver) -> None:
    with driver.writer("uploads/u1/data") as writer:
        assert writer.size == 0
        assert writer.write(b"hello ") == 6
        assert writer.write(b"world") == 5
        assert writer.size == 11
        writer.commit()
    assert driver.get_content("uploads/u1/data") == b"hello world"
    assert driver.stat("uploads/u1/data").size == 11


def test_writer_append_continues_at_size(driver: StorageDriver) -> None:
    with driver.writer("uploads/u1/data") as writer:
        writer.write(b"first-")
        writer.commit()
    with driver.writer("uploads/u1/data", append=True) as writer:
        assert writer.size == 6
        writer.write(b"second")
        assert writer.size == 12
        writer.commit()
    assert driver.get_content("uploads/u1/data") == b"first-second"


def test_writer_append_to_missing_path_starts_empty(driver: StorageDriver) -> None:
    with driver.writer("uploads/new/data", append=True) as writer:
        assert writer.size == 0
        writer.write(b"abc")
        writer.commit()
    assert driver.get_content("uploads/new/data") == b"abc"


def test_writer_without_append_truncates(driver: StorageDriver) -> None:
    driver.put_content("uploads/u1/data", b"old content that is long")
    with driver.writer("uploads/u1/data", append=False) as writer:
        assert writer.size == 0
        writer.write(b"new")
        writer.commit()
    assert driver.get_content("uploads/u1/data") == b"new"


def test_writer_cancel_drops_only_what_this_writer_wrote(driver: StorageDriver) -> None:
    driver.put_content("uploads/u1/data", b"kept:")
    writer = driver.writer("uploads/u1/data", append=True)
    writer.write(b"dropped-1")
    writer.write(b"dropped-2")
    writer.cancel()
    assert writer.size == 5
    writer.close()
    assert driver.get_content("uploads/u1/data") == b"kept:"
    assert driver.stat("uploads/u1/data").size == 5


def test_writer_cancel_after_earlier_commit_keeps_committed_session(
    driver: StorageDriver,
) -> None:
    # Chunked upload: PATCH 1 commits, PATCH 2 fails and is cancelled.
    with driver.writer("uploads/u1/data", append=True) as writer:
        writer.write(b"chunk-1;")
        writer.commit()
    writer = driver.writer("uploads/u1/data", append=True)
    writer.write(b"chunk-2-broken")
    writer.cancel()
    writer.close()
    with driver.writer("uploads/u1/data", append=True) as writer:
        assert writer.size == 8
        writer.write(b"chunk-2;")
        writer.commit()
    assert driver.get_content("uploads/u1/data") == b"chunk-1;chunk-2;"


def test_writer_context_manager_cancels_on_exception(driver: StorageDriver) -> None:
    driver.put_content("uploads/u1/data", b"committed")
    writer = driver.writer("uploads/u1/data", append=True)
    with pytest.raises(RuntimeError, match="client went away"), writer:
        writer.write(b"partial chunk")
        raise RuntimeError("client went away")
    assert driver.get_content("uploads/u1/data") == b"committed"


def test_writer_context_manager_on_new_path_leaves_no_bytes(driver: StorageDriver) -> None:
    writer = driver.writer("uploads/u2/data")
    with pytest.raises(RuntimeError, match="boom"), writer:
        writer.write(b"partial chunk")
        raise RuntimeError("boom")
    assert not driver.exists("uploads/u2/data") or driver.get_content("uploads/u2/data") == b""


def test_large_object_streams_intact(driver: StorageDriver) -> None:
    block = hashlib.sha256(b"seed").digest() * (CHUNK // 32)  # 64 KiB, not all one byte
    expected = hashlib.sha256()
    with driver.writer("blobs/sha256/big/data") as writer:
        for index in range(8 * MiB // CHUNK):
            chunk = bytes([index % 256]) + block[1:]
            expected.update(chunk)
            writer.write(chunk)
        assert writer.size == 8 * MiB
        writer.commit()
    assert driver.stat("blobs/sha256/big/data").size == 8 * MiB
    got = hashlib.sha256()
    total = 0
    with driver.reader("blobs/sha256/big/data") as stream:
        while chunk := stream.read(CHUNK):
            got.update(chunk)
            total += len(chunk)
    assert total == 8 * MiB
    assert got.hexdigest() == expected.hexdigest()
    # Resuming part-way through (a ranged GET) sees the right tail.
    with driver.reader("blobs/sha256/big/data", 8 * MiB - 10) as stream:
        assert len(stream.read()) == 10


# --------------------------------------------------------------------------- stat / list


def test_stat_file_and_directory(driver: StorageDriver) -> None:
    driver.put_content("repo/blobs/one", b"12345")
    info = driver.stat("repo/blobs/one")
    assert (info.path, info.size, info.is_dir) == ("repo/blobs/one", 5, False)
    assert info.mtime > 0
    directory = driver.stat("repo/blobs")
    assert directory.is_dir is True
    assert directory.path == "repo/blobs"
    assert driver.stat("repo").is_dir is True


def test_stat_missing(driver: StorageDriver) -> None:
    with pytest.raises(PathNotFound):
        driver.stat("repo/nothing")


def test_list_direct_children_as_full_sorted_paths(driver: StorageDriver) -> None:
    for name in ["zeta", "alpha", "Mid", "sub/deep/file", "sub/other"]:
        driver.put_content(f"top/{name}", b"x")
    assert driver.list("top") == ["top/Mid", "top/alpha", "top/sub", "top/zeta"]
    assert driver.list("top/sub") == ["top/sub/deep", "top/sub/other"]
    assert driver.list("top/sub/deep") == ["top/sub/deep/file"]


def test_list_root(driver: StorageDriver) -> None:
    driver.put_content("b/x", b"1")
    driver.put_content("a", b"2")
    assert driver.list("") == ["a", "b"]


def test_list_missing_directory(driver: StorageDriver) -> None:
    driver.put_content("top/file", b"x")
    with pytest.raises(PathNotFound):
        driver.list("nothere")
    with pytest.raises(PathNotFound):
        driver.list("top/nothere")


# --------------------------------------------------------------------------- move / delete


def test_move_replaces_destination_and_removes_source(driver: StorageDriver) -> None:
    driver.put_content("uploads/u1/data", b"new blob bytes")
    driver.put_content("blobs/sha256/ab/data", b"old, longer destination bytes")
    driver.move("uploads/u1/data", "blobs/sha256/ab/data")
    assert driver.get_content("blobs/sha256/ab/data") == b"new blob bytes"
    assert not driver.exists("uploads/u1/data")
    with pytest.raises(PathNotFound):
        driver.get_content("uploads/u1/data")


def test_move_creates_destination_parents(driver: StorageDriver) -> None:
    driver.put_content("src", b"data")
    driver.move("src", "deep/new/parent/dst")
    assert driver.get_content("deep/new/parent/dst") == b"data"
    assert driver.list("") == ["deep"]


def test_move_missing_source(driver: StorageDriver) -> None:
    driver.put_content("dst", b"untouched")
    with pytest.raises(PathNotFound):
        driver.move("src/missing", "dst")
    assert driver.get_content("dst") == b"untouched"


def test_concurrent_readers_of_destination_never_see_partial_move(
    driver: StorageDriver,
) -> None:
    old, new = b"o" * 200_000, b"n" * 300_000
    driver.put_content("dst", old)
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(driver.get_content("dst"))

    def move() -> None:
        try:
            for _ in range(20):
                driver.put_content("src", new)
                driver.move("src", "dst")
                driver.put_content("src", old)
                driver.move("src", "dst")
        finally:
            stop.set()

    assert _run_threads([read, move]) == []
    assert seen <= {old, new}


def test_delete_file(driver: StorageDriver) -> None:
    driver.put_content("repo/a", b"1")
    driver.put_content("repo/b", b"2")
    driver.delete("repo/a")
    assert not driver.exists("repo/a")
    assert driver.list("repo") == ["repo/b"]


def test_delete_tree(driver: StorageDriver) -> None:
    for path in ["repo/x/1", "repo/x/y/2", "repo/x/y/z/3", "repo/keep", "repox/keep"]:
        driver.put_content(path, b"data")
    driver.delete("repo/x")
    assert not driver.exists("repo/x")
    assert not driver.exists("repo/x/y/z/3")
    assert driver.list("repo") == ["repo/keep"]
    assert driver.get_content("repox/keep") == b"data"


def test_delete_missing(driver: StorageDriver) -> None:
    with pytest.raises(PathNotFound):
        driver.delete("repo/never")


def test_delete_does_not_touch_sibling_with_same_prefix(driver: StorageDriver) -> None:
    driver.put_content("repo/ab", b"keep")
    driver.put_content("repo/a", b"drop")
    driver.delete("repo/a")
    assert driver.get_content("repo/ab") == b"keep"


# --------------------------------------------------------------------------- misc


def test_truncate_cuts_back(driver: StorageDriver) -> None:
    driver.put_content("uploads/u1/data", b"0123456789")
    driver.truncate("uploads/u1/data", 4)
    assert driver.get_content("uploads/u1/data") == b"0123"
    assert driver.stat("uploads/u1/data").size == 4
    driver.truncate("uploads/u1/data", 0)
    assert driver.get_content("uploads/u1/data") == b""


def test_truncate_then_append_resumes_at_cut(driver: StorageDriver) -> None:
    # What uploads.py does after a crash: cut to the recorded size, then append.
    driver.put_content("uploads/u1/data", b"good|garbage")
    driver.truncate("uploads/u1/data", 5)
    with driver.writer("uploads/u1/data", append=True) as writer:
        assert writer.size == 5
        writer.write(b"more")
        writer.commit()
    assert driver.get_content("uploads/u1/data") == b"good|more"


def test_truncate_missing(driver: StorageDriver) -> None:
    with pytest.raises(PathNotFound):
        driver.truncate("uploads/none", 0)


def test_exists(driver: StorageDriver) -> None:
    assert driver.exists("a/b") is False
    driver.put_content("a/b", b"x")
    assert driver.exists("a/b") is True
    assert driver.exists("a") is True  # a directory exists too
    driver.delete("a/b")
    assert driver.exists("a/b") is False


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_redirect_url_is_none(driver: StorageDriver, method: str) -> None:
    driver.put_content("blobs/x", b"x")
    assert driver.redirect_url("blobs/x", method) is None


# --------------------------------------------------------------------------- concurrency


def test_concurrent_writers_on_separate_paths(driver: StorageDriver) -> None:
    count, size = 8, 1 * MiB
    payloads = {f"uploads/u{i}/data": os.urandom(size) for i in range(count)}

    def upload(path: str, data: bytes) -> Callable[[], None]:
        def run() -> None:
            with driver.writer(path) as writer:
                _write_chunks(writer, data, chunk=8 * 1024)
                writer.commit()

        return run

    assert _run_threads([upload(p, d) for p, d in payloads.items()]) == []
    for path, data in payloads.items():
        assert driver.get_content(path) == data, path
    assert driver.list("") == ["uploads"]
    assert driver.list("uploads") == sorted(p.rsplit("/", 1)[0] for p in payloads)


def test_concurrent_put_content_same_path_is_never_mixed(driver: StorageDriver) -> None:
    # Two pushes of the same tag at once: the link ends up as one value or the
    # other, whole, and neither push fails.
    first, second = b"A" * 3 * MiB, b"B" * 2 * MiB
    for _ in range(10):
        errors = _run_threads(
            [
                lambda: driver.put_content("tags/latest", first),
                lambda: driver.put_content("tags/latest", second),
            ]
        )
        assert errors == []
        assert driver.get_content("tags/latest") in (first, second)
        assert driver.list("tags") == ["tags/latest"]


# --------------------------------------------------------------------------- large objects
# Sizes chosen around S3's 5 MiB part minimum (the s3 fixture uses 5 MiB parts), so the s3
# driver goes through multipart uploads, part copies and their boundaries; for the other
# drivers they are simply large files.


def _pattern(size: int, seed: int) -> bytes:
    """Bytes where every offset differs from its neighbours: a misplaced range shows."""
    block = b"".join(hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in range(2048))
    return (block * (size // len(block) + 1))[:size]


def _write_in_pieces(driver: StorageDriver, path: str, data: bytes, append: bool) -> None:
    with driver.writer(path, append=append) as writer:
        start = writer.size
        # Irregular piece sizes: parts never line up with writes.
        sizes = [1, 999_983, 64 * 1024, 3 * MiB + 7]
        offset, index = 0, 0
        while offset < len(data):
            piece = data[offset : offset + sizes[index % len(sizes)]]
            assert writer.write(piece) == len(piece)
            offset += len(piece)
            index += 1
            assert writer.size == start + offset
        writer.commit()


def test_large_object_in_several_parts_round_trips(driver: StorageDriver) -> None:
    data = _pattern(12 * MiB + 12_345, seed=1)
    _write_in_pieces(driver, "blobs/big/data", data, append=False)
    assert driver.stat("blobs/big/data").size == len(data)
    got = hashlib.sha256()
    with driver.reader("blobs/big/data") as stream:
        while piece := stream.read(100_003):
            got.update(piece)
    assert got.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    "offset",
    [0, 1, 5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 10 * MiB, 12 * MiB - 1, 12 * MiB],
)
def test_large_object_reads_at_offsets(driver: StorageDriver, offset: int) -> None:
    data = _pattern(12 * MiB, seed=2)
    with driver.writer("blobs/offsets/data") as writer:
        _write_chunks(writer, data, chunk=MiB)
        writer.commit()
    with driver.reader("blobs/offsets/data", offset) as stream:
        assert stream.read(1000) == data[offset : offset + 1000]
        # The rest follows on from where the first read stopped.
        assert stream.read() == data[offset + 1000 :]


def test_reader_stops_early_without_reading_the_rest(driver: StorageDriver) -> None:
    data = _pattern(12 * MiB, seed=3)
    driver.put_content("blobs/early/data", data)
    for offset in (0, 7 * MiB):
        with driver.reader("blobs/early/data", offset) as stream:
            assert stream.read(10) == data[offset : offset + 10]
    # A closed reader leaves the driver usable (its connection was released or dropped).
    assert driver.get_content("blobs/early/data") == data


@pytest.mark.parametrize(
    "chunks_mib",
    [
        [3, 3, 4],  # a small prefix re-uploaded, then a 6 MiB one copied server-side
        [6, 1, 0.001, 5],  # parts copied, a tiny append, then one that ends on a part
        [0.5, 0.5, 0.5, 12],  # many small chunks, then several parts at once
    ],
    ids=["small-then-copied", "copied-prefixes", "tiny-then-huge"],
)
def test_chunked_appends_across_part_boundaries(
    driver: StorageDriver, chunks_mib: list[float]
) -> None:
    """What a chunked blob upload does: one append writer per PATCH."""
    path = "uploads/chunked/data"
    driver.put_content(path, b"")
    expected = b""
    for index, mib in enumerate(chunks_mib):
        chunk = _pattern(int(mib * MiB), seed=10 + index)
        _write_in_pieces(driver, path, chunk, append=True)
        expected += chunk
        assert driver.stat(path).size == len(expected)
    with driver.reader(path) as stream:
        assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(expected).digest()
    with driver.reader(path, len(expected) - 5 * MiB - 3) as stream:
        assert stream.read() == expected[-5 * MiB - 3 :]


@pytest.mark.parametrize("prefix_mib", [1, 6])
def test_cancelled_large_append_keeps_previous_content(
    driver: StorageDriver, prefix_mib: int
) -> None:
    prefix = _pattern(prefix_mib * MiB, seed=4)
    driver.put_content("uploads/u1/data", prefix)
    writer = driver.writer("uploads/u1/data", append=True)
    _write_chunks(writer, _pattern(11 * MiB, seed=5), chunk=MiB)  # several parts went up
    assert writer.size == len(prefix) + 11 * MiB
    writer.cancel()
    assert writer.size == len(prefix)
    writer.close()
    assert driver.stat("uploads/u1/data").size == len(prefix)
    assert driver.get_content("uploads/u1/data") == prefix


def test_writer_closed_without_commit_on_new_path_leaves_nothing_readable(
    driver: StorageDriver,
) -> None:
    writer = driver.writer("uploads/u3/data")
    _write_chunks(writer, _pattern(7 * MiB, seed=6), chunk=MiB)
    writer.cancel()
    writer.close()
    assert not driver.exists("uploads/u3/data") or driver.get_content("uploads/u3/data") == b""


@pytest.mark.parametrize("size_mib", [0.25, 6, 12])
def test_truncate_large_object_then_append(driver: StorageDriver, size_mib: float) -> None:
    data = _pattern(14 * MiB, seed=7)
    driver.put_content("uploads/u1/data", data)
    cut = int(size_mib * MiB)
    driver.truncate("uploads/u1/data", cut)
    assert driver.stat("uploads/u1/data").size == cut
    tail = _pattern(2 * MiB, seed=8)
    _write_in_pieces(driver, "uploads/u1/data", tail, append=True)
    assert driver.get_content("uploads/u1/data") == data[:cut] + tail


def test_truncate_beyond_end_is_invalid_offset(driver: StorageDriver) -> None:
    driver.put_content("uploads/u1/data", b"0123")
    with pytest.raises(InvalidOffset):
        driver.truncate("uploads/u1/data", 5)
    with pytest.raises(InvalidOffset):
        driver.truncate("uploads/u1/data", -1)
    assert driver.get_content("uploads/u1/data") == b"0123"


def test_move_large_object(driver: StorageDriver) -> None:
    data = _pattern(12 * MiB, seed=9)
    _write_in_pieces(driver, "uploads/u1/data", data, append=False)
    driver.move("uploads/u1/data", "blobs/sha256/cd/cdef/data")
    assert not driver.exists("uploads/u1/data")
    assert driver.stat("blobs/sha256/cd/cdef/data").size == len(data)
    with driver.reader("blobs/sha256/cd/cdef/data", 6 * MiB) as stream:
        assert stream.read() == data[6 * MiB :]


def test_move_onto_itself_keeps_content(driver: StorageDriver) -> None:
    driver.put_content("blobs/same", b"same")
    driver.move("blobs/same", "blobs/same")
    assert driver.get_content("blobs/same") == b"same"


def test_concurrent_large_writers_on_separate_paths(driver: StorageDriver) -> None:
    payloads = {f"uploads/big{i}/data": _pattern(11 * MiB + i, seed=20 + i) for i in range(3)}

    def upload(path: str, data: bytes) -> Callable[[], None]:
        return lambda: _write_in_pieces(driver, path, data, append=False)

    assert _run_threads([upload(p, d) for p, d in payloads.items()]) == []
    for path, data in payloads.items():
        assert driver.stat(path).size == len(data)
        with driver.reader(path, len(data) - MiB) as stream:
            assert stream.read() == data[-MiB:], path


def test_concurrent_chunked_uploads_interleave(driver: StorageDriver) -> None:
    """Several uploads append chunk after chunk at the same time, as parallel layer pushes do."""
    chunks = {i: [_pattern(3 * MiB, seed=30 + i * 3 + n) for n in range(3)] for i in range(3)}

    def upload(index: int) -> Callable[[], None]:
        def run() -> None:
            for chunk in chunks[index]:
                _write_in_pieces(driver, f"uploads/c{index}/data", chunk, append=True)

        return run

    assert _run_threads([upload(i) for i in chunks]) == []
    for index, parts in chunks.items():
        assert driver.get_content(f"uploads/c{index}/data") == b"".join(parts)


def test_reading_a_large_object_holds_little_memory(driver: StorageDriver) -> None:
    data_size = 12 * MiB
    driver.put_content("blobs/mem/data", _pattern(data_size, seed=40))
    tracemalloc.start()
    try:
        total = 0
        with driver.reader("blobs/mem/data", MiB) as stream:
            while piece := stream.read(CHUNK):
                total += len(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == data_size - MiB
    assert peak < 2 * MiB, f"reading held {peak} bytes at once"


# --------------------------------------------------------------------------- filesystem


@pytest.mark.parametrize("bad", INVALID_PATHS, ids=repr)
def test_filesystem_full_path_rejects_traversal(fs_driver: FilesystemDriver, bad: str) -> None:
    with pytest.raises(InvalidPath):
        fs_driver.full_path(bad)


def test_filesystem_full_path_stays_under_root(fs_driver: FilesystemDriver) -> None:
    full = fs_driver.full_path("a/b.c/d-e_f")
    assert full.is_relative_to(fs_driver.root)
    assert full == fs_driver.root / "a" / "b.c" / "d-e_f"


def test_filesystem_nothing_written_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    fs = create_driver("filesystem", {"root": str(root)})
    for bad in ["../outside", "a/../../outside", "/tmp/outside"]:
        with pytest.raises(InvalidPath):
            fs.put_content(bad, b"x")
        with pytest.raises(InvalidPath):
            fs.writer(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
    assert list(root.iterdir()) == []


def _all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_filesystem_put_content_leaves_no_temp_files(fs_driver: FilesystemDriver) -> None:
    fs_driver.put_content("repo/tags/latest/link", b"sha256:1")
    fs_driver.put_content("repo/tags/latest/link", b"sha256:2")
    fs_driver.put_content("top", b"x")
    assert _all_files(fs_driver.root) == ["repo/tags/latest/link", "top"]
    assert fs_driver.get_content("repo/tags/latest/link") == b"sha256:2"


def test_filesystem_failed_put_content_leaves_no_temp_files(
    fs_driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs_driver.put_content("repo/link", b"old")

    def failing_replace(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        fs_driver.put_content("repo/link", b"new")
    monkeypatch.undo()
    assert fs_driver.get_content("repo/link") == b"old"
    assert _all_files(fs_driver.root) == ["repo/link"]


def test_filesystem_concurrent_put_content_leaves_no_temp_files(
    fs_driver: FilesystemDriver,
) -> None:
    _run_threads([lambda: fs_driver.put_content("tags/latest", b"x" * MiB) for _ in range(4)])
    assert _all_files(fs_driver.root) == ["tags/latest"]


def test_filesystem_move_result_is_on_disk(fs_driver: FilesystemDriver) -> None:
    fs_driver.put_content("uploads/u1/data", b"blob")
    fs_driver.move("uploads/u1/data", "blobs/ab/data")
    root = fs_driver.root
    assert (root / "blobs" / "ab" / "data").read_bytes() == b"blob"
    assert not (root / "uploads" / "u1" / "data").exists()
    # A fresh driver over the same root (a restarted process) sees the same thing.
    again = create_driver("filesystem", {"root": str(root)})
    assert again.get_content("blobs/ab/data") == b"blob"
    assert not again.exists("uploads/u1/data")


def _spy_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, the path of every file or directory fsynced, in order."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


def test_filesystem_move_fsyncs_destination_directory(
    fs_driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs_driver.put_content("src", b"blob")
    synced = _spy_fsyncs(monkeypatch)
    fs_driver.move("src", "dir/dst")
    assert synced, "move() did not fsync anything"
    assert (fs_driver.root / "dir" / "dst").read_bytes() == b"blob"
    assert not (fs_driver.root / "src").exists()


def test_filesystem_move_makes_chunks_durable(
    fs_driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks are committed without fsync; the move that makes them a blob syncs the bytes
    # before the rename, so a crash cannot leave a blob whose name points at lost data.
    synced = _spy_fsyncs(monkeypatch)
    for chunk in (b"one", b"two"):
        with fs_driver.writer("uploads/u1/data", append=True) as writer:
            writer.write(chunk)
            writer.commit()
    assert synced == []
    fs_driver.move("uploads/u1/data", "blobs/x/data")
    # The bytes first (still under their upload name), then the entries that name them.
    assert synced[0] == str(fs_driver.root / "uploads/u1/data")
    assert str(fs_driver.root / "blobs/x") in synced[1:]
    assert fs_driver.get_content("blobs/x/data") == b"onetwo"


def test_filesystem_writer_starts_writeback_as_bytes_stream(
    fs_driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long upload asks the disk to write what it has every WRITEBACK_EVERY bytes, so the
    # fsync at completion has little left to wait for. Ranges follow on from the old end.
    from app.storage import filesystem

    assert filesystem._sync_file_range is not None, "Linux has sync_file_range"
    monkeypatch.setattr(filesystem, "WRITEBACK_EVERY", 1000)
    ranges: list[tuple[int, int]] = []

    def record(fd: int, offset: int, length: int, flags: int) -> int:
        ranges.append((offset, length))
        return 0

    monkeypatch.setattr(filesystem, "_sync_file_range", record)
    fs_driver.put_content("uploads/u1/data", b"x" * 100)
    with fs_driver.writer("uploads/u1/data", append=True) as writer:
        for _ in range(5):
            writer.write(b"y" * 600)
        writer.commit()
    assert ranges == [(100, 1200), (1300, 1200)]
    assert fs_driver.get_content("uploads/u1/data") == b"x" * 100 + b"y" * 3000


def test_filesystem_sync_fsyncs_the_file(
    fs_driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fs_driver.writer("uploads/u1/data") as writer:
        writer.write(b"layer")
        writer.commit()
    synced = _spy_fsyncs(monkeypatch)
    fs_driver.sync("uploads/u1/data")
    assert synced == [str(fs_driver.root / "uploads/u1/data")]
    with pytest.raises(PathNotFound):
        fs_driver.sync("uploads/u2/data")


def test_filesystem_move_makes_new_directories_durable(
    fs_driver: FilesystemDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # blobs/sha256/ab/<hex>/ are usually new: each new directory's entry must reach the disk
    # (its parent fsynced), or a crash can lose a blob whose row is already committed.
    fs_driver.put_content("uploads/u1/data", b"blob")
    synced = _spy_fsyncs(monkeypatch)
    fs_driver.move("uploads/u1/data", "blobs/sha256/ab/abcd/data")
    root = fs_driver.root
    expected = [root, root / "blobs", root / "blobs/sha256", root / "blobs/sha256/ab"]
    for directory in [*expected, root / "blobs/sha256/ab/abcd"]:
        assert str(directory) in synced, f"{directory} not fsynced: {synced}"
    # Moving next to an existing blob creates nothing: it fsyncs the file and its directory.
    fs_driver.put_content("uploads/u2/data", b"blob2")
    synced.clear()
    fs_driver.move("uploads/u2/data", "blobs/sha256/ab/abcd/data2")
    assert synced == [str(root / "uploads/u2/data"), str(root / "blobs/sha256/ab/abcd")]


def test_filesystem_root_is_created(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet" / "there"
    fs = create_driver("filesystem", {"root": str(root)})
    assert root.is_dir()
    fs.put_content("x", b"1")
    assert (root / "x").read_bytes() == b"1"


def test_create_driver_unknown_name() -> None:
    with pytest.raises(ValueError, match="ftp"):
        create_driver("ftp", {})


@pytest.fixture(autouse=True)
def _no_thread_leak() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() == before


# --------------------------------------------------------------------------- s3
# What the contract cannot see: which S3 calls carry the bytes, and how much of them is in
# memory at once. The calls are observed on the driver's own boto3 client.


@pytest.fixture
def s3_driver(s3_params: dict[str, str]) -> S3Driver:
    built = create_driver("s3", s3_params)
    assert isinstance(built, S3Driver)
    return built


@contextlib.contextmanager
def _s3_calls(driver: S3Driver) -> Iterator[list[str]]:
    calls: list[str] = []

    def record(model: Any, **_: Any) -> None:
        calls.append(model.name)

    driver.client.meta.events.register("before-call.s3", record)
    try:
        yield calls
    finally:
        driver.client.meta.events.unregister("before-call.s3", record)


@contextlib.contextmanager
def _peak_memory() -> Iterator[list[int]]:
    peak: list[int] = []
    tracemalloc.start()
    try:
        yield peak
        peak.append(tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()


def test_s3_writer_buffers_at_most_one_part(s3_driver: S3Driver) -> None:
    data = _pattern(23 * MiB, seed=50)
    with (
        _s3_calls(s3_driver) as calls,
        _peak_memory() as peak,
        s3_driver.writer("blobs/parts/data") as writer,
    ):
        _write_chunks(writer, data)
        writer.commit()
    assert calls.count("UploadPart") == 5  # 4 full 5 MiB parts and a 3 MiB last one
    assert calls.count("CompleteMultipartUpload") == 1
    assert "PutObject" not in calls
    assert peak[0] < 2 * S3_PART + MiB, f"writing held {peak[0]} bytes at once"
    assert s3_driver.get_content("blobs/parts/data") == data


def test_s3_append_to_large_object_copies_it_server_side(s3_driver: S3Driver) -> None:
    prefix = _pattern(12 * MiB, seed=51)
    s3_driver.put_content("uploads/u1/data", prefix)
    with (
        _s3_calls(s3_driver) as calls,
        _peak_memory() as peak,
        s3_driver.writer("uploads/u1/data", append=True) as writer,
    ):
        writer.write(b"tail")
        writer.commit()
    # The 12 MiB already stored never travel through Berth.
    assert "UploadPartCopy" in calls
    assert "GetObject" not in calls
    assert peak[0] < MiB
    with s3_driver.reader("uploads/u1/data", 12 * MiB - 2) as stream:
        assert stream.read() == prefix[-2:] + b"tail"


def test_s3_append_to_small_object_uploads_it_again(s3_driver: S3Driver) -> None:
    # Below 5 MiB a part copy is not allowed; the prefix is small enough to read back.
    s3_driver.put_content("uploads/u1/data", b"head-")
    with _s3_calls(s3_driver) as calls, s3_driver.writer("uploads/u1/data", True) as writer:
        writer.write(b"tail")
        writer.commit()
    assert calls == ["HeadObject", "GetObject", "PutObject"]
    assert s3_driver.get_content("uploads/u1/data") == b"head-tail"


def test_s3_empty_append_changes_nothing(s3_driver: S3Driver) -> None:
    s3_driver.put_content("uploads/u1/data", b"kept")
    with _s3_calls(s3_driver) as calls, s3_driver.writer("uploads/u1/data", True) as writer:
        writer.commit()
    assert calls == ["HeadObject"]
    assert s3_driver.get_content("uploads/u1/data") == b"kept"


def test_s3_no_multipart_upload_is_left_open(
    s3_driver: S3Driver, s3_server: S3Server, s3_bucket: str
) -> None:
    big = _pattern(11 * MiB, seed=52)
    writer = s3_driver.writer("uploads/cancelled/data")
    _write_chunks(writer, big, chunk=MiB)
    writer.cancel()
    writer.close()
    writer = s3_driver.writer("uploads/abandoned/data")
    _write_chunks(writer, big, chunk=MiB)
    writer.close()  # never committed
    with s3_driver.writer("uploads/done/data") as writer:
        _write_chunks(writer, big, chunk=MiB)
        writer.commit()
    with pytest.raises(RuntimeError), s3_driver.writer("uploads/failed/data") as writer:
        _write_chunks(writer, big, chunk=MiB)
        raise RuntimeError("client went away")
    open_uploads = [
        key
        for key in s3_server.open_multipart_uploads(s3_bucket)
        if key.startswith(s3_driver.prefix)
    ]
    assert open_uploads == []
    assert s3_driver.list("uploads") == ["uploads/done"]


def test_s3_move_beyond_copy_object_limit_uses_multipart_copy(
    s3_driver: S3Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S3's CopyObject stops at 5 GiB; pretend the limit is 8 MiB so that a 12 MiB object
    # takes the multipart-copy path (two 6 MiB UploadPartCopy ranges).
    monkeypatch.setattr(s3_module, "MAX_COPY", 8 * MiB)
    data = _pattern(12 * MiB, seed=53)
    s3_driver.put_content("uploads/u1/data", data)
    with _s3_calls(s3_driver) as calls:
        s3_driver.move("uploads/u1/data", "blobs/moved/data")
    assert calls.count("UploadPartCopy") == 2
    assert "CopyObject" not in calls
    assert "GetObject" not in calls and "PutObject" not in calls
    assert s3_driver.get_content("blobs/moved/data") == data
    assert not s3_driver.exists("uploads/u1/data")


def test_s3_keys_live_under_the_prefix(
    s3_driver: S3Driver, s3_server: S3Server, s3_bucket: str
) -> None:
    s3_driver.put_content("repo/a", b"1")
    with s3_driver.writer("repo/b") as writer:
        writer.write(b"2")
        writer.commit()
    assert s3_driver.prefix.endswith("/")
    assert sorted(s3_server.keys(s3_bucket, s3_driver.prefix)) == [
        s3_driver.prefix + "repo/a",
        s3_driver.prefix + "repo/b",
    ]
    assert s3_driver.list("") == ["repo"]  # the key outside the prefix is not seen


def test_s3_redirect_url_is_a_presigned_get(s3_params: dict[str, str]) -> None:
    driver = create_driver("s3", {**s3_params, "redirect": "true"})
    data = _pattern(3 * MiB, seed=54)
    driver.put_content("blobs/r/data", data)
    url = driver.redirect_url("blobs/r/data", "GET")
    assert url is not None
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=1200" in url
    got = requests.get(url, timeout=30)  # no credentials: the signature is the permission
    assert got.status_code == 200
    assert got.content == data
    assert driver.redirect_url("blobs/r/data", "PUT") is None


def test_s3_settings_build_the_driver(s3_server: S3Server, s3_bucket: str) -> None:
    env = {
        **s3_server.server_env(s3_bucket, prefix="/reg-1/", redirect="on", part_size="16m"),
        "BERTH_DATABASE_URL": "sqlite:///unused.db",
    }
    settings = load_settings(environ=env)
    built = storage_driver(settings)
    assert isinstance(built, S3Driver)
    assert (built.bucket, built.prefix, built.redirect, built.part_size) == (
        s3_bucket,
        "reg-1/",
        True,
        16 * MiB,
    )
    built.put_content("x", b"1")
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="reg-1/x")["Body"].read() == b"1"
    built.delete("x")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BERTH_STORAGE_DRIVER": "s3"}, "s3_bucket"),
        (
            {"BERTH_STORAGE_DRIVER": "s3", "BERTH_S3_BUCKET": "b", "BERTH_S3_PART_SIZE": "4m"},
            "5 MiB",
        ),
        ({"BERTH_STORAGE_DRIVER": "gcs"}, "filesystem, inmemory, s3"),
    ],
)
def test_s3_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=env)


def test_s3_second_of_two_appends_from_the_same_object_fails(s3_driver: S3Driver) -> None:
    # Two PATCHes of one upload at once (a client bug, or two nodes): the object must end up
    # as one of them, and the loser must hear so, or the upload's recorded size and hash
    # would describe bytes that are not stored.
    path = "uploads/u1/data"
    s3_driver.put_content(path, b"base-")
    first = s3_driver.writer(path, append=True)
    second = s3_driver.writer(path, append=True)
    first.write(b"AAAA")
    second.write(b"BBBB")
    first.commit()
    with pytest.raises(StorageError, match="changed while appending"):
        second.commit()
    second.cancel()
    for writer in (first, second):
        writer.close()
    assert s3_driver.get_content(path) == b"base-AAAA"
