"""Storage driver figures: streamed write, read, a small append to a large object, and a move,
with the peak Python memory of each step.

    .venv/bin/python bench/storage_bench.py --driver filesystem --size 256
    .venv/bin/python bench/storage_bench.py --driver s3 --size 256        # starts moto
    .venv/bin/python bench/storage_bench.py --driver s3 --endpoint http://minio:9000 \\
        --bucket bench --access-key ... --secret-key ...

Against moto the S3 numbers measure moto (a Python server) more than the driver; the memory
figures and the relative cost of append/move (server-side copies) are what carry over.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.storage import StorageDriver, create_driver

MiB = 1024 * 1024
CHUNK = MiB


def _measure(label: str, size: int, step: Callable[[], None]) -> None:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        step()
    finally:
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    rate = f"{size / MiB / elapsed:8.1f} MiB/s" if size else " " * 14
    print(f"{label:<34} {elapsed:7.2f} s {rate}   peak {peak / MiB:6.1f} MiB")


def run(driver: StorageDriver, size_mib: int) -> None:
    block = os.urandom(CHUNK)
    size = size_mib * MiB

    def write() -> None:
        with driver.writer("bench/upload/data") as writer:
            for _ in range(size_mib):
                writer.write(block)
            writer.commit()

    def read() -> None:
        with driver.reader("bench/upload/data") as stream:
            while stream.read(CHUNK):
                pass

    def append() -> None:
        with driver.writer("bench/upload/data", append=True) as writer:
            writer.write(b"x" * 1024)
            writer.commit()

    def move() -> None:
        driver.move("bench/upload/data", "bench/blob/data")

    print(f"driver {driver.name}, object {size_mib} MiB, written in {CHUNK // MiB} MiB chunks")
    _measure("write (streamed)", size, write)
    _measure("read (streamed)", size, read)
    _measure("append 1 KiB to it", 0, append)
    _measure("move (the upload becomes a blob)", 0, move)
    driver.delete("bench")


@contextlib.contextmanager
def _driver(args: argparse.Namespace) -> Iterator[StorageDriver]:
    if args.driver == "filesystem":
        with tempfile.TemporaryDirectory(dir=args.root) as root:
            yield create_driver("filesystem", {"root": root})
        return
    if args.driver == "inmemory":
        yield create_driver("inmemory", {})
        return
    params = {"part_size": str(args.part_size * MiB), "prefix": "bench"}
    if args.endpoint:
        params.update(
            bucket=args.bucket,
            endpoint_url=args.endpoint,
            access_key=args.access_key,
            secret_key=args.secret_key,
        )
        yield create_driver("s3", params)
        return
    from tests.s3server import running_s3_server

    with tempfile.TemporaryDirectory() as workdir, running_s3_server(Path(workdir)) as server:
        yield create_driver("s3", {**server.driver_params(server.new_bucket()), **params})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--driver", choices=["filesystem", "inmemory", "s3"], default="s3")
    parser.add_argument("--size", type=int, default=128, help="object size in MiB")
    parser.add_argument("--root", default=None, help="filesystem: parent of the temp root")
    parser.add_argument("--part-size", type=int, default=8, help="s3: part size in MiB")
    parser.add_argument("--endpoint", default="", help="s3: an existing store (else moto)")
    parser.add_argument("--bucket", default="")
    parser.add_argument("--access-key", default="")
    parser.add_argument("--secret-key", default="")
    args = parser.parse_args()
    with _driver(args) as driver:
        run(driver, args.size)


if __name__ == "__main__":
    main()
