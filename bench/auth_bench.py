"""Authenticated GET-manifest throughput: Berth vs Debian's docker-registry, in one run.

    .venv/bin/python bench/auth_bench.py              # 3 rounds of 10 s each, per server
    .venv/bin/python bench/auth_bench.py --quick      # 1 round of 2 s: checks the script works
    .venv/bin/python bench/auth_bench.py --cost 10    # bcrypt cost of the htpasswd entry

Both servers get the same htpasswd file (one bcrypt entry made by `htpasswd -B`, cost 5 by
default, as `htpasswd -B` writes it), both are started fresh on free loopback ports, one small
image is pushed to each, and wrk sends `GET /v2/bench/app/manifests/v1` with Basic
credentials on every request. Rounds alternate between the servers; the best round of each
counts. The ratio is Berth / reference. Needs wrk, htpasswd (apache2-utils) and
docker-registry (Debian packages); the reference runs from a temporary config, never as a
service.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BERTH = Path(sys.executable).parent / "berth"
USER, PASSWORD = "bench", "bench-password"
REPO = "bench/app"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(name: str, argv: list[str], env: dict[str, str], log: Path) -> Server:
    port = int(env.pop("_PORT"))
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited ({process.returncode}); see {log}")
        try:
            if requests.get(server.url + "/v2/", timeout=1).status_code == 401:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"{name} did not come up; see {log}")


def start_berth(work: Path, htpasswd: Path, workers: int | None) -> Server:
    port = free_port()
    rules = [{"repository": "*", "users": [USER], "actions": ["pull", "push"]}]
    env = {
        **os.environ,
        "_PORT": str(port),
        "BERTH_DATABASE_URL": f"sqlite:///{work / 'berth.db'}",
        "BERTH_STORAGE_ROOT": str(work / "berth-storage"),
        "BERTH_AUTH": "basic",
        "BERTH_AUTH_HTPASSWD": str(htpasswd),
        "BERTH_AUTH_RULES": json.dumps(rules),
        "BERTH_LOG_LEVEL": "warning",
    }
    env.pop("BERTH_CONFIG", None)
    argv = [str(BERTH), "serve", "--bind", f"127.0.0.1:{port}"]
    if workers:
        argv += ["--workers", str(workers)]
    return spawn("berth", argv, env, work / "berth.log")


def start_reference(work: Path, htpasswd: Path) -> Server:
    port = free_port()
    config = work / "registry.yml"
    # The Debian package's own config, with htpasswd auth and a private storage directory.
    config.write_text(
        f"""version: 0.1
log:
  level: warn
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: {work / "reference-storage"}
http:
  addr: 127.0.0.1:{port}
auth:
  htpasswd:
    realm: bench
    path: {htpasswd}
