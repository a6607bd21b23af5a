"""Several Berth nodes behind one nginx upstream, sharing one PostgreSQL database and one
S3-compatible bucket (a local moto server): the way from one box to many.

nginx round-robins every request, so an upload begun on one node is continued and finished
on others, and a pull reads from nodes that never saw the push. Each node's gunicorn access
log shows that every node really took part. A second test runs one node with S3 redirects on:
blob GETs become 307s to presigned URLs and skopeo follows them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from tests.e2e.clients import ClientSandbox, require_tool, skopeo_copy
from tests.e2e.conftest import BerthServer, StartServer
from tests.e2e.ocilayout import build_oci_layout, layout_differences, read_layout
from tests.s3server import S3Server

NODES = 3
MiB = 1024 * 1024
HTTP_TIMEOUT = 60
# gunicorn's default access log line: ... "METHOD /path HTTP/1.1" STATUS ...
_ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>/\S*) HTTP/1\.[01]" (?P<status>\d{3}) ')
_UPLOAD_ID = re.compile(r"/blobs/uploads/(?P<id>[0-9a-f-]{36})")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Nginx:
    host: str  # 127.0.0.1:PORT
    url: str
    workdir: Path
    process: subprocess.Popen[bytes]

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


_NGINX_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    # One upstream, several Berth nodes, plain round robin: consecutive requests of one
    # upload go to different nodes.
    upstream berth {{
{servers}
    }}

    server {{
        listen {host};
        # Layers of any size, streamed to the node as they arrive (no spooling to disk).
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;

        location / {{
            proxy_pass http://berth;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""


@contextlib.contextmanager
def running_nginx(workdir: Path, upstreams: list[str]) -> Iterator[Nginx]:
    """Our own nginx master on a free port (never the system's), stopped on exit."""
    nginx = _nginx_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        _NGINX_CONF.format(
            # As root, workers would otherwise run as nobody, who cannot enter pytest's tmp.
            user="user root;" if os.geteuid() == 0 else "",
            dir=workdir,
            host=f"127.0.0.1:{port}",
            servers="\n".join(f"        server {upstream};" for upstream in upstreams),
        )
    )
    process = subprocess.Popen(
        [nginx, "-p", str(workdir), "-c", str(conf), "-e", str(workdir / "error.log")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "stderr.log").open("wb"),
        start_new_session=True,
    )
    server = Nginx(f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", workdir, process)
    try:
        _wait_nginx(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _nginx_binary() -> str:
    # Debian installs nginx in /usr/sbin, which a non-root PATH may lack.
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        return "/usr/sbin/nginx"
    return require_tool("nginx")


def _wait_nginx(server: Nginx, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            stderr = (server.workdir / "stderr.log").read_text(errors="replace")
            pytest.fail(f"nginx exited: {stderr}\n{server.error_log()}", pytrace=False)
        try:
            if requests.get(f"{server.url}/v2/", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    pytest.fail(f"nginx did not answer in {timeout}s\n{server.error_log()}", pytrace=False)


def _requests_by_node(nodes: list[BerthServer]) -> dict[str, list[tuple[str, str, str]]]:
    """(method, path, status) of every /v2 request each node logged, readiness probes aside."""
    seen: dict[str, list[tuple[str, str, str]]] = {}
    for node in nodes:
        lines = [m.group("method", "path", "status") for m in _ACCESS.finditer(node.log())]
        seen[node.host] = [line for line in lines if line[1] != "/v2/"]
    return seen


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob_key(prefix: str, digest: str) -> str:
    hexpart = digest.split(":", 1)[1]
    return f"{prefix}/blobs/sha256/{hexpart[:2]}/{hexpart}/data"


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return s3_server.new_bucket()


@pytest.mark.postgres
def test_nodes_behind_nginx_share_database_and_bucket(
    pg_database: str,
    berth_server_factory: StartServer,
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
) -> None:
    require_tool("skopeo")
    # 5 MiB parts (S3's minimum): the 6 MiB layers go up as multipart uploads.
    env = s3_server.server_env(bucket, prefix="cluster", part_size="5m")
    # One after the other: the first migrates the database, the others find it migrated.
    nodes = [
        berth_server_factory(database_url=pg_database, env=env, name=f"node{i}")
        for i in range(NODES)
    ]
    with running_nginx(tmp_path / "nginx", [node.host for node in nodes]) as nginx:
        # A chunked upload by hand: POST, three PATCHes and the PUT are five requests in a
        # row, so round robin spreads this one upload over every node.
        chunks = [random.Random(n).randbytes(mib * MiB) for n, mib in enumerate([6, 2, 5])]
        data = b"".join(chunks)
        started = requests.post(f"{nginx.url}/v2/cluster/manual/blobs/uploads/", timeout=60)
        assert started.status_code == 202, started.text
        location, offset = started.headers["Location"], 0
        for chunk in chunks:
            response = requests.patch(
                nginx.url + location,
                data=chunk,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                },
                timeout=HTTP_TIMEOUT,
            )
            assert response.status_code == 202, response.text
            offset += len(chunk)
            location = response.headers["Location"]
        upload_id = _UPLOAD_ID.search(location).group("id")  # type: ignore[union-attr]
        done = requests.put(f"{nginx.url}{location}?digest={_digest(data)}", timeout=HTTP_TIMEOUT)
        assert done.status_code == 201, done.text

        # skopeo pushes a multi-layer image through nginx and pulls it back.
        sandbox = ClientSandbox(tmp_path / "clients", insecure_registries=[nginx.host])
        image = build_oci_layout(tmp_path / "src", tag="v1", layers=3, layer_size=6 * MiB, seed=61)
        pushed = skopeo_copy(image.ref, f"docker://{nginx.host}/cluster/app:v1", sandbox=sandbox)
        assert pushed == image.manifest_digest
        back = tmp_path / "back"
        skopeo_copy(f"docker://{nginx.host}/cluster/app:v1", f"oci:{back}:v1", sandbox=sandbox)
        assert layout_differences(image, read_layout(back, "v1")) == []

        # What nginx spread over the nodes, before the checks below ask each node directly.
        seen = _requests_by_node(nodes)

        # Every node serves everything, whichever node stored it.
        for node in nodes:
            for digest in [*image.blob_digests(), _digest(data)]:
                repo = "cluster/manual" if digest == _digest(data) else "cluster/app"
                got = requests.get(f"{node.url}/v2/{repo}/blobs/{digest}", timeout=HTTP_TIMEOUT)
                assert got.status_code == 200, (node.host, digest)
                assert _digest(got.content) == digest, node.host
            tags = requests.get(f"{node.url}/v2/cluster/app/tags/list", timeout=HTTP_TIMEOUT)
            assert tags.json()["tags"] == ["v1"], node.host

    manual_nodes = {
        host for host, lines in seen.items() if any(upload_id in path for _, path, _ in lines)
    }
    assert manual_nodes == {node.host for node in nodes}, seen
    for host, lines in seen.items():
        methods = {method for method, path, _ in lines if path.startswith("/v2/cluster/app/")}
        # skopeo's push and its pull both reached every node.
        assert methods & {"POST", "PATCH", "PUT"} and "GET" in methods, (host, lines)
        assert not [line for line in lines if line[2].startswith("5")], (host, lines)

    # The bucket holds the blobs and nothing else: no upload leftovers, no open multipart.
    expected = {_blob_key("cluster", d) for d in [*image.blob_digests(), _digest(data)]}
    assert set(s3_server.keys(bucket)) == expected
    assert s3_server.open_multipart_uploads(bucket) == []


def test_blob_gets_redirect_to_the_object_store(
    berth_server_factory: StartServer, s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    require_tool("skopeo")
    env = s3_server.server_env(bucket, prefix="direct", redirect="true")
    node = berth_server_factory(env=env, name="redirecting")
    sandbox = ClientSandbox(tmp_path / "clients", insecure_registries=[node.host])
    image = build_oci_layout(tmp_path / "src", tag="v1", layers=2, layer_size=MiB, seed=62)
    skopeo_copy(image.ref, f"docker://{node.host}/direct/app:v1", sandbox=sandbox)
    back = tmp_path / "back"
    skopeo_copy(f"docker://{node.host}/direct/app:v1", f"oci:{back}:v1", sandbox=sandbox)
    assert layout_differences(image, read_layout(back, "v1")) == []

    layer = image.layer_digests[0]
    url = f"{node.url}/v2/direct/app/blobs/{layer}"
    head = requests.head(url, timeout=HTTP_TIMEOUT, allow_redirects=False)
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(image.read_blob(layer)))
    got = requests.get(url, timeout=HTTP_TIMEOUT, allow_redirects=False)
    assert got.status_code == 307
    target = urlsplit(got.headers["Location"])
    assert f"{target.scheme}://{target.netloc}" == s3_server.endpoint_url
    assert target.path == f"/{bucket}/" + _blob_key("direct", layer)
    # The node answered skopeo's blob GETs with redirects: the bytes came from the store.
    blob_gets = [
        line
        for line in _requests_by_node([node])[node.host]
        if line[0] == "GET" and "/blobs/sha256:" in line[1]
    ]
    assert blob_gets and all(status == "307" for _, _, status in blob_gets), blob_gets
