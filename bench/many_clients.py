"""Many clients at once, for bench/registry_bench.py: concurrent pulls, concurrent pushes and
a mixed minute of pulls, pushes and listings, with latencies per request type and errors.

The client is Python threads in the bench's own process, one requests.Session each,
speaking the V2 API: GET manifest then each blob for a pull; HEAD, POST, one streamed
PATCH and PUT ?digest per blob then PUT manifest for a push (what skopeo and docker send).
Why not skopeo processes, as the single-client steps use: skopeo is the bottleneck there
(a pull is ~95 % skopeo's CPU, see docs/performance.md), and 16 of them on two cores measure
skopeo. Measured on the 2-core machine (shared, load average ~10), 16 concurrent pulls of
4 x 16 MiB images from the reference: 16 skopeo processes took 14-17 s of CPU and 17 s
wall; these threads ~1.0 s of CPU and 3-4 s wall, against ~1.0-1.3 s of the server's CPU
either way. The same client runs against every target.

What keeps the client light:
- Layer bytes are never generated or hashed per push: a layer is one of a few random bases
  followed by 32 bytes of its own, and its sha256 continues a hash of the base kept once
  (hashlib's copy()). Every layer is still a distinct blob the server must receive, hash
  and store; servers do not share bytes between blobs.
- Bodies stream from memoryviews of the base (no 16 MiB copy per request), with a
  Content-Length, as skopeo sends them.
- Pulls are checked byte for byte with a CRC-32 of the known content (~2.9 GB/s here,
  sha256 ~1.3 GB/s): a wrong or short body counts as an error, as does any non-2xx answer
  or exception. The servers' own digest checks are tested elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import requests

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MiB = 1024 * 1024
CHUNK = MiB


@dataclass(frozen=True)
class Blob:
    base: int  # index into Content.bases, or -1 for a small blob held whole in data
    tail: bytes
    digest: str
    size: int
    crc: int


class Body:
    """A request body of base + tail, streamed in memoryview pieces, with a length (so
    requests sends Content-Length rather than chunked encoding)."""

    def __init__(self, base: bytes, tail: bytes) -> None:
        self._base, self._tail = memoryview(base), tail

    def __len__(self) -> int:
        return len(self._base) + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        for offset in range(0, len(self._base), CHUNK):
            yield self._base[offset : offset + CHUNK]  # type: ignore[misc]
        yield self._tail


class Content:
    """Distinct layers of layer_size bytes, cheap to make: see the module docstring."""

    def __init__(self, layer_size: int, bases: int = 4, seed: int = 19) -> None:
        self.layer_size = layer_size
        self.bases = [random.Random(seed + i).randbytes(layer_size - 32) for i in range(bases)]
        self._hashes = [hashlib.sha256(base) for base in self.bases]
        self._crcs = [zlib.crc32(base) for base in self.bases]

    def layer(self, key: str) -> Blob:
        tail = hashlib.sha256(key.encode()).digest()
        index = tail[0] % len(self.bases)
        hasher = self._hashes[index].copy()
        hasher.update(tail)
        crc = zlib.crc32(tail, self._crcs[index])
        return Blob(index, tail, "sha256:" + hasher.hexdigest(), self.layer_size, crc)

    def body(self, blob: Blob) -> Body | bytes:
        return blob.tail if blob.base < 0 else Body(self.bases[blob.base], blob.tail)


def small_blob(data: bytes) -> Blob:
    return Blob(-1, data, "sha256:" + hashlib.sha256(data).hexdigest(), len(data), zlib.crc32(data))


@dataclass(frozen=True)
class Image:
    repo: str
    tag: str
    config: Blob
    layers: list[Blob]
    manifest: bytes

    @property
    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers) + len(self.manifest)


def make_image(content: Content, repo: str, tag: str, layers: int = 4) -> Image:
    key = f"{repo}:{tag}"
    config = small_blob(json.dumps({"architecture": "amd64", "os": "linux", "k": key}).encode())
    blobs = [content.layer(f"{key}/{i}") for i in range(layers)]

    def desc(blob: Blob, media_type: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": blob.digest, "size": blob.size}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": desc(config, CONFIG),
            "layers": [desc(blob, LAYER) for blob in blobs],
        }
    ).encode()
    return Image(repo, tag, config, blobs, manifest)


# ----------------------------------------------------------------------------- recording


class RequestError(Exception):
    pass


@dataclass
class Recorder:
    """Latencies (seconds) per request type, bytes moved, and errors, from many threads."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    moved: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, kind: str, fn: Callable[[], int]) -> bool:
        """Run fn (returns bytes moved), record its time under kind; an exception is an
        error (recorded, not raised). Returns whether it succeeded."""
        start = time.perf_counter()
        try:
            moved = fn()
        except Exception as exc:  # every failure is counted, none stops the step
            with self._lock:
                self.errors.append(f"{kind}: {exc.__class__.__name__}: {exc}"[:300])
            return False
        self.add(kind, time.perf_counter() - start, moved)
        return True

    def add(self, kind: str, seconds: float, moved: int) -> None:
        with self._lock:
            self.latencies.setdefault(kind, []).append(seconds)
            self.moved[kind] = self.moved.get(kind, 0) + moved

    def percentile_ms(self, kind: str, q: float) -> float:
        values = sorted(self.latencies.get(kind, []))
        if not values:
            return float("nan")
        # Nearest rank: the p99 of 16 samples is the slowest one, not an interpolation.
        rank = max(1, min(len(values), round(q / 100 * len(values) + 0.5)))
        return values[rank - 1] * 1000

    def count(self, kind: str) -> int:
        return len(self.latencies.get(kind, []))


