"""Berth's pull-through cache against the reference registry (Debian's docker-registry) in
proxy mode, the same upstream for both, in one run.

    .venv/bin/python bench/mirror_bench.py            # 4 x 64 MiB random layers
    .venv/bin/python bench/mirror_bench.py --quick    # 4 x 1 MiB: checks the script works

The upstream is a plain docker-registry holding one image. For each of Berth (a mirror
upstream under the prefix `up`) and a docker-registry with `proxy: remoteurl:` pointing at
the upstream: a cold pull with skopeo (nothing cached), a warm pull (all cached), then, on
a fresh cache, 8 concurrent cold pulls. The upstream's access log gives the blob bytes it
sent for each step, printed as copies of the image. Times are printed with the ratio
reference / Berth (> 1 means Berth is faster). Needs skopeo and docker-registry.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.registry_bench import (  # noqa: E402
    Target,
    free_port,
    machine,
    settle,
    skopeo,
    start_berth,
    wait_ready,
)
from tests.e2e.ocilayout import OciImage, build_oci_layout, read_layout  # noqa: E402

MiB = 1024 * 1024
REPO = "bench/image"
TAG = "v1"
PREFIX = "up"
CONCURRENT = 8

# Combined log format (gorilla's CombinedLoggingHandler), one line per request:
# 127.0.0.1 - - [date] "GET /v2/bench/image/blobs/sha256:... HTTP/1.1" 200 1048576 "" "ua"
BLOB_GET = re.compile(r'"GET /v2/\S+/blobs/(sha256:[0-9a-f]{64})\S* HTTP/[\d.]+" (\d{3}) (\d+|-)')


def start_registry(workdir: Path, name: str, proxy: str | None = None) -> Target:
    """docker-registry on a free port with its access log on stdout (workdir/server.log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    text = (
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    if proxy:
        text += f"proxy:\n  remoteurl: {proxy}\n"
    config.write_text(text)
    log = open(workdir / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Target(name, url, proc, workdir)


def start_berth_mirror(workdir: Path, upstream: str) -> Target:
    workdir.mkdir(parents=True, exist_ok=True)
    mirror = f'[{{"prefix":"{PREFIX}","url":"{upstream}","default":false}}]'
    return start_berth(workdir, None, None, {"BERTH_MIRROR_UPSTREAMS": mirror})


class UpstreamLog:
    """Blob bytes the upstream sent, from its access log, since the last mark()."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def blob_bytes(self) -> tuple[int, int]:
        """(bytes of 2xx blob GETs, number of them) since mark()."""
        # A line is written once its response is done, and the reference's background
        # fetch into its cache may finish after the client's: wait for the log to be quiet.
        size, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 1.0:
            time.sleep(0.2)
            now = self.path.stat().st_size
            if now != size:
                size, quiet_since = now, time.monotonic()
        with self.path.open("rb") as fh:
            fh.seek(self.offset)
            text = fh.read().decode(errors="replace")
        total = count = 0
        for match in BLOB_GET.finditer(text):
            if match.group(2).startswith("2") and match.group(3) != "-":
                total += int(match.group(3))
                count += 1
        return total, count


def pull(host: str, name: str, dest: Path) -> None:
    argv = ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false"]
    argv += [f"docker://{host}/{name}:{TAG}", f"oci:{dest}:{TAG}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr}")


def check(image: OciImage, dest: Path) -> None:
    got = read_layout(dest, TAG)
    if got.manifest_digest != image.manifest_digest:
        raise RuntimeError(f"{dest}: pulled {got.manifest_digest}, pushed {image.manifest_digest}")


def run_target(
    label: str,
    start: Callable[[Path], Target],
    name: str,
    image: OciImage,
    log: UpstreamLog,
    workdir: Path,
) -> dict[str, float]:
    results: dict[str, float] = {}
    pulled = workdir / f"pulled-{label}"
    pulled.mkdir()

    target = start(workdir / f"{label}-1")
    try:
        settle(target)
        print(f"{label}: running at {target.url}", flush=True)
        for step in ("cold pull", "warm pull"):
            dest = pulled / step.replace(" ", "-")
            log.mark()
            began = time.perf_counter()
            pull(target.host, name, dest)
            results[step] = time.perf_counter() - began
            check(image, dest)
            results[f"{step} upstream"], results[f"{step} blob GETs"] = log.blob_bytes()
            print(f"  {step}: {results[step]:.2f} s", flush=True)
    finally:
        target.stop()
        shutil.rmtree(workdir / f"{label}-1", ignore_errors=True)
        shutil.rmtree(pulled, ignore_errors=True)

    pulled.mkdir()
    target = start(workdir / f"{label}-2")
    try:
        settle(target)
        dests = [pulled / f"concurrent-{i}" for i in range(CONCURRENT)]
        log.mark()
        began = time.perf_counter()
        argv = ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false"]
        procs = [
            subprocess.Popen(
                [*argv, f"docker://{target.host}/{name}:{TAG}", f"oci:{dest}:{TAG}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for dest in dests
        ]
        failures = []
        for proc in procs:
            _, err = proc.communicate(timeout=900)
            if proc.returncode:
                failures.append(err.decode(errors="replace"))
        results["8 concurrent cold pulls"] = time.perf_counter() - began
        if failures:
            raise RuntimeError(f"{len(failures)} concurrent pulls failed:\n{failures[0]}")
        for dest in dests:
            check(image, dest)
        upstream, gets = log.blob_bytes()
        results["concurrent upstream"], results["concurrent blob GETs"] = upstream, gets
        print(f"  8 concurrent cold pulls: {results['8 concurrent cold pulls']:.2f} s", flush=True)
    finally:
        target.stop()
        shutil.rmtree(workdir / f"{label}-2", ignore_errors=True)
        shutil.rmtree(pulled, ignore_errors=True)
    return results


def table(berth: dict[str, float], reference: dict[str, float], image_bytes: int) -> str:
    lines = [
        "| step | Berth | reference | reference / Berth |",
        "|---|---|---|---|",
    ]
    for step in ("cold pull", "warm pull", "8 concurrent cold pulls"):
        b, r = berth[step], reference[step]
        lines.append(f"| {step} | {b:.2f} s | {r:.2f} s | {r / b:.2f}x |")
    for step, key in (
        ("upstream copies, cold pull", "cold pull upstream"),
        ("upstream copies, warm pull", "warm pull upstream"),
        ("upstream copies, 8 concurrent cold pulls", "concurrent upstream"),
    ):
        b, r = berth[key] / image_bytes, reference[key] / image_bytes
        ratio = f"{r / b:.2f}x" if b else "-"
        lines.append(f"| {step} | {b:.2f} | {r:.2f} | {ratio} |")
    gets = "concurrent blob GETs"
    lines.append(
        f"| upstream blob GETs, 8 concurrent | {berth[gets]:.0f} | {reference[gets]:.0f} | - |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 x 1 MiB layers")
    args = parser.parse_args()
    for tool in ("skopeo", "docker-registry"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed: apt-get install skopeo docker-registry")

    with tempfile.TemporaryDirectory(prefix="berth-mirror-bench-") as tmp:
        workdir = Path(tmp)
        print(f"machine: {machine()}", flush=True)
        layer = 1 * MiB if args.quick else 64 * MiB
        image = build_oci_layout(workdir / "image", tag=TAG, layers=4, layer_size=layer, seed=11)
        image_bytes = sum(len(image.read_blob(d)) for d in image.blob_digests())
        print(f"image: {len(image.layer_digests)} layers, {image_bytes / MiB:.1f} MiB of blobs")

        upstream = start_registry(workdir / "upstream", "upstream")
        try:
            skopeo(
                "copy",
                "--dest-tls-verify=false",
                image.ref,
                f"docker://{upstream.host}/{REPO}:{TAG}",
            )
            print(f"upstream: {upstream.url}, image pushed", flush=True)
            log = UpstreamLog(upstream.workdir / "server.log")
            berth = run_target(
                "berth",
                lambda d: start_berth_mirror(d, upstream.url),
                f"{PREFIX}/{REPO}",
                image,
                log,
                workdir,
            )
            reference = run_target(
                "reference",
                lambda d: start_registry(d, "reference", proxy=upstream.url),
                REPO,
                image,
                log,
                workdir,
            )
        finally:
            upstream.stop()
        print(table(berth, reference, image_bytes))


if __name__ == "__main__":
    main()
