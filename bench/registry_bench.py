"""Berth against the reference registry (Debian's docker-registry), side by side, in one run.

    .venv/bin/python bench/registry_bench.py            # full run, prints a table
    .venv/bin/python bench/registry_bench.py --quick    # tiny sizes: checks the script works

Each target is started fresh on a free port, the same steps run against each, and every
figure is printed with the ratio of a Berth target to its reference ("x" > 1 means Berth is
better, for times the ratio is inverted so that the same holds): Berth against the
reference, Berth behind the sample nginx against the reference behind the same nginx (TLS
on both sides), Berth on PostgreSQL against the reference, bare and behind nginx. Two
phases per target, each on a freshly started server: the single-client steps, then many
clients at once (bench/many_clients.py). Needs skopeo, wrk, ab, curl, nginx, openssl
(Debian packages), docker-registry for the reference and PostgreSQL (BERTH_TEST_POSTGRES,
default postgres@127.0.0.1:5432) for the berth-pg targets.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import many_clients  # noqa: E402
from bench.scratch import PG_ADMIN, postgres_database  # noqa: E402
from tests.e2e.ocilayout import build_oci_layout, layout_differences, read_layout  # noqa: E402

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MiB = 1024 * 1024
BIG_ROUNDS = 3  # big push and pull: rounds per target, the median kept
# Each Berth target and the reference it is compared with, in the table's order.
COMPARISONS = [
    ("berth", "reference"),
    ("berth+nginx", "reference+nginx"),
    ("berth-pg", "reference"),
    ("berth-pg+nginx", "reference+nginx"),
]
TARGETS = ["reference", "berth", "berth-pg", "reference+nginx", "berth+nginx", "berth-pg+nginx"]


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(url + "/v2/", timeout=1).status_code in (200, 401):
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system time of the live processes plus what their reaped children used."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / ticks


def pss_mib(pids: list[int]) -> float:
    """The processes' proportional set size in MiB: a page shared by n of them counts 1/n
    to each, so the sum is what they hold together (forked workers share most pages)."""
    total = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        match = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        if match:
            total += int(match.group(1))
    return total / 1024


def peak_rss_mib(pids: list[int]) -> tuple[float, float]:
    """(sum of the processes' peak RSS, the largest single one) in MiB."""
    peaks = []
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match:
            peaks.append(int(match.group(1)) / 1024)
    return sum(peaks), max(peaks, default=0.0)


def settle(target: Target, timeout: float = 30) -> float:
    """Wait until the server's processes are idle (under 10 ms of CPU in half a second):
    answering /v2/ is not the end of starting up when the other gunicorn workers are still
    importing the application, and that CPU would be charged to the first step. Returns
    the seconds waited."""
    start = time.monotonic()
    before = cpu_seconds(target.pids())
    while time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = cpu_seconds(target.pids())
        if now - before < 0.01:
            break
        before = now
    return time.monotonic() - start


@dataclass
class Target:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    extra_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Run after the processes have stopped (a scratch database dropped, say).
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def pids(self) -> list[int]:
        return [pid for proc in [self.proc, *self.extra_procs] for pid in process_tree(proc.pid)]

    def stop(self) -> None:
        for proc in [*self.extra_procs, self.proc]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.extra_procs, self.proc]:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for cleanup in self.cleanups:
            cleanup()


def start_reference(workdir: Path) -> Target:
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return Target("reference", url, proc, workdir)


