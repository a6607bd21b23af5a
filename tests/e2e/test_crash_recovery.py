"""`kill -9` of a real `berth serve` (master and workers) in the middle of large streamed
PATCHes, on the filesystem driver: after a restart no partial blob is visible, an upload
session resumes exactly where the database says it stood (the bytes on disk past that are
cut off), a new push of the same blob succeeds, and the purge removes what the crash
orphaned.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import requests

from app.config import load_settings
from app.context import Registry
from app.registry import uploads
from tests.e2e.conftest import BerthServer, StartServer

MiB = 1024 * 1024
HTTP_TIMEOUT = 60
OCTET = {"Content-Type": "application/octet-stream"}


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _StalledPatch:
    """A PATCH whose body streams `data` in 256 KiB pieces up to `stall_at` bytes, then
    waits (the client is slow) until `release` is set; runs in a thread."""

    def __init__(self, url: str, data: bytes, stall_at: int) -> None:
        self.release = threading.Event()
        self.outcome: requests.Response | BaseException | None = None
        self._data, self._stall_at = data, stall_at
        self._thread = threading.Thread(target=self._run, args=(url,))
        self._thread.start()

    def _body(self) -> Iterator[bytes]:
        for offset in range(0, len(self._data), 256 * 1024):
            if offset >= self._stall_at:
                self.release.wait(timeout=60)
                return  # the server is gone by now: nothing more to send
            yield self._data[offset : offset + 256 * 1024]

    def _run(self, url: str) -> None:
        try:
            self.outcome = requests.patch(url, data=self._body(), headers=OCTET, timeout=30)
        except BaseException as exc:  # reported by finish()
            self.outcome = exc

    def finish(self) -> requests.Response | BaseException | None:
        self.release.set()
        self._thread.join(timeout=60)
        assert not self._thread.is_alive()
        return self.outcome


def _start(server: BerthServer, repo: str) -> tuple[str, str]:
    response = requests.post(f"{server.url}/v2/{repo}/blobs/uploads/", timeout=HTTP_TIMEOUT)
    assert response.status_code == 202, response.text
    return response.headers["Location"], response.headers["Docker-Upload-UUID"]


def _wait_for_size(path: Path, size: int, timeout: float = 30.0) -> int:
    """Until the server has written at least `size` bytes of the upload to disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size >= size:
            return path.stat().st_size
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {size} bytes")


