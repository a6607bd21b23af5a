"""Listings and gc at scale: catalog and tag pages, and one more tag pushed, at 1,000, 10,000
and 100,000 repositories / tags, for Berth (SQLite, PostgreSQL) and the reference; then
`berth gc` and `berth gc --delete-untagged` at 100,000 manifests on PostgreSQL, timed, with
their peak RSS.

    .venv/bin/python bench/scale_bench.py               # full run (~70 min on a loaded 2-core VM)
    .venv/bin/python bench/scale_bench.py --quick       # tiny sizes: checks the script works
    .venv/bin/python bench/scale_bench.py --sizes 1000,10000 --targets berth-sqlite --no-gc

How the stores are filled (100,000 HTTP pushes would take longer than the whole run; what
is measured afterwards goes over HTTP to a real `berth serve` / `docker-registry serve`):
- Berth: rows inserted in bulk through the app's own models (the tables `berth migrate`
  made), and the two blob files written where the filesystem driver keeps them. N
  repositories `bench/rNNNNNN` each hold one image (config + layer linked, one manifest,
  tag v1); `bench/base` holds the same image under N tags `tNNNNNN`.
- The reference: its filesystem layout written directly, as distribution 2.8's storage
  driver would (docker/registry/v2/blobs/sha256/<2>/<hex>/data; per repository
  _layers/sha256/<hex>/link, _manifests/revisions/sha256/<hex>/link and
  _manifests/tags/<tag>/{current/link,index/sha256/<hex>/link}).
Each figure: the median of timed sequential requests on one keep-alive connection per
server (at most `repeat`, fewer when a request takes long), with a server for every size up
at once and the requests taken in turn, one size after another, so that whatever else
loads the machine weighs on every size alike: the first catalog page (`_catalog?n=100`), a
page near the end (`last=` the name 99 % of the way in), the same for tags/list, and a
manifest PUT under a new tag into the repository holding N tags.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine, insert, text

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from registry_bench import settle, start_berth, start_reference  # noqa: E402

from app.db.models import (  # noqa: E402
    Blob,
    Manifest,
    ManifestReference,
    Repository,
    RepositoryBlob,
    Tag,
)
from app.db.session import engine_url  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.registry import paths  # noqa: E402
from app.registry.references import Digest  # noqa: E402
from bench.scratch import postgres_database  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
LAYER = b"scale bench layer"
PAGE = 100
TARGETS = ("berth-sqlite", "berth-postgresql", "reference")
FIGURES = ("catalog page", "catalog page, near the end", "tags page", "tags page, near the end")
PUSH = "push one more tag"
CHUNK = 20_000  # rows per bulk insert


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_manifest() -> bytes:
    def desc(data: bytes, media_type: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": sha(data), "size": len(data)}

    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(CONFIG, "application/vnd.oci.image.config.v1+json"),
        "layers": [desc(LAYER, "application/vnd.oci.image.layer.v1.tar")],
    }
    return json.dumps(doc).encode()


def repo_name(i: int) -> str:
    return f"bench/r{i:06d}"


def tag_name(i: int) -> str:
    return f"t{i:06d}"


def chunked(rows: Iterator[dict[str, Any]], size: int = CHUNK) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------- databases


def scratch_database(kind: str, workdir: Path) -> tuple[str, Callable[[], None]]:
    """(url, a function dropping the database afterwards), migrated."""
    if kind == "sqlite":
        url, drop = f"sqlite:///{workdir / 'berth.db'}", lambda: None
    else:
        url, drop = postgres_database("berth_scale")
    upgrade(url)
    return url, drop


def write_blob(storage: Path, data: bytes, mtime: float | None = None) -> str:
    digest = sha(data)
    target = storage / paths.blob_data(Digest.parse(digest))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    if mtime is not None:
        os.utime(target, (mtime, mtime))
    return digest


def fill_berth(url: str, storage: Path, count: int) -> None:
    """count repositories of one image each, and count tags in bench/base (see the top)."""
    body = image_manifest()
    blobs = [write_blob(storage, CONFIG), write_blob(storage, LAYER)]
    repos = ["bench/base"] + [repo_name(i) for i in range(count)]
    engine = create_engine(engine_url(url))
    with engine.begin() as conn:
        conn.execute(
            insert(Blob), [{"id": i + 1, "digest": d, "size": 1} for i, d in enumerate(blobs)]
        )
        for rows in chunked({"id": r + 1, "name": name} for r, name in enumerate(repos)):
            conn.execute(insert(Repository), rows)
        links = (
            {"repository_id": r + 1, "blob_id": b + 1} for r in range(len(repos)) for b in (0, 1)
        )
        for rows in chunked(links):
            conn.execute(insert(RepositoryBlob), rows)
        manifest = {
            "digest": sha(body),
            "media_type": OCI_MANIFEST,
            "payload": body,
            "size": len(body),
        }
        for rows in chunked(
            {"id": r + 1, "repository_id": r + 1, **manifest} for r in range(len(repos))
        ):
            conn.execute(insert(Manifest), rows)
        refs = (
            {"manifest_id": r + 1, "digest": d, "kind": "blob"}
            for r in range(len(repos))
            for d in blobs
        )
        for rows in chunked(refs):
            conn.execute(insert(ManifestReference), rows)
        tags = [
            {"repository_id": r + 1, "name": "v1", "manifest_id": r + 1}
            for r in range(1, len(repos))
        ]
        tags += [{"repository_id": 1, "name": tag_name(i), "manifest_id": 1} for i in range(count)]
        for rows in chunked(iter(tags)):
            conn.execute(insert(Tag), rows)
        if conn.dialect.name == "postgresql":
            for table in ("repository", "blob", "manifest", "tag"):
                conn.execute(
                    text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                )
    with engine.connect() as conn:  # statistics, as a registry that has been running has
        conn.execute(text("ANALYZE"))
        conn.commit()
    engine.dispose()


# ----------------------------------------------------------------------------- the reference


def _link(path: Path, digest: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "link").write_text(digest)


def fill_reference(data_root: Path, count: int) -> None:
    """The same content in distribution's filesystem layout (see the top)."""
    v2 = data_root / "docker" / "registry" / "v2"
    body = image_manifest()
    digests = [write_blob(v2, data) for data in (CONFIG, LAYER, body)]
    manifest_hex = digests[2].split(":", 1)[1]

    def repository(repo: str) -> Path:
        root = v2 / "repositories" / repo
        for digest in digests[:2]:
            _link(root / "_layers" / "sha256" / digest.split(":", 1)[1], digest)
        _link(root / "_manifests" / "revisions" / "sha256" / manifest_hex, digests[2])
        return root

    def tag(root: Path, name: str) -> None:
        tag_dir = root / "_manifests" / "tags" / name
        _link(tag_dir / "current", digests[2])
        _link(tag_dir / "index" / "sha256" / manifest_hex, digests[2])

    base = repository("bench/base")
    # Threads: the writes wait on the filesystem, not on the GIL.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: tag(base, tag_name(i)), range(count), chunksize=500))
        list(pool.map(lambda i: tag(repository(repo_name(i)), "v1"), range(count), chunksize=500))