def start_berth(
    workdir: Path,
    workers: int | None,
    database_url: str | None,
    extra_env: dict[str, str] | None = None,
) -> Target:
    port = free_port()
    env = {
        **os.environ,
        "BERTH_STORAGE_ROOT": str(workdir / "storage"),
        "BERTH_DATABASE_URL": database_url or f"sqlite:///{workdir / 'berth.db'}",
        "BERTH_LOG_LEVEL": "warning",
        # As the reference is configured above: no access log.
        "BERTH_ACCESS_LOG": "false",
        **(extra_env or {}),
    }
    argv = [str(Path(sys.executable).parent / "berth"), "serve", "--bind", f"127.0.0.1:{port}"]
    if workers:
        argv += ["--workers", str(workers)]
    log = open(workdir / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return Target("berth", url, proc, workdir)


def behind_nginx(target: Target, storage: Path) -> Target:
    """target behind the deployment sample, deploy/nginx (TLS, the same settings for every
    target; storage is where the sample's blob offload location reads files, used only by
    Berth with BERTH_BLOB_OFFLOAD). Clients trust its CA through REQUESTS_CA_BUNDLE (set
    here, cleared by main after the target); skopeo skips verification."""
    from tests.deploy.frontends import gen_certs, start_nginx

    workdir = target.workdir
    try:
        # nginx's workers run as nobody: everything they read must be reachable by others.
        workdir.chmod(0o755)
        certs = workdir / "certs"
        gen_certs(certs)
        no_v1 = f"127.0.0.1:{free_port()}"  # the sample routes v1 clients here; none come
        proxy_dir = workdir / "nginx"
        proxy_dir.mkdir()
        ca = certs / "ca.crt"
        os.environ["REQUESTS_CA_BUNDLE"] = str(ca)
        proxy = start_nginx(proxy_dir, certs, target.host, no_v1, storage, ca)
    except BaseException:
        target.stop()
        raise
    target.name, target.url = f"{target.name}+nginx", proxy.url
    target.extra_procs.append(proxy.process)
    return target


def start_berth_behind_nginx(
    workdir: Path, workers: int | None, database_url: str | None
) -> Target:
    """Berth as the deployment sample runs it: blob bytes sent by nginx (X-Accel-Redirect)."""
    # BERTH_FORWARDED_ALLOW_IPS: Berth believes nginx's X-Forwarded-Proto (https Location
    # headers); main's new setting (no proxy believed by default), ignored by older code.
    env = {"BERTH_BLOB_OFFLOAD": "x-accel-redirect", "BERTH_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    berth = start_berth(workdir, workers, database_url, env)
    return behind_nginx(berth, workdir / "storage")


def start_reference_behind_nginx(workdir: Path) -> Target:
    """The reference behind the same nginx: it builds its Location headers from the
    X-Forwarded-Proto and X-Forwarded-Host the sample sets, and streams blobs itself."""
    return behind_nginx(start_reference(workdir), workdir / "data")


def start_berth_on_postgres(
    workdir: Path, workers: int | None, admin_url: str, nginx: bool = False
) -> Target:
    """Berth on a scratch PostgreSQL database, bare or as the deployment sample runs it."""
    url, drop = postgres_database(admin_url=admin_url)
    try:
        berth = (start_berth_behind_nginx if nginx else start_berth)(workdir, workers, url)
    except BaseException:
        drop()
        raise
    berth.name = "berth-pg+nginx" if nginx else "berth-pg"
    berth.cleanups.append(drop)
    return berth


# ----------------------------------------------------------------------------- clients


def skopeo(*args: str) -> None:
    subprocess.run(
        ["skopeo", "--insecure-policy", *args],
        check=True,
        capture_output=True,
        timeout=900,
    )


def push_blob(session: requests.Session, url: str, repo: str, data: bytes) -> str:
    """What docker and skopeo do: HEAD, POST, one streamed PATCH, PUT ?digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if session.head(f"{url}/v2/{repo}/blobs/{digest}").status_code == 200:
        return digest
    start = session.post(f"{url}/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    location = requests.compat.urljoin(url, start.headers["Location"])
    patch = session.patch(location, data=data, headers={"Content-Type": "application/octet-stream"})
    patch.raise_for_status()
    location = requests.compat.urljoin(url, patch.headers["Location"])
    sep = "&" if "?" in location else "?"
    session.put(f"{location}{sep}digest={digest}").raise_for_status()
    return digest


def small_manifest(config: bytes, layers: list[bytes]) -> bytes:
    def desc(data: bytes, media_type: str) -> dict[str, object]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": desc(config, "application/vnd.oci.image.config.v1+json"),
            "layers": [desc(b, "application/vnd.oci.image.layer.v1.tar+gzip") for b in layers],
        }
    ).encode()


def put_manifest(session: requests.Session, url: str, repo: str, ref: str, body: bytes) -> None:
    response = session.put(
        f"{url}/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": MANIFEST}
    )
    response.raise_for_status()


def wrk(url: str, headers: dict[str, str] | None = None, seconds: int = 5) -> tuple[float, float]:
    """Requests per second and p99 latency (ms) of GETs: wrk, 2 threads, 16 connections."""
    argv = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run([*argv, url], check=True, capture_output=True, text=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"wrk saw errors against {url}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert p99, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def ab_head(url: str, seconds: int = 5) -> tuple[float, float]:
    """The same for HEAD, with ab (wrk waits for a body that a HEAD response never has)."""
    argv = ["ab", "-q", "-k", "-i", "-c16", f"-t{seconds}", "-n1000000", url]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    if re.search(r"Non-2xx responses:\s+[1-9]", out):
        raise RuntimeError(f"ab saw errors against {url}:\n{out}")
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"\s99%\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    return rps, p99


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Median wall time of fn over repeat runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------- steps


@dataclass
class Figure:
    name: str
    unit: str
    higher_is_better: bool
    # Values below this are the same thing ("flat"), whatever their ratio.
    noise: float = 0.05


FIGURES = [
    Figure("big push", "MB/s", True),
    Figure("big pull", "MB/s", True),
    Figure("small pushes", "images/s", True),
    Figure("GET manifest by tag", "req/s", True),
    Figure("GET manifest p99", "ms", False),
    Figure("HEAD blob", "req/s", True),
    Figure("HEAD blob p99", "ms", False),
    Figure("GET /v2/", "req/s", True),
    Figure("GET /v2/ p99", "ms", False),
    Figure("blob GET", "MB/s", True),
    Figure("catalog page", "req/s", True),
    Figure("tags page", "req/s", True),
    Figure("huge blob push", "MB/s", True),
    Figure("huge blob pull", "MB/s", True),
    # A few MiB either way while 1 GiB streams through is flat.
    Figure("RSS growth during huge blob", "MiB", False, noise=16.0),
    Figure("server CPU", "s", False),
    Figure("peak RSS (all processes)", "MiB", False),
    Figure("peak RSS (largest process)", "MiB", False),
    Figure("PSS after the steps (all processes)", "MiB", False),
]

# Many clients at once (the second phase, on a fresh server): see run_many_clients.
MIXED_KINDS = ["manifest GET", "layer GET", "layer push", "manifest PUT", "tags list", "catalog"]
MANY_FIGURES = [
    Figure("16 concurrent pulls", "MB/s", True),
    Figure("16 concurrent pulls p99", "ms", False),
    Figure("16 concurrent pulls errors", "errors", False, noise=0.5),
    Figure("16 concurrent pushes", "MB/s", True),
    Figure("16 concurrent pushes p99", "ms", False),
    Figure("16 concurrent pushes errors", "errors", False, noise=0.5),
    Figure("server CPU, concurrent pulls and pushes", "s", False),
    Figure("peak RSS, concurrent pulls and pushes", "MiB", False),
    Figure("mixed: pulled", "MB/s", True),
    Figure("mixed: pushed", "MB/s", True),
    Figure("mixed: listings", "req/s", True),
    *(Figure(f"mixed: {kind} {q}", "ms", False) for kind in MIXED_KINDS for q in ("p50", "p99")),
    Figure("mixed: errors", "errors", False, noise=0.5),
]
FIGURES += MANY_FIGURES


@dataclass
class Inputs:
    big: Path
    big_bytes: float  # of each round's image; they differ by a few bytes of gzip
    big_rounds: int
    small_count: int
    blob: bytes
    listing: int
    wrk_seconds: int
    huge: int
    # Many clients at once.
    content: many_clients.Content
    rounds: int  # of the 16 concurrent pulls and of the pushes; the median kept
    mixed_seconds: float
    mixed_listing: int  # repositories in the catalog and tags in bench/base while it runs


def prepare(workdir: Path, quick: bool) -> Inputs:
    layer = 64 * 1024 if quick else 64 * MiB
    # One image per round, each with its own layers, so that no round finds its blobs
    # already pushed (or skopeo mounting them from another repository).
    sizes = []
    # --quick checks that the steps work; one round does that.
    rounds = 1 if quick else BIG_ROUNDS
    for r in range(rounds):
        image = build_oci_layout(
            workdir / "big", tag=f"v{r}", layers=4, layer_size=layer, seed=7 + r
        )
        blobs = (image.path / "blobs" / d.replace(":", "/") for d in image.all_digests())
        sizes.append(sum(blob.stat().st_size for blob in blobs))
    return Inputs(
        big=workdir / "big",
        big_bytes=statistics.median(sizes),
        big_rounds=rounds,
        small_count=5 if quick else 50,
        blob=os.urandom(256 * 1024 if quick else 64 * MiB),
        listing=50 if quick else 10_000,
        wrk_seconds=1 if quick else 5,
        huge=8 * MiB if quick else 1024 * MiB,
        content=many_clients.Content(64 * 1024 if quick else 16 * MiB),
        rounds=1 if quick else 3,
        mixed_seconds=1 if quick else 60,
        mixed_listing=20 if quick else 1000,
    )


def populate_listings(target: Target, count: int) -> None:
    """count repositories holding one small image, and count tags in one repository."""
    session = requests.Session()
    config, layer = b'{"architecture":"amd64","os":"linux"}', b"bench layer"
    for data in (config, layer):
        push_blob(session, target.url, "bench/base", data)
    body = small_manifest(config, [layer])
    put_manifest(session, target.url, "bench/base", "v1", body)
    digests = ["sha256:" + hashlib.sha256(d).hexdigest() for d in (config, layer)]

    def fill_repo(i: int, local: dict[int, requests.Session] = {}) -> None:  # noqa: B006
        sess = local.setdefault(os.getpid() * 1000 + i % 8, requests.Session())
        repo = f"bench/repo{i:05d}"
        for digest in digests:
            mount = sess.post(
                f"{target.url}/v2/{repo}/blobs/uploads/?mount={digest}&from=bench/base"
            )
            assert mount.status_code == 201, mount.status_code
        put_manifest(sess, target.url, repo, "v1", body)

    def fill_tag(i: int) -> None:
        put_manifest(requests.Session(), target.url, "bench/base", f"t{i:05d}", body)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(fill_repo, range(count)))
        list(pool.map(fill_tag, range(count)))


class RssSampler:
    """The largest RSS each server process reaches while a step runs, sampled every 50 ms."""

    def __init__(self, target: Target) -> None:
        self._target, self.peak = target, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self._target.pids():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                match = re.search(r"VmRSS:\s+(\d+) kB", status)
                if match:
                    self.peak = max(self.peak, int(match.group(1)) / 1024)
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def huge_blob(target: Target, size: int) -> tuple[float, float, float]:
    """Push and pull one blob of size bytes, generated and hashed on the fly (the client holds
    1 MiB at a time). Returns push MB/s, pull MB/s and how far any server process's RSS grew
    above what it was before."""
    session, url = requests.Session(), target.url
    seed = hashlib.sha256(b"huge").digest() * (MiB // 32)
    hasher = hashlib.sha256()
    for _ in range(size // MiB):
        hasher.update(seed)
    digest = "sha256:" + hasher.hexdigest()
    with RssSampler(target) as before:
        time.sleep(0.2)
    with RssSampler(target) as during:
        start = time.perf_counter()
        location = session.post(f"{url}/v2/bench/huge/blobs/uploads/").headers["Location"]
        location = requests.compat.urljoin(url, location)
        patch = session.patch(location, data=(seed for _ in range(size // MiB)))
        patch.raise_for_status()
        done = requests.compat.urljoin(url, patch.headers["Location"])
        sep = "&" if "?" in done else "?"
        session.put(f"{done}{sep}digest={digest}").raise_for_status()
        push = size / MiB / (time.perf_counter() - start)
        start = time.perf_counter()
        check = hashlib.sha256()
        with session.get(f"{url}/v2/bench/huge/blobs/{digest}", stream=True) as response:
            response.raise_for_status()
            for chunk in response.iter_content(MiB):
                check.update(chunk)
        assert "sha256:" + check.hexdigest() == digest
        pull = size / MiB / (time.perf_counter() - start)
    return push, pull, max(during.peak - before.peak, 0.0)


def run_steps(target: Target, inputs: Inputs, workdir: Path) -> dict[str, float]:
    results: dict[str, float] = {}
    url, host = target.url, target.host
    session = requests.Session()

    # Big image push and pull with a real client, digests verified after each pull. A single
    # push or pull of 256 MiB lasts about a second and varies by 10-20% from one to the next
    # on this kind of machine: the median of three rounds is kept.
    push_times, pull_times = [], []
    for r in range(inputs.big_rounds):
        out = workdir / f"pulled-{target.name}"
        src, dest = f"oci:{inputs.big}:v{r}", f"docker://{host}/bench/big:v{r}"
        push_times.append(timed(partial(skopeo, "copy", "--dest-tls-verify=false", src, dest)))
        pull = partial(skopeo, "copy", "--src-tls-verify=false", dest, f"oci:{out}:v{r}")
        pull_times.append(timed(pull))
        problems = layout_differences(read_layout(inputs.big, f"v{r}"), read_layout(out, f"v{r}"))
        if problems:
            raise RuntimeError(f"{target.name}: pulled image differs: {problems}")
        shutil.rmtree(out)
    results["big push"] = inputs.big_bytes / MiB / statistics.median(push_times)
    results["big pull"] = inputs.big_bytes / MiB / statistics.median(pull_times)

    # Small images, one after another, as a client would push them: three rounds of new
    # images (one round lasts about a second, too short to trust alone), the median kept.
    rounds = iter(range(3))

    def small_pushes() -> None:
        r = next(rounds)
        for i in range(inputs.small_count):
            config = json.dumps({"architecture": "amd64", "os": "linux", "i": i, "r": r}).encode()
            layer = os.urandom(2048)
            push_blob(session, url, "bench/small", config)
            push_blob(session, url, "bench/small", layer)
            tag = f"s{i}" if r == 0 else f"s{i}-{r}"
            put_manifest(session, url, "bench/small", tag, small_manifest(config, [layer]))

    results["small pushes"] = inputs.small_count / timed(small_pushes, repeat=3)

    manifest_url = f"{url}/v2/bench/small/manifests/s0"
    rps, p99 = wrk(manifest_url, headers={"Accept": MANIFEST}, seconds=inputs.wrk_seconds)
    results["GET manifest by tag"], results["GET manifest p99"] = rps, p99
    blob_digest = push_blob(session, url, "bench/blob", inputs.blob)
    rps, p99 = ab_head(f"{url}/v2/bench/blob/blobs/{blob_digest}", seconds=inputs.wrk_seconds)
    results["HEAD blob"], results["HEAD blob p99"] = rps, p99
    rps, p99 = wrk(f"{url}/v2/", seconds=inputs.wrk_seconds)
    results["GET /v2/"], results["GET /v2/ p99"] = rps, p99

    # The bytes are checked once; the timed GETs are curl's, into /dev/null: hashing in
    # Python (~1 GB/s) would measure this client, not the server.
    blob_url = f"{url}/v2/bench/blob/blobs/{blob_digest}"
    hasher = hashlib.sha256()
    with session.get(blob_url, stream=True) as response:
        response.raise_for_status()
        for chunk in response.iter_content(1024 * 1024):
            hasher.update(chunk)
    assert "sha256:" + hasher.hexdigest() == blob_digest

    def get_blob() -> None:
        ca = os.environ.get("REQUESTS_CA_BUNDLE")
        argv = ["curl", "-sSf", "-o", "/dev/null", *(["--cacert", ca] if ca else []), blob_url]
        subprocess.run(argv, check=True)

    results["blob GET"] = len(inputs.blob) / MiB / timed(get_blob, repeat=5)

    populate_listings(target, inputs.listing)
    # One page of 100 out of count entries; the server's rate, not one client's round trip.
    session.get(f"{url}/v2/_catalog?n=100").raise_for_status()
    results["catalog page"] = wrk(f"{url}/v2/_catalog?n=100", seconds=inputs.wrk_seconds)[0]
    tags = f"{url}/v2/bench/base/tags/list?n=100"
    results["tags page"] = wrk(tags, seconds=inputs.wrk_seconds)[0]

    push, pull, growth = huge_blob(target, inputs.huge)
    results["huge blob push"], results["huge blob pull"] = push, pull
    results["RSS growth during huge blob"] = growth

    pids = target.pids()
    results["server CPU"] = cpu_seconds(pids)
    results["peak RSS (all processes)"], results["peak RSS (largest process)"] = peak_rss_mib(pids)
    results["PSS after the steps (all processes)"] = pss_mib(pids)
    return results


def run_many_clients(target: Target, inputs: Inputs) -> dict[str, float]:
    """The second phase, on a freshly started server: (a) 16 clients each pulling its own
    4-layer image at the same moment, (b) 16 clients each pushing a new one, each the median
    of inputs.rounds rounds for throughput and the p99 of one image's pull or push over all
    rounds; then (c) a mixed minute of 8 pullers, 4 pushers and 4 listers (tags page and
    catalog page in turn) in closed loops, with p50/p99 per request type. Errors are counted,
    never raised: the bench goes on and the table says how many."""
    url, content = target.url, inputs.content
    results: dict[str, float] = {}
    images = [many_clients.make_image(content, f"pull/image{i:02d}", "v1") for i in range(16)]
    many_clients.push_all(url, content, images)
    # A catalog of mixed_listing repositories and as many tags in bench/base, so that the
    # listers read full pages of 100.
    populate_listings(target, inputs.mixed_listing)

    cpu_before = cpu_seconds(target.pids())
    pulls = []
    for _ in range(inputs.rounds):
        os.sync()
        pulls.append(many_clients.concurrent_pulls(url, content, images))
    pushes = []
    for r in range(inputs.rounds):
        os.sync()  # the round before's writeback (the reference never fsyncs) not charged here
        round_images = [
            many_clients.make_image(content, f"push/image{i:02d}", f"r{r}") for i in range(16)
        ]
        pushes.append(many_clients.concurrent_pushes(url, content, round_images))
    results["server CPU, concurrent pulls and pushes"] = cpu_seconds(target.pids()) - cpu_before
    results["peak RSS, concurrent pulls and pushes"] = peak_rss_mib(target.pids())[0]
    for label, steps in (("16 concurrent pulls", pulls), ("16 concurrent pushes", pushes)):
        merged = many_clients.Recorder()
        for step in steps:
            ops = step.recorder.latencies.get(step.ops, [])
            merged.latencies.setdefault(step.ops, []).extend(ops)
            merged.errors += step.recorder.errors
        results[label] = statistics.median(step.mb_per_s for step in steps)
        results[f"{label} p99"] = merged.percentile_ms(steps[0].ops, 99)
        results[f"{label} errors"] = len(merged.errors)
        if merged.errors:
            print(f"{target.name}: {label}: {merged.errors[:3]}", flush=True)

    os.sync()
    mixed = many_clients.mixed(url, content, images, ["bench/base"], inputs.mixed_seconds)
    recorder, seconds = mixed.recorder, mixed.seconds
    pulled = sum(recorder.moved.get(k, 0) for k in ("manifest GET", "config GET", "layer GET"))
    pushed = sum(recorder.moved.get(k, 0) for k in ("config push", "layer push", "manifest PUT"))
    results["mixed: pulled"] = pulled / MiB / seconds
    results["mixed: pushed"] = pushed / MiB / seconds
    results["mixed: listings"] = (recorder.count("tags list") + recorder.count("catalog")) / seconds
    for kind in MIXED_KINDS:
        results[f"mixed: {kind} p50"] = recorder.percentile_ms(kind, 50)
        results[f"mixed: {kind} p99"] = recorder.percentile_ms(kind, 99)
    results["mixed: errors"] = len(recorder.errors)
    if recorder.errors:
        print(f"{target.name}: mixed: {recorder.errors[:3]}", flush=True)
    counts = ", ".join(f"{kind} {recorder.count(kind)}" for kind in MIXED_KINDS)
    print(f"{target.name}: mixed, {seconds:.1f} s: {counts}", flush=True)
    return results


# ----------------------------------------------------------------------------- report


def ratio(figure: Figure, berth: float, reference: float) -> float:
    """Berth / reference, inverted where lower is better, so that > 1 always favours Berth."""
    better, worse = (berth, reference) if figure.higher_is_better else (reference, berth)
    if worse < figure.noise:  # both next to nothing (RSS growth of a streaming server, say)
        return 1.0 if better < figure.noise else float("inf")
    return better / worse


def table(results: dict[str, dict[str, float]]) -> str:
    names = list(results)
    pairs = [(b, r) for b, r in COMPARISONS if b in results and r in results]
    lines = [
        "| figure | " + " | ".join(names) + "".join(f" | {b} / {r}" for b, r in pairs) + " |",
        "|---" * (len(names) + len(pairs) + 1) + "|",
    ]
    for figure in FIGURES:
        if not all(figure.name in results[n] for n in names):
            continue  # a phase left out (--phases)
        cells = [f"{results[n][figure.name]:,.1f} {figure.unit}" for n in names]
        for berth, reference in pairs:
            value = ratio(figure, results[berth][figure.name], results[reference][figure.name])
            cells.append(f"{value:.2f}x")
        lines.append(f"| {figure.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def clock(began: float) -> str:
    minutes, seconds = divmod(int(time.monotonic() - began), 60)
    return f"{minutes:d}:{seconds:02d}"


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) // 1024  # type: ignore[union-attr]
    system = f"{platform.platform()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} cores ({cpu}), {mem} MiB RAM, {system}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--workers", type=int, default=None, help="berth serve --workers")
    parser.add_argument(
        "--database-url", default=None, help="the berth targets' database (default SQLite)"
    )
    parser.add_argument(
        "--postgres", default=PG_ADMIN, help="PostgreSQL where berth-pg's scratch database is made"
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, from {','.join(TARGETS)} (default: all)",
    )
    parser.add_argument(
        "--phases",
        default="single,many,scale",
        help="single (one client at a time), many (many clients at once), scale (listings"
        " and gc at 1,000 to 100,000: bench/scale_bench.py); default all three",
    )
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    phases = [p for p in args.phases.split(",") if p]
    if set(targets) - set(TARGETS) or set(phases) - {"single", "many", "scale"} or not phases:
        parser.error(f"targets are {', '.join(TARGETS)}; phases are single, many and scale")
    scale = "scale" in phases
    phases = [p for p in phases if p != "scale"]  # scale_bench starts servers of its own
    for tool in ("skopeo", "wrk", "ab", "curl", "docker-registry", "nginx", "openssl"):
        if not shutil.which(tool):
            sys.exit(
                f"{tool} is needed: apt-get install skopeo wrk apache2-utils curl"
                " docker-registry nginx openssl"
            )
    if any(t.startswith("berth-pg") for t in targets):
        try:
            postgres_database(admin_url=args.postgres)[1]()
        except Exception as exc:  # whatever the failure, the advice is the same
            sys.exit(
                f"PostgreSQL at {args.postgres} is needed for berth-pg ({exc}); "
                "or leave it out with --targets"
            )

    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # nginx's workers (nobody) read blob files under it
        print(f"machine: {machine()}", flush=True)
        began = time.monotonic()
        inputs = prepare(workdir, args.quick)
        results: dict[str, dict[str, float]] = {}
        starters: dict[str, Callable[[Path], Target]] = {
            "reference": start_reference,
            "berth": lambda d: start_berth(d, args.workers, args.database_url),
            "berth-pg": lambda d: start_berth_on_postgres(d, args.workers, args.postgres),
            "reference+nginx": start_reference_behind_nginx,
            "berth+nginx": lambda d: start_berth_behind_nginx(d, args.workers, args.database_url),
            "berth-pg+nginx": lambda d: start_berth_on_postgres(
                d, args.workers, args.postgres, nginx=True
            ),
        }
        for name in targets if phases else []:
            results[name] = {}
            # Each phase has a server of its own, started fresh: the single-client figures
            # (CPU, peak RSS) stay those of the single-client steps alone, and the many
            # clients meet a server that no gigabyte blob went through. --quick, which
            # only checks that the steps work, runs both phases on one server.
            for group in [phases] if args.quick else [[phase] for phase in phases]:
                # Each server starts on a quiet disk: the one before it (the reference never
                # fsyncs) may have left a gigabyte of dirty pages that would otherwise be
                # written back during the next one's run, and counted against it.
                os.sync()
                target_dir = workdir / name
                target_dir.mkdir()
                phase_began = time.monotonic()
                target = starters[name](target_dir)
                try:
                    waited = settle(target)
                    print(
                        f"[{clock(began)}] {name} ({', '.join(group)}): running at {target.url}"
                        f" (settled after {waited:.1f} s)",
                        flush=True,
                    )
                    if "single" in group:
                        results[name].update(run_steps(target, inputs, workdir))
                    if "many" in group:
                        results[name].update(run_many_clients(target, inputs))
                finally:
                    target.stop()
                    os.environ.pop("REQUESTS_CA_BUNDLE", None)
                    shutil.rmtree(workdir / f"pulled-{name}", ignore_errors=True)
                    if "single" in group:
                        # The reference's 10,000 repositories are ~100,000 small files,
                        # minutes to delete on a busy disk: they go at the end, after the
                        # table (a few GiB kept meanwhile).
                        target_dir.rename(workdir / f"done-{len(list(workdir.iterdir()))}")
                    else:
                        shutil.rmtree(target_dir, ignore_errors=True)
                print(
                    f"[{clock(began)}] {name} ({', '.join(group)}):"
                    f" {time.monotonic() - phase_began:.0f} s",
                    flush=True,
                )
            # The table so far after each target: a long run stopped half way still says
            # something.
            report = table(results)
            print(report, flush=True)
            if args.markdown:
                args.markdown.write_text(f"Machine: {machine()}\n\n{report}\n")
        if scale:
            # Imported here: scale_bench imports this module (bench/ is on sys.path).
            import scale_bench

            scale_report = scale_bench.table(scale_bench.run(quick=args.quick))
            print(scale_report, flush=True)
            if args.markdown:
                with args.markdown.open("a") as out:
                    out.write(f"\n{scale_report}\n")
        print(f"took {time.monotonic() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