def _purge(database_url: str, storage: Path, max_age: int) -> int:
    settings = load_settings(
        environ={}, overrides={"database_url": database_url, "storage_root": str(storage)}
    )
    reg = Registry.from_settings(settings)
    try:
        return uploads.purge_stale(reg, max_age=max_age)
    finally:
        reg.close()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_kill_9_mid_upload_leaves_no_partial_blob(
    berth_server_factory: StartServer, tmp_path: Path
) -> None:
    server = berth_server_factory(name="crashing")
    storage = server.storage_root
    blob = random.Random(7).randbytes(24 * MiB)
    digest = _digest(blob)
    first = 4 * MiB

    # Session "resumed": its first chunk is accepted, the second dies mid-stream.
    resumed_loc, resumed_id = _start(server, "crash/resumed")
    accepted = requests.patch(
        server.url + resumed_loc,
        data=blob[:first],
        headers={**OCTET, "Content-Range": f"0-{first - 1}"},
        timeout=HTTP_TIMEOUT,
    )
    assert accepted.status_code == 202, accepted.text
    resumed_loc = accepted.headers["Location"]
    # Session "abandoned": the whole blob in one streamed PATCH, as docker sends it.
    abandoned_loc, abandoned_id = _start(server, "crash/pushed")

    stalled = [
        _StalledPatch(server.url + resumed_loc, blob[first:], stall_at=10 * MiB),
        _StalledPatch(server.url + abandoned_loc, blob, stall_at=12 * MiB),
    ]
    _wait_for_size(storage / "uploads" / resumed_id / "data", first + 8 * MiB)
    _wait_for_size(storage / "uploads" / abandoned_id / "data", 10 * MiB)
    os.killpg(server.process.pid, signal.SIGKILL)  # master and every worker, no clean-up
    server.process.wait(timeout=10)
    for patch in stalled:
        outcome = patch.finish()
        assert isinstance(outcome, requests.ConnectionError), outcome

    # On disk: the partial bytes the server never acknowledged, and no blob.
    assert (storage / "uploads" / resumed_id / "data").stat().st_size > first
    assert (storage / "uploads" / abandoned_id / "data").stat().st_size >= 10 * MiB
    assert not (storage / "blobs").exists() or _files(storage / "blobs") == []

    again = berth_server_factory(
        database_url=server.database_url, storage_root=storage, name="restarted"
    )
    for repo in ("crash/resumed", "crash/pushed"):
        head = requests.head(f"{again.url}/v2/{repo}/blobs/{digest}", timeout=HTTP_TIMEOUT)
        assert head.status_code == 404, repo
    status = requests.get(again.url + resumed_loc, timeout=HTTP_TIMEOUT)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{first - 1}"  # what the database accepted

    # The next push of the same blob succeeds (a fresh session, streamed).
    location, _ = _start(again, "crash/pushed")
    patched = requests.patch(
        again.url + location,
        data=(blob[i : i + MiB] for i in range(0, len(blob), MiB)),
        headers=OCTET,
        timeout=HTTP_TIMEOUT,
    )
    assert patched.status_code == 202, patched.text
    done = requests.put(
        f"{again.url}{patched.headers['Location']}?digest={digest}", timeout=HTTP_TIMEOUT
    )
    assert done.status_code == 201, done.text
    pulled = requests.get(f"{again.url}/v2/crash/pushed/blobs/{digest}", timeout=HTTP_TIMEOUT)
    assert pulled.status_code == 200
    assert pulled.content == blob

    # The interrupted session resumes at the accepted size once the killed writer's lease
    # has lapsed (416 "busy" until then); the leftover bytes are cut off, else the digest
    # of the stored upload would not match.
    deadline = time.monotonic() + uploads.LEASE.total_seconds() + 10
    while True:
        rest = requests.patch(
            again.url + resumed_loc,
            data=blob[first:],
            headers={**OCTET, "Content-Range": f"{first}-{len(blob) - 1}"},
            timeout=HTTP_TIMEOUT,
        )
        if rest.status_code != 416 or time.monotonic() > deadline:
            break
        assert rest.headers["Range"] == f"0-{first - 1}"
        time.sleep(1)
    assert rest.status_code == 202, rest.text
    done = requests.put(f"{again.url}{rest.headers['Location']}?digest={digest}", timeout=60)
    assert done.status_code == 201, done.text
    assert requests.head(f"{again.url}/v2/crash/resumed/blobs/{digest}", timeout=60).ok

    # What the crash orphaned: the abandoned session's bytes (its row is still there), and
    # an upload directory without a row (a crash between creating the file and the row).
    orphan = storage / "uploads" / str(uuid.uuid4()) / "data"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half a chunk")
    hour_ago = time.time() - 3600
    os.utime(orphan, (hour_ago, hour_ago))
    assert (storage / "uploads" / abandoned_id / "data").exists()

    # The purge that every worker runs now and then; here by hand, once with an age limit
    # that spares the abandoned session (younger than ten minutes), once with none.
    assert _purge(server.database_url, storage, max_age=600) == 1  # the directory without a row
    assert not orphan.parent.exists()
    assert (storage / "uploads" / abandoned_id / "data").exists()
    purged = _purge(server.database_url, storage, max_age=0)
    assert purged == 1
    assert _files(storage / "uploads") == []
    gone = requests.get(again.url + abandoned_loc, timeout=HTTP_TIMEOUT)
    assert gone.status_code == 404
    # Only the one blob is stored, whole.
    assert _files(storage / "blobs") == [f"sha256/{digest[7:9]}/{digest[7:]}/data"]
    assert (storage / "blobs" / "sha256" / digest[7:9] / digest[7:] / "data").read_bytes() == blob