# ----------------------------------------------------------------------------- measuring


def requests_for(
    url: str, count: int
) -> dict[str, Callable[[requests.Session], requests.Response]]:
    """The timed request of each figure against a store of `count`."""
    near_end = max(int(count * 0.99) - 1, 0)
    tags = f"{url}/v2/bench/base/tags/list"
    pages = {
        "catalog page": f"{url}/v2/_catalog?n={PAGE}",
        "catalog page, near the end": f"{url}/v2/_catalog?n={PAGE}&last={repo_name(near_end)}",
        "tags page": f"{tags}?n={PAGE}",
        "tags page, near the end": f"{tags}?n={PAGE}&last={tag_name(near_end)}",
    }
    made: dict[str, Callable[[requests.Session], requests.Response]] = {
        figure: lambda session, page=page: session.get(page, timeout=300)
        for figure, page in pages.items()
    }
    body, new = image_manifest(), iter(range(10**6))
    headers = {"Content-Type": OCI_MANIFEST}
    made[PUSH] = lambda session: session.put(
        f"{url}/v2/bench/base/manifests/new{next(new)}", data=body, headers=headers
    )
    return made


def measure(urls: dict[int, str], repeat: int, budget: float = 20.0) -> dict[int, dict[str, float]]:
    """Per size, per figure: the median of up to `repeat` timed requests (fewer when they
    are slow), taken in turn from each size's server, so that whatever else loads the
    machine meanwhile weighs on every size alike."""
    sessions = {n: requests.Session() for n in urls}
    made = {n: requests_for(url, n) for n, url in urls.items()}
    results: dict[int, dict[str, float]] = {n: {} for n in urls}
    for figure in (*FIGURES, PUSH):
        times: dict[int, list[float]] = {n: [] for n in urls}
        for n in urls:  # warm: connection, caches, the first query plan
            response = made[n][figure](sessions[n])
            response.raise_for_status()
            if figure in ("catalog page", "tags page"):
                # A full page (the reference's tags/list ignores n: every tag, unsorted).
                body = response.json()
                listed = body.get("repositories", body.get("tags"))
                assert len(listed) >= min(PAGE, n), (figure, n, len(listed))
        spent = time.monotonic()
        while len(times[next(iter(urls))]) < repeat and (
            len(times[next(iter(urls))]) < 3 or time.monotonic() - spent < budget
        ):
            for n in urls:
                started = time.perf_counter()
                response = made[n][figure](sessions[n])
                times[n].append(time.perf_counter() - started)
                response.raise_for_status()
        for n in urls:
            results[n][figure] = statistics.median(times[n]) * 1000
            # The fastest too: on a shared machine, the closest to what the server costs.
            results[n][f"{figure}, best"] = min(times[n]) * 1000
    return results