"""
    )
    argv = ["/usr/bin/docker-registry", "serve", str(config)]
    return spawn("docker-registry", argv, {**os.environ, "_PORT": str(port)}, work / "ref.log")


def push_image(server: Server) -> str:
    """One small image (a config and one layer), by the book: POST, PUT ?digest=, PUT manifest."""
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    blobs = [json.dumps({"architecture": "amd64", "os": "linux"}).encode(), os.urandom(4096)]
    for data in blobs:
        start = session.post(f"{server.url}/v2/{REPO}/blobs/uploads/", timeout=30)
        assert start.status_code == 202, (server.name, start.status_code, start.text)
        location = start.headers["Location"]
        location = location if location.startswith("http") else server.url + location
        sep = "&" if "?" in location else "?"
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        done = session.put(f"{location}{sep}digest={digest}", data=data, timeout=30)
        assert done.status_code == 201, (server.name, done.status_code, done.text)

    def desc(data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": desc(blobs[0], "application/vnd.oci.image.config.v1+json"),
            "layers": [desc(blobs[1], "application/vnd.oci.image.layer.v1.tar+gzip")],
        }
    ).encode()
    put = session.put(
        f"{server.url}/v2/{REPO}/manifests/v1",
        data=manifest,
        headers={"Content-Type": MANIFEST},
        timeout=30,
    )
    assert put.status_code == 201, (server.name, put.status_code, put.text)
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


def check(server: Server, digest: str) -> None:
    """What wrk will ask for works, and nothing works without credentials."""
    url = f"{server.url}/v2/{REPO}/manifests/v1"
    ok = requests.get(url, auth=(USER, PASSWORD), headers={"Accept": MANIFEST}, timeout=10)
    assert ok.status_code == 200 and ok.headers["Docker-Content-Digest"] == digest, server.name
    assert requests.get(url, timeout=10).status_code == 401, server.name
    assert requests.get(url, auth=(USER, "wrong"), timeout=10).status_code == 401, server.name


def cpu_seconds(session: int) -> float:
    """User + system CPU time of every live process in a session (the server and its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # fields[3] is the session id
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


@dataclass
class Round:
    rps: float
    cpu_ms: float  # server CPU time per request: robust to other load on the machine


def wrk(server: Server, seconds: int, connections: int) -> Round:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    cpu_before = cpu_seconds(server.process.pid)
    out = subprocess.run(
        [
            *("wrk", "--threads", "1", "--connections", str(connections), "--timeout", "60s"),
            *("--duration", f"{seconds}s", "--header", f"Authorization: Basic {token}"),
            *("--header", f"Accept: {MANIFEST}", f"{server.url}/v2/{REPO}/manifests/v1"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"{server.name}: wrk saw errors:\n{out}")
    cpu = cpu_seconds(server.process.pid) - cpu_before
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not rate or not count:
        raise RuntimeError(f"{server.name}: unexpected wrk output:\n{out}")
    return Round(float(rate.group(1)), 1000 * cpu / max(int(count.group(1)), 1))


def make_htpasswd(path: Path, cost: int) -> None:
    line = subprocess.run(
        ["htpasswd", "-nbB", "-C", str(cost), USER, PASSWORD],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path.write_text(line + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s: a smoke run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="per wrk round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--cost", type=int, default=5, help="bcrypt cost (htpasswd -B -C)")
    parser.add_argument("--workers", type=int, default=None, help="berth serve --workers")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 2
    missing = [t for t in ("wrk", "htpasswd", "/usr/bin/docker-registry") if not shutil.which(t)]
    if missing:
        print(
            f"missing: {', '.join(missing)} (apt-get install -y wrk apache2-utils docker-registry)"
        )
        return 2

    work = Path(tempfile.mkdtemp(prefix="berth-auth-bench-"))
    servers: list[Server] = []
    try:
        htpasswd = work / "htpasswd"
        make_htpasswd(htpasswd, args.cost)
        servers = [start_berth(work, htpasswd, args.workers), start_reference(work, htpasswd)]
        for server in servers:
            check(server, push_image(server))
        rounds: dict[str, list[Round]] = {server.name: [] for server in servers}
        for number in range(1, args.rounds + 1):
            for server in servers:
                result = wrk(server, args.seconds, args.connections)
                rounds[server.name].append(result)
                print(
                    f"round {number}: {server.name:16} {result.rps:9.1f} req/s"
                    f"  {result.cpu_ms:7.3f} ms CPU/request",
                    flush=True,
                )
        berth = max(r.rps for r in rounds["berth"])
        reference = max(r.rps for r in rounds["docker-registry"])
        berth_cpu = min(r.cpu_ms for r in rounds["berth"])
        reference_cpu = min(r.cpu_ms for r in rounds["docker-registry"])
        print()
        print(f"authenticated GET manifest, bcrypt cost {args.cost}, {os.cpu_count()} CPUs,")
        rounds_text = f"best of {args.rounds} x {args.seconds} s"
        print(f"wrk 1 thread x {args.connections} connections, {rounds_text}")
        print(f"{'':18}{'req/s':>10}{'ms CPU/req':>12}")
        print(f"  berth           {berth:10.1f}{berth_cpu:12.3f}")
        print(f"  docker-registry {reference:10.1f}{reference_cpu:12.3f}")
        print(f"  ratio           {berth / reference:9.2f}x{reference_cpu / berth_cpu:11.2f}x")
        print("(ratio: Berth's advantage; CPU per request is the figure other load disturbs least)")
        return 0
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