def _check(response: requests.Response, *ok: int) -> requests.Response:
    if response.status_code not in (ok or (200,)):
        raise RequestError(f"{response.request.method} {response.url} -> {response.status_code}")
    return response


# ----------------------------------------------------------------------------- client


class Client:
    """One client: one session (its own connections), pulling and pushing over the V2 API."""

    def __init__(self, url: str, content: Content, recorder: Recorder) -> None:
        self.url, self.content, self.recorder = url, content, recorder
        self.session = requests.Session()

    def get_blob(self, image: Image, blob: Blob) -> int:
        url = f"{self.url}/v2/{image.repo}/blobs/{blob.digest}"
        crc, size = 0, 0
        with self.session.get(url, stream=True) as response:
            _check(response)
            for chunk in response.iter_content(CHUNK):
                crc = zlib.crc32(chunk, crc)
                size += len(chunk)
        if size != blob.size or crc != blob.crc:
            raise RequestError(f"GET {url}: {size} bytes, not the {blob.size} pushed")
        return size

    def get_manifest(self, image: Image) -> int:
        url = f"{self.url}/v2/{image.repo}/manifests/{image.tag}"
        body = _check(self.session.get(url, headers={"Accept": MANIFEST})).content
        if body != image.manifest:
            raise RequestError(f"GET {url}: not the manifest pushed")
        return len(body)

    def pull(self, image: Image) -> bool:
        """Manifest, config, layers, one after another; False when any of them failed."""
        record = self.recorder.timed
        if not record("manifest GET", lambda: self.get_manifest(image)):
            return False
        if not record("config GET", lambda: self.get_blob(image, image.config)):
            return False
        return all(record("layer GET", lambda b=b: self.get_blob(image, b)) for b in image.layers)

    def put_blob(self, repo: str, blob: Blob) -> int:
        url, session = self.url, self.session
        if _check(session.head(f"{url}/v2/{repo}/blobs/{blob.digest}"), 200, 404).ok:
            return 0
        start = _check(session.post(f"{url}/v2/{repo}/blobs/uploads/"), 202)
        location = requests.compat.urljoin(url, start.headers["Location"])
        headers = {"Content-Type": "application/octet-stream"}
        patch = _check(
            session.patch(location, data=self.content.body(blob), headers=headers), 202, 204
        )
        location = requests.compat.urljoin(url, patch.headers["Location"])
        sep = "&" if "?" in location else "?"
        _check(session.put(f"{location}{sep}digest={blob.digest}"), 201)
        return blob.size

    def put_manifest(self, image: Image) -> int:
        url = f"{self.url}/v2/{image.repo}/manifests/{image.tag}"
        headers = {"Content-Type": MANIFEST}
        _check(self.session.put(url, data=image.manifest, headers=headers), 201)
        return len(image.manifest)

    def push(self, image: Image) -> bool:
        record = self.recorder.timed
        if not record("config push", lambda: self.put_blob(image.repo, image.config)):
            return False
        for blob in image.layers:
            if not record("layer push", lambda b=blob: self.put_blob(image.repo, b)):
                return False
        return record("manifest PUT", lambda: self.put_manifest(image))

    def list_tags(self, repo: str) -> int:
        response = _check(self.session.get(f"{self.url}/v2/{repo}/tags/list?n=100"))
        return len(response.content)

    def list_catalog(self) -> int:
        return len(_check(self.session.get(f"{self.url}/v2/_catalog?n=100")).content)