def listings(target: str, sizes: list[int], repeat: int) -> dict[int, dict[str, float]]:
    """Fill a store of each size, start a server on each, and measure them side by side."""
    servers, drops, workdirs = {}, [], []
    try:
        for count in sizes:
            workdir = Path(tempfile.mkdtemp(prefix="berth-scale-"))
            workdirs.append(workdir)
            started = time.monotonic()
            if target == "reference":
                fill_reference(workdir / "data", count)
                os.sync()
                servers[count] = start_reference(workdir)
            else:
                url, drop = scratch_database(target.split("-", 1)[1], workdir)
                drops.append(drop)
                fill_berth(url, workdir / "storage", count)
                os.sync()
                servers[count] = start_berth(workdir, None, url)
            print(
                f"  {target} at {count:,}: filled in {time.monotonic() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        for server in servers.values():
            settle(server)
        results = measure({n: server.url for n, server in servers.items()}, repeat)
        for count, figures in results.items():
            print(
                f"  {target} at {count:,}: "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in figures.items() if "best" not in k),
                file=sys.stderr,
                flush=True,
            )
        return results
    finally:
        for server in servers.values():
            server.stop()
        for drop in drops:
            drop()
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- gc at scale


def fill_gc(url: str, storage: Path, manifests: int, repos: int) -> None:
    """manifests images (config + layer of their own, every other one tagged) in repos
    repositories, plus manifests / 10 linked blobs nothing names; two days old."""
    old = datetime.now(UTC) - timedelta(days=2)
    stray = manifests // 10
    blob_count = 2 * manifests + stray
    engine = create_engine(engine_url(url))
    # Threads: the writes wait on the filesystem, not on the GIL.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        digests = list(
            pool.map(
                lambda i: write_blob(storage, i.to_bytes(8, "big") * 4, old.timestamp()),
                range(blob_count),
                chunksize=1000,
            )
        )
    bodies: list[bytes] = []
    for m in range(manifests):
        config, layer = digests[2 * m], digests[2 * m + 1]
        doc = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 32,
            },
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 32}
            ],
        }
        bodies.append(json.dumps(doc).encode())
    with engine.begin() as conn:
        conn.execute(
            insert(Repository),
            [{"id": r + 1, "name": repo_name(r), "created_at": old} for r in range(repos)],
        )
        for rows in chunked(
            {"id": i + 1, "digest": d, "size": 32, "created_at": old} for i, d in enumerate(digests)
        ):
            conn.execute(insert(Blob), rows)
        # Blob i belongs to manifest i // 2 (the stray ones to repositories in turn).
        links = (
            {"repository_id": (i // 2) % repos + 1, "blob_id": i + 1, "created_at": old}
            for i in range(blob_count)
        )
        for rows in chunked(links):
            conn.execute(insert(RepositoryBlob), rows)
        rows_m = (
            {
                "id": m + 1,
                "repository_id": m % repos + 1,
                "digest": sha(body),
                "media_type": OCI_MANIFEST,
                "payload": body,
                "size": len(body),
                "created_at": old,
            }
            for m, body in enumerate(bodies)
        )
        for rows in chunked(rows_m):
            conn.execute(insert(Manifest), rows)
        refs = (
            {"manifest_id": m + 1, "digest": digests[2 * m + k], "kind": "blob"}
            for m in range(manifests)
            for k in (0, 1)
        )
        for rows in chunked(refs):
            conn.execute(insert(ManifestReference), rows)
        tags = (
            {"repository_id": m % repos + 1, "name": f"v{m}", "manifest_id": m + 1}
            for m in range(0, manifests, 2)
        )
        for rows in chunked(tags):
            conn.execute(insert(Tag), rows)
        if conn.dialect.name == "postgresql":
            for table in ("repository", "blob", "manifest", "tag"):
                conn.execute(
                    text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")
                )
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    engine.dispose()


def peak_rss_mib(pid: int) -> float | None:
    """The process's own high-water RSS (VmHWM). Not wait4's ru_maxrss: after a fork and
    exec that still counts the parent's RSS at the fork, here the whole data set's."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"VmHWM:\s+(\d+) kB", status)
    return int(match.group(1)) / 1024 if match else None


def timed_gc(
    url: str, storage: Path, args: list[str], env: dict[str, str] | None = None
) -> tuple[float, float, str]:
    """`berth gc ARGS` in its own process: (seconds, its peak RSS in MiB, its summary line)."""
    env = {**os.environ, **(env or {}), "BERTH_DATABASE_URL": url}
    env["BERTH_STORAGE_ROOT"] = str(storage)
    env.pop("BERTH_CONFIG", None)
    berth = str(Path(sys.executable).parent / "berth")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [berth, "gc", "--grace", "1h", *args], env=env, stdout=out, stderr=err
        )
        peak = 0.0
        while proc.poll() is None:  # VmHWM only grows: the last reading is the peak
            peak = max(peak, peak_rss_mib(proc.pid) or 0.0)
            time.sleep(0.02)
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError(f"berth gc {args} failed: {err.read().decode()[-2000:]}")
        return seconds, peak, out.read().decode().strip()


def gc_at_scale(manifests: int, repos: int) -> dict[str, tuple[float, float, str]]:
    results = {}
    for label, args in (("berth gc", []), ("berth gc --delete-untagged", ["--delete-untagged"])):
        workdir = Path(tempfile.mkdtemp(prefix="berth-scale-gc-"))
        url, drop = scratch_database("postgresql", workdir)
        try:
            started = time.monotonic()
            fill_gc(url, workdir / "storage", manifests, repos)
            filled = time.monotonic() - started
            os.sync()
            results[label] = seconds, peak, summary = timed_gc(url, workdir / "storage", args)
            print(
                f"  {label} at {manifests:,} manifests: filled in {filled:.0f} s; {seconds:.1f} s,"
                f" peak RSS {peak:.0f} MiB: {summary}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            drop()
            shutil.rmtree(workdir, ignore_errors=True)
    return results


# ----------------------------------------------------------------------------- the entry


def run(
    quick: bool = False,
    sizes: list[int] | None = None,
    targets: tuple[str, ...] = TARGETS,
    gc: bool = True,
    gc_manifests: int | None = None,
    repeat: int | None = None,
) -> dict[str, Any]:
    """Every figure: {"listings": {target: {size: {figure: ms}}}, "gc": {label: (s, MiB, line)}}.
    What bench/registry_bench.py calls; `table(run(...))` is the markdown."""
    sizes = sizes or ([50, 200] if quick else [1_000, 10_000, 100_000])
    repeat = repeat or (5 if quick else 30)
    results: dict[str, Any] = {"listings": {}, "gc": {}, "sizes": sizes}
    for target in targets:
        results["listings"][target] = listings(target, sizes, repeat)
    if gc:
        manifests = gc_manifests or (200 if quick else 100_000)
        results["gc"] = gc_at_scale(manifests, max(manifests // 100, 2))
        results["gc_manifests"] = manifests
    return results


def table(results: dict[str, Any]) -> str:
    sizes = results["sizes"]
    lines = [
        "| figure | target | "
        + " | ".join(f"{n:,}" for n in sizes)
        + f" | {sizes[-1]:,} / {sizes[0]:,} | best of each | best {sizes[-1]:,} / {sizes[0]:,} |",
        "|---|---|" + "---:|" * (len(sizes) + 3),
    ]
    for figure in (*FIGURES, PUSH):
        for target, by_size in results["listings"].items():
            times = [by_size[n][figure] for n in sizes]
            best = [by_size[n][f"{figure}, best"] for n in sizes]
            lines.append(
                f"| {figure} | {target} | "
                + " | ".join(f"{t:.1f} ms" for t in times)
                + f" | {times[-1] / times[0]:.2f}x | "
                + " / ".join(f"{t:.1f}" for t in best)
                + f" ms | {best[-1] / best[0]:.2f}x |"
            )
    if results["gc"]:
        lines += [
            "",
            f"| {results['gc_manifests']:,} manifests, PostgreSQL | seconds | peak RSS |",
            "|---|---:|---:|",
        ]
        for label, (seconds, peak, _summary) in results["gc"].items():
            lines.append(f"| `{label}` | {seconds:.1f} | {peak:.0f} MiB |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check the script")
    parser.add_argument("--sizes", default=None, help="comma-separated, e.g. 1000,10000,100000")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"of {','.join(TARGETS)}")
    parser.add_argument("--no-gc", action="store_true", help="listings only")
    parser.add_argument("--no-listings", action="store_true", help="gc only")
    parser.add_argument("--gc-manifests", type=int, default=None)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    targets = () if args.no_listings else tuple(t for t in args.targets.split(",") if t)
    if "reference" in targets and not shutil.which("docker-registry"):
        sys.exit("docker-registry is needed: apt-get install docker-registry")
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    started = time.monotonic()
    results = run(args.quick, sizes, targets, not args.no_gc, args.gc_manifests)
    report = table(results)
    print(report)
    print(f"\n(run took {time.monotonic() - started:.0f} s)")
    if args.markdown:
        args.markdown.write_text(report + "\n")


if __name__ == "__main__":
    main()
