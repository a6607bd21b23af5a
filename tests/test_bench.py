"""The benchmark script runs end to end on tiny inputs (its figures are not checked here:
speed is measured by running it for real, see docs/performance.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent


def test_registry_bench_runs_on_a_tiny_input(tmp_path: Path) -> None:
    for tool in ("skopeo", "wrk", "ab", "curl", "docker-registry", "nginx", "openssl"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} is not installed (apt-get install {tool})")
    table = tmp_path / "table.md"
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "registry_bench.py"),
            "--quick",
            "--markdown",
            str(table),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ")]
    # Berth alone and behind the sample nginx, each against the reference.
    assert "| berth / reference | berth+nginx / reference |" in rows[0]
    figures = {row.split("|")[1].strip() for row in rows[1:]}
    assert {"big push", "big pull", "GET manifest by tag", "catalog page", "server CPU"} <= figures
    assert all(row.rstrip().endswith("x |") for row in rows[1:])
