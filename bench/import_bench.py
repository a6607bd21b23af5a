"""How fast `berth import` moves a registry: a few thousand tags pushed into Debian's
docker-registry, then imported three ways into fresh Berth databases (SQLite):
`import distribution` copying, `import distribution --hardlink`, `import registry`.

    .venv/bin/python bench/import_bench.py [--tags 2000] [--repos 20] [--layer-kib 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.client import RegistryClient
from tests.e2e.images import push_image, reference_registry

BERTH = Path(sys.executable).parent / "berth"


def run_import(work: Path, name: str, *args: str) -> float:
    env = {
        **os.environ,
        "BERTH_DATABASE_URL": f"sqlite:///{work / name}.db",
        "BERTH_STORAGE_ROOT": str(work / f"{name}-storage"),
        "BERTH_LOG_LEVEL": "warning",
    }
    env.pop("BERTH_CONFIG", None)
    started = time.monotonic()
    done = subprocess.run([str(BERTH), "import", *args], env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{name}: {done.stdout}\n{done.stderr}")
    print(f"  {name:<22} {elapsed:7.1f} s   {done.stdout.strip().splitlines()[-1]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tags", type=int, default=2000)
    parser.add_argument("--repos", type=int, default=20)
    parser.add_argument("--layer-kib", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="berth-import-bench-") as tmp:
        work = Path(tmp)
        with reference_registry(work / "reference") as ref:
            started = time.monotonic()

            def push(i: int) -> int:
                with RegistryClient(ref.url, auth=False) as client:
                    pushed = push_image(client, f"bench/repo{i % args.repos}", f"t{i}", seed=i,
                                        layer_size=args.layer_kib * 1024, layers=1)  # fmt: skip
                    return sum(len(b) for b in pushed.blobs.values())

            with ThreadPoolExecutor(8) as pool:
                total = sum(pool.map(push, range(args.tags)))
            print(f"pushed {args.tags} tags ({total / 1e6:.1f} MB of blobs) into docker-registry"
                  f" in {time.monotonic() - started:.1f} s")  # fmt: skip
            remote = run_import(work, "import-registry", "registry", ref.url, "--workers", "4")
        copied = run_import(work, "distribution-copy", "distribution", str(ref.root))
        linked = run_import(work, "distribution-hardlink", "distribution", str(ref.root),
                            "--hardlink")  # fmt: skip
        for name, seconds in (("registry", remote), ("distribution", copied),
                              ("distribution --hardlink", linked)):  # fmt: skip
            print(f"{name:<24} {args.tags / seconds:8.0f} tags/s {total / seconds / 1e6:8.1f} MB/s")


if __name__ == "__main__":
    main()
