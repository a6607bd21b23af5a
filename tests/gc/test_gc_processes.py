"""gc as a separate process: racing pushes to a real `berth serve`, and killed midway.

The race runs on PostgreSQL (several gunicorn workers, one gc process, real transactions
interleaving); the kill test runs on both databases.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, func, select

from app.db.models import Blob
from app.db.session import engine_url
from tests.e2e.conftest import BERTH, BerthServer, StartServer
from tests.gc.support import age_everything, problems, stored_digests
from tests.helpers import RegistryClient

OCTET = {"Content-Type": "application/octet-stream"}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
RACE_SECONDS = 20.0
_SUMMARY = re.compile(r"deleted (\d+) manifests, (\d+) blob links, (\d+) blobs")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _gc_env(database_url: str, storage_root: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "BERTH_DATABASE_URL": database_url,
        "BERTH_STORAGE_ROOT": str(storage_root),
    }
    env.pop("BERTH_CONFIG", None)
    return env


def _run_gc(env: dict[str, str], *args: str) -> tuple[int, int, int]:
    result = subprocess.run(
        [str(BERTH), "gc", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    match = _SUMMARY.search(result.stdout)
    assert match, result.stdout
    return int(match[1]), int(match[2]), int(match[3])


class Pusher(threading.Thread):
    """Pushes images (some multi-arch, some mounted across repositories) as fast as it can,
    moving tags so that older manifests become garbage. A manifest PUT may lose the race
    with gc (400 MANIFEST_BLOB_UNKNOWN: a blob it names was collected meanwhile, which
    grace 0 allows); any other failure is an error."""

    def __init__(self, server: BerthServer, repo: str, seed: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.repo, self.stop = server.url, repo, stop
        self.rng = random.Random(seed)
        self.pool = [random.Random(i).randbytes(4096) for i in range(4)]  # shared by all
        self.http = requests.Session()
        self.pushed = self.lost = 0
        self.errors: list[str] = []

    def blob(self, repo: str, data: bytes) -> None:
        digest = _digest(data)
        if self.http.head(f"{self.url}/v2/{repo}/blobs/{digest}", timeout=30).status_code == 200:
            return  # as docker does: what the registry has is not pushed again
        if self.rng.random() < 0.3 and repo != self.repo:
            mount = self.http.post(
                f"{self.url}/v2/{repo}/blobs/uploads/?mount={digest}&from={self.repo}", timeout=30
            )
            if mount.status_code == 201:
                return
            self.expect(mount, 202, "mount")
            self.http.delete(self.url + mount.headers["Location"], timeout=30)
        response = self.http.post(
            f"{self.url}/v2/{repo}/blobs/uploads/?digest={digest}", data=data, headers=OCTET,
            timeout=30,
        )  # fmt: skip
        self.expect(response, 201, f"blob {digest}")

    def expect(self, response: requests.Response, status: int, what: str) -> None:
        if response.status_code != status:
            self.errors.append(f"{what}: {response.status_code} {response.text[:300]}")

    def manifest(self, repo: str, reference: str, doc: dict[str, object]) -> str | None:
        body = json.dumps(doc).encode()
        response = self.http.put(
            f"{self.url}/v2/{repo}/manifests/{reference}", data=body,
            headers={"Content-Type": str(doc["mediaType"])}, timeout=30,
        )  # fmt: skip
        if response.status_code == 201:
            self.pushed += 1
            return _digest(body)
        codes = {e["code"] for e in response.json().get("errors", [])} if response.content else {}
        if response.status_code == 400 and codes == {"MANIFEST_BLOB_UNKNOWN"}:
            self.lost += 1
        else:
            self.errors.append(f"manifest {reference}: {response.status_code} {response.text}")
        return None

    def image(self, repo: str, reference: str | None, n: int) -> tuple[str | None, int]:
        config = json.dumps({"os": "linux", "n": n, "r": self.rng.random()}).encode()
        layers = [self.pool[n % 4], self.pool[(n + 1) % 4], self.rng.randbytes(1024)]
        for data in (config, *layers):
            self.blob(repo, data)
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": _digest(config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": _digest(d), "size": len(d)} for d in layers],
        }  # fmt: skip
        body = json.dumps(doc).encode()
        return self.manifest(repo, reference or _digest(body), doc), len(body)

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                if n % 4 == 0:  # multi-arch: children by digest, then the tagged index
                    children = [self.image(self.repo, None, n + k) for k in range(2)]
                    if all(digest for digest, _size in children):
                        self.manifest(self.repo, "multi", {
                            "schemaVersion": 2,
                            "mediaType": OCI_INDEX,
                            "manifests": [{"mediaType": OCI_MANIFEST, "digest": d, "size": s}
                                          for d, s in children],
                        })  # fmt: skip
                else:
                    repo = self.repo + ("-copy" if n % 5 == 0 else "")
                    self.image(repo, f"t{n % 3}", n)
        except Exception as exc:
            self.errors.append(f"pusher crashed: {exc!r}")


def _check_pulls(url: str, repos: list[str]) -> int:
    """Pull every tag of every repository down to the last byte; returns how many."""
    pulled = 0
    for repo in repos:
        tags = requests.get(f"{url}/v2/{repo}/tags/list", timeout=30).json().get("tags") or []
        for tag in tags:
            accept = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}
            response = requests.get(f"{url}/v2/{repo}/manifests/{tag}", headers=accept, timeout=30)
            assert response.status_code == 200, (repo, tag, response.text)
            doc = response.json()
            for child in doc.get("manifests", []):
                got = requests.get(f"{url}/v2/{repo}/manifests/{child['digest']}", timeout=30)
                assert got.status_code == 200, (repo, tag, child)
            for blob in [doc["config"], *doc["layers"]] if "layers" in doc else []:
                got = requests.get(f"{url}/v2/{repo}/blobs/{blob['digest']}", timeout=30)
                assert got.status_code == 200 and _digest(got.content) == blob["digest"], blob
            pulled += 1
    return pulled


@pytest.mark.postgres
def test_pushes_racing_gc_never_leave_a_manifest_pointing_at_a_deleted_blob(
    pg_database: str, berth_server_factory: StartServer, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    server = berth_server_factory(database_url=pg_database, storage_root=storage)
    stop = threading.Event()
    pushers = [Pusher(server, f"race/app{i}", seed=i, stop=stop) for i in range(2)]
    for pusher in pushers:
        pusher.start()
    env = _gc_env(pg_database, storage)
    runs, deleted = 0, [0, 0, 0]
    deadline = time.monotonic() + RACE_SECONDS
    try:
        while time.monotonic() < deadline:
            counts = _run_gc(env, "--delete-untagged", "--grace", "0")
            deleted = [a + b for a, b in zip(deleted, counts, strict=True)]
            runs += 1
    finally:
        stop.set()
        for pusher in pushers:
            pusher.join(timeout=60)
    errors = [e for p in pushers for e in p.errors]
    assert errors == [], server.log_tail()
    assert problems(pg_database, storage) == []
    _run_gc(env, "--delete-untagged", "--grace", "0")  # once more, with nothing racing
    assert problems(pg_database, storage) == []
    repos = [name for p in pushers for name in (p.repo, p.repo + "-copy")]
    pulled = _check_pulls(server.url, repos)
    # The race really happened: many pushes, several gc runs, each deleting things.
    pushed = sum(p.pushed for p in pushers)
    print(f"gc runs {runs}, deleted {deleted}, manifests pushed {pushed}, lost races "
          f"{sum(p.lost for p in pushers)}, tags pulled {pulled}")  # fmt: skip
    assert runs >= 3 and pushed >= 20 and pulled >= 4
    assert deleted[0] > 0 and deleted[2] > 0


def _blob_rows(database_url: str) -> int:
    engine = create_engine(engine_url(database_url))
    try:
        with engine.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Blob)) or 0)
    finally:
        engine.dispose()


def test_killed_gc_resumes_and_finishes(
    registry: RegistryClient, database_url: str, storage_root: Path
) -> None:
    from datetime import timedelta

    kept = [registry.push_image("team/app", f"v{i}") for i in range(3)]
    for _ in range(40):
        registry.push_blob("team/app", os.urandom(256))  # garbage
    age_everything(database_url, storage_root, timedelta(hours=2))
    total = _blob_rows(database_url)
    env = _gc_env(database_url, storage_root)
    process = subprocess.Popen(
        [str(BERTH), "gc", "--grace", "1h", "--batch-size", "5", "--throttle", "0.3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        # Kill it right after a batch of rows is gone but before their bytes are: the
        # worst moment, which leaves files that no row describes.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = _blob_rows(database_url)
            if rows <= total - 10 and len(stored_digests(storage_root)) > rows:
                break
            assert process.poll() is None, process.communicate()
            time.sleep(0.02)
        else:
            pytest.fail("gc never got going")
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    rows = _blob_rows(database_url)
    assert rows < total and len(stored_digests(storage_root)) > rows  # midway, files left over
    assert problems(database_url, storage_root) == []  # but every row still has its bytes

    _run_gc(env, "--grace", "1h")

    wanted = {_digest(b) for image in kept for b in [image.config, *image.layers]}
    assert stored_digests(storage_root) == wanted
    assert _blob_rows(database_url) == len(wanted)
    assert problems(database_url, storage_root) == []
    for image in kept:
        for blob in [image.config, *image.layers]:
            response = registry.http.get(f"/v2/team/app/blobs/{_digest(blob)}")
            assert response.status_code == 200 and response.data == blob