# ----------------------------------------------------------------------------- steps


@dataclass
class StepResult:
    seconds: float
    bytes: int
    recorder: Recorder
    ops: str  # the recorder kind that times one whole operation (one image pulled or pushed)

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MiB / self.seconds


def run_together(workers: list[Callable[[], None]]) -> float:
    """Start every worker at the same moment (a barrier); the wall time until the last ends."""
    barrier = threading.Barrier(len(workers) + 1)

    def run(work: Callable[[], None]) -> None:
        barrier.wait()
        work()

    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in workers]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def push_all(url: str, content: Content, images: list[Image], threads: int = 4) -> None:
    """Set-up (untimed): push images with a few clients; any failure stops the bench."""
    recorder = Recorder()
    queue = list(images)
    lock = threading.Lock()

    def work() -> None:
        client = Client(url, content, recorder)
        while True:
            with lock:
                if not queue:
                    return
                image = queue.pop()
            client.push(image)

    run_together([work for _ in range(threads)])
    if recorder.errors:
        raise RuntimeError(f"set-up pushes failed: {recorder.errors[:3]}")


def concurrent_pulls(url: str, content: Content, images: list[Image]) -> StepResult:
    """One client per image, all at once, each pulling its image whole."""
    recorder = Recorder()
    clients = [Client(url, content, recorder) for _ in images]

    seconds = run_together(
        [_whole(recorder, "image pull", c.pull, i) for c, i in zip(clients, images, strict=True)]
    )
    moved = sum(image.size for image in images)
    return StepResult(seconds, moved, recorder, "image pull")


def concurrent_pushes(url: str, content: Content, images: list[Image]) -> StepResult:
    recorder = Recorder()
    clients = [Client(url, content, recorder) for _ in images]

    seconds = run_together(
        [_whole(recorder, "image push", c.push, i) for c, i in zip(clients, images, strict=True)]
    )
    moved = sum(image.size for image in images)
    return StepResult(seconds, moved, recorder, "image push")


def _whole(
    recorder: Recorder, kind: str, operation: Callable[[Image], bool], image: Image
) -> Callable[[], None]:
    """A worker timing one whole pull or push under kind; a failed one is left out of the
    latencies (its failing request is already counted as an error)."""

    def work() -> None:
        start = time.perf_counter()
        if operation(image):
            recorder.add(kind, time.perf_counter() - start, image.size)

    return work


@dataclass
class MixedResult:
    seconds: float
    recorder: Recorder


def mixed(
    url: str,
    content: Content,
    pull_images: list[Image],
    tag_repos: list[str],
    seconds: float,
    pullers: int = 8,
    pushers: int = 4,
    listers: int = 4,
) -> MixedResult:
    """Clients in closed loops for `seconds`: pullers pull the given images in turn, pushers
    push new images of the same shape, listers alternate a tags page and a catalog page. An
    operation under way at the deadline is finished and counted."""
    recorder = Recorder()
    deadline = 0.0
    layers = len(pull_images[0].layers)

    def puller(n: int) -> Callable[[], None]:
        def work() -> None:
            client = Client(url, content, recorder)
            i = n
            while time.perf_counter() < deadline:
                client.pull(pull_images[i % len(pull_images)])
                i += 1

        return work

    def pusher(n: int) -> Callable[[], None]:
        def work() -> None:
            client = Client(url, content, recorder)
            i = 0
            while time.perf_counter() < deadline:
                client.push(make_image(content, f"mixed/push{n}", f"p{i}", layers))
                i += 1

        return work

    def lister(n: int) -> Callable[[], None]:
        def work() -> None:
            client = Client(url, content, recorder)
            i = n
            while time.perf_counter() < deadline:
                repo = tag_repos[i % len(tag_repos)]
                recorder.timed("tags list", lambda r=repo: client.list_tags(r))
                recorder.timed("catalog", client.list_catalog)
                i += 1

        return work

    workers = (
        [puller(n) for n in range(pullers)]
        + [pusher(n) for n in range(pushers)]
        + [lister(n) for n in range(listers)]
    )
    # The deadline is set as the barrier opens (run_together's start), near enough.
    deadline = time.perf_counter() + seconds + 0.05
    elapsed = run_together(workers)
    return MixedResult(elapsed, recorder)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
