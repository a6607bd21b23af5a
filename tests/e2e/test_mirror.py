"""The pull-through cache end to end: real upstreams started here on free ports -- Debian's
reference registry (`docker-registry`) with htpasswd auth, and a second Berth in token mode --
and skopeo pulling through `berth serve` (gunicorn, 2 workers), byte for byte against what
was pushed upstream. Upstream GETs are counted in the reference registry's own access log.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.e2e.clients import ClientError, Podman, require_tool, skopeo_copy
from tests.e2e.conftest import BERTH, BerthServer, StartServer
from tests.e2e.ocilayout import OciImage, build_oci_layout, layout_differences, read_layout
from tests.e2e.reference import PASSWORD, USER, Reference

PREFIX = "ref.test"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def _mirror_env(*entries: dict[str, object]) -> dict[str, str]:
    return {"BERTH_MIRROR_UPSTREAMS": json.dumps(list(entries))}


def _entry(url: str, **extra: object) -> dict[str, object]:
    return {"prefix": PREFIX, "url": url, "username": USER, "password": PASSWORD, **extra}


def _push(layout_ref: str, dest: str, creds: tuple[str, str] = (USER, PASSWORD)) -> None:
    skopeo_copy(layout_ref, dest, dest_creds=creds)


def _pull(berth: BerthServer, name: str, dest: Path, *extra: str) -> None:
    skopeo_copy(f"docker://{berth.host}/{name}", f"oci:{dest}", extra_args=extra)


def _push_index(reference: Reference, tmp_path: Path) -> tuple[OciImage, OciImage, bytes]:
    """A multi-arch index upstream: two images, then an index naming both, pushed by hand."""
    amd = build_oci_layout(tmp_path / "amd", tag="amd", layers=1, seed=1)
    arm = build_oci_layout(tmp_path / "arm", tag="arm", layers=1, seed=2)
    for child in (amd, arm):
        _push(child.ref, f"docker://{reference.host}/team/multi:{child.tag}")
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": child.manifest_media_type,
                    "digest": child.manifest_digest,
                    "size": child.manifest_size,
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for child, arch in ((amd, "amd64"), (arm, "arm64"))
            ],
        }
    ).encode()
    put = requests.put(
        f"{reference.url}/v2/team/multi/manifests/latest",
        data=index,
        headers={"Content-Type": OCI_INDEX},
        auth=(USER, PASSWORD),
        timeout=30,
    )
    assert put.status_code == 201, put.text
    return amd, arm, index


def test_pull_by_tag_digest_and_index_byte_for_byte(
    reference: Reference, berth_server_factory: StartServer, tmp_path: Path
) -> None:
    image = build_oci_layout(tmp_path / "src", tag="v1", layers=2, seed=16)
    _push(image.ref, f"docker://{reference.host}/team/app:v1")
    berth = berth_server_factory(env=_mirror_env(_entry(reference.url)))

    _pull(berth, f"{PREFIX}/team/app:v1", tmp_path / "by-tag", "--preserve-digests")
    assert layout_differences(image, read_layout(tmp_path / "by-tag")) == []
    _pull(berth, f"{PREFIX}/team/app@{image.manifest_digest}", tmp_path / "by-digest")
    assert layout_differences(image, read_layout(tmp_path / "by-digest")) == []
    # Each blob came from the upstream once: the second pull was the cache's.
    assert all(reference.blob_gets(d) == 1 for d in image.blob_digests())

    amd, arm, index = _push_index(reference, tmp_path)
    _pull(berth, f"{PREFIX}/team/multi:latest", tmp_path / "all", "--all", "--preserve-digests")
    copied = json.loads((tmp_path / "all" / "index.json").read_text())["manifests"][0]
    assert copied["digest"] == "sha256:" + hashlib.sha256(index).hexdigest()
    for child in (amd, arm):
        for digest in child.all_digests():
            got = tmp_path / "all" / "blobs" / "sha256" / digest.split(":")[1]
            assert got.read_bytes() == child.read_blob(digest), digest


def test_podman_pulls_by_tag_digest_and_from_an_index(
    reference: Reference, berth_server_factory: StartServer, tmp_path: Path
) -> None:
    require_tool("podman")
    image = build_oci_layout(tmp_path / "src", tag="v1", layers=2, seed=17)
    _push(image.ref, f"docker://{reference.host}/team/app:v1")
    amd, arm, index = _push_index(reference, tmp_path)
    berth = berth_server_factory(env=_mirror_env(_entry(reference.url)))
    # Not under tmp_path: podman refuses a runroot longer than 50 characters.
    workdir = Path(tempfile.mkdtemp(prefix="berth-mirror-"))
    try:
        podman = Podman(workdir, insecure_registries=[berth.host])
        by_tag = podman.pull(f"docker://{berth.host}/{PREFIX}/team/app:v1")
        assert by_tag == image.config_digest.removeprefix("sha256:")
        assert podman.image_digest(by_tag) == image.manifest_digest
        assert podman.inspect(by_tag)["RootFS"]["Layers"] == image.diff_ids
        podman.rmi(by_tag)
        by_digest = podman.pull(f"docker://{berth.host}/{PREFIX}/team/app@{image.manifest_digest}")
        assert by_digest == by_tag
        # Each blob came from the upstream once: the second pull was the cache's.
        assert all(reference.blob_gets(d) == 1 for d in image.blob_digests())

        # The index by tag, then by digest: podman picks the child for the asked platform.
        multi = f"docker://{berth.host}/{PREFIX}/team/multi"
        for child, arch in ((amd, "amd64"), (arm, "arm64")):
            pulled = podman.pull(f"{multi}:latest", extra_args=["--arch", arch])
            assert pulled == child.config_digest.removeprefix("sha256:")
            assert podman.inspect(pulled)["RootFS"]["Layers"] == child.diff_ids
            podman.rmi(pulled)
        index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
        pulled = podman.pull(f"{multi}@{index_digest}", extra_args=["--arch", "arm64"])
        assert pulled == arm.config_digest.removeprefix("sha256:")
        assert all(reference.blob_gets(d) == 1 for d in [*amd.blob_digests(), *arm.blob_digests()])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_push_into_the_mirror_is_denied_and_default_and_ns_route(
    reference: Reference, berth_server_factory: StartServer, tmp_path: Path
) -> None:
    image = build_oci_layout(tmp_path / "src", tag="3", layers=1, seed=3)
    _push(image.ref, f"docker://{reference.host}/library/alpine:3")
    berth = berth_server_factory(env=_mirror_env(_entry(reference.url, default=True)))
    with pytest.raises(ClientError) as refused:
        skopeo_copy(image.ref, f"docker://{berth.host}/{PREFIX}/library/alpine:mine")
    assert "denied" in refused.value.stderr.lower()
    # Docker's daemon (registry-mirrors): no prefix, the default upstream.
    _pull(berth, "library/alpine:3", tmp_path / "docker-style", "--preserve-digests")
    assert layout_differences(image, read_layout(tmp_path / "docker-style")) == []
    # containerd (hosts.toml mirror): ?ns= names the upstream.
    accept = {"Accept": image.manifest_media_type}
    got = requests.get(
        f"{berth.url}/v2/library/alpine/manifests/3?ns={PREFIX}", headers=accept, timeout=30
    )
    assert got.status_code == 200 and got.content == image.manifest_bytes()


def _big_layout(path: Path) -> tuple[str, bytes]:
    """A 32 MiB blob pushed as-is (no tar: single flight cares about bytes only)."""
    data = random.Random(32).randbytes(32 * 1024 * 1024)
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


@pytest.mark.postgres
def test_single_flight_across_workers_and_instances(
    reference: Reference, pg_database: str, berth_server_factory: StartServer, tmp_path: Path
) -> None:
    digest, data = _big_layout(tmp_path)
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    start = session.post(f"{reference.url}/v2/team/big/blobs/uploads/", timeout=30)
    location = start.headers["Location"]
    location = location if location.startswith("http") else reference.url + location
    sep = "&" if "?" in location else "?"
    done = session.put(f"{location}{sep}digest={digest}", data=data, timeout=120)
    assert done.status_code == 201, done.text
    env = _mirror_env(_entry(reference.url))
    storage = tmp_path / "shared-storage"
    a = berth_server_factory(database_url=pg_database, storage_root=storage, env=env, name="a")
    b = berth_server_factory(database_url=pg_database, storage_root=storage, env=env, name="b")

    def pull(i: int) -> str:
        server = (a, b)[i % 2]
        with requests.get(
            f"{server.url}/v2/{PREFIX}/team/big/blobs/{digest}", stream=True, timeout=120
        ) as got:
            assert got.status_code == 200, got.text
            hasher = hashlib.sha256()
            for piece in got.iter_content(1024 * 1024):
                hasher.update(piece)
        return "sha256:" + hasher.hexdigest()

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(pull, range(8))) == [digest] * 8
    assert reference.blob_gets(digest) == 1


def test_upstream_down_then_back(
    reference: Reference, berth_server_factory: StartServer, tmp_path: Path
) -> None:
    cached = build_oci_layout(tmp_path / "cached", tag="v1", layers=1, seed=5)
    never = build_oci_layout(tmp_path / "never", tag="v1", layers=1, seed=6)
    _push(cached.ref, f"docker://{reference.host}/team/cached:v1")
    _push(never.ref, f"docker://{reference.host}/team/never:v1")
    berth = berth_server_factory(env=_mirror_env(_entry(reference.url, ttl="0s")))
    _pull(berth, f"{PREFIX}/team/cached:v1", tmp_path / "first")

    reference.stop()
    _pull(berth, f"{PREFIX}/team/cached:v1", tmp_path / "while-down", "--preserve-digests")
    assert layout_differences(cached, read_layout(tmp_path / "while-down")) == []
    stale = requests.get(f"{berth.url}/v2/{PREFIX}/team/cached/manifests/v1", timeout=30)
    assert stale.status_code == 200 and "stale" in stale.headers["Warning"]
    with pytest.raises(ClientError):
        _pull(berth, f"{PREFIX}/team/never:v1", tmp_path / "never-pulled")
    missing = requests.get(f"{berth.url}/v2/{PREFIX}/team/never/manifests/v1", timeout=30)
    assert missing.status_code == 503
    assert PREFIX in missing.json()["errors"][0]["message"]
    assert requests.get(f"{berth.url}/readyz", timeout=10).status_code == 200
    assert "Traceback" not in berth.log()

    reference.start()  # back on the same port
    _pull(berth, f"{PREFIX}/team/never:v1", tmp_path / "after", "--preserve-digests")
    assert layout_differences(never, read_layout(tmp_path / "after")) == []


class _Corrupting(BaseHTTPRequestHandler):
    """A proxy to the reference that flips a byte of every blob it passes while `on`."""

    upstream = ""
    on = threading.Event()

    def do_GET(self) -> None:
        self._relay("GET")

    def do_HEAD(self) -> None:
        self._relay("HEAD")

    def _relay(self, method: str) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host",)}
        got = requests.request(
            method, self.upstream + self.path, headers=headers, timeout=30, allow_redirects=False
        )
        body = got.content
        if self.on.is_set() and "/blobs/sha256:" in self.path and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        self.send_response(got.status_code)
        for key, value in got.headers.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        self.send_header("Content-Length", got.headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if method == "GET":
            self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


def test_a_corrupting_upstream_stores_nothing(
    reference: Reference, berth_server_factory: StartServer, tmp_path: Path
) -> None:
    image = build_oci_layout(tmp_path / "src", tag="v1", layers=1, seed=7)
    _push(image.ref, f"docker://{reference.host}/team/app:v1")
    _Corrupting.upstream = reference.url
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Corrupting)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{proxy.server_port}"
        berth = berth_server_factory(env=_mirror_env(_entry(url)))
        _Corrupting.on.set()
        with pytest.raises(ClientError):
            _pull(berth, f"{PREFIX}/team/app:v1", tmp_path / "bad")
        stored = {p.parent.name for p in berth.storage_root.glob("blobs/sha256/*/*/data")}
        assert not stored & {d.split(":")[1] for d in image.blob_digests()}
        assert not list(berth.storage_root.glob("uploads/*/data"))
        _Corrupting.on.clear()
        _pull(berth, f"{PREFIX}/team/app:v1", tmp_path / "good", "--preserve-digests")
        assert layout_differences(image, read_layout(tmp_path / "good")) == []
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_a_berth_in_token_mode_as_upstream(
    berth_server_factory: StartServer, tmp_path: Path
) -> None:
    require_tool("skopeo")
    rules = [{"repository": "*", "users": [USER], "actions": ["pull", "push"]}]
    env = {"BERTH_AUTH": "token", "BERTH_AUTH_RULES": json.dumps(rules)}
    upstream = berth_server_factory(env=env, name="token-upstream")
    subprocess.run(
        [str(BERTH), "user", "add", USER, "--password-stdin", "--cost", "4"],
        input=PASSWORD + "\n",
        text=True,
        check=True,
        capture_output=True,
        env={
            **{k: v for k, v in __import__("os").environ.items() if k != "BERTH_CONFIG"},
            "BERTH_DATABASE_URL": upstream.database_url,
        },
    )
    image = build_oci_layout(tmp_path / "src", tag="v1", layers=2, seed=8)
    _push(image.ref, f"docker://{upstream.host}/team/app:v1")
    berth = berth_server_factory(env=_mirror_env(_entry(upstream.url)), name="mirror")
    _pull(berth, f"{PREFIX}/team/app:v1", tmp_path / "pulled", "--preserve-digests")
    assert layout_differences(image, read_layout(tmp_path / "pulled")) == []
