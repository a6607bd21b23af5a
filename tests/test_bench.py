"""The benchmark script runs end to end on tiny inputs (its figures are not checked here:
speed is measured by running it for real, see docs/performance.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

from app.db.session import engine_url
from tests.conftest import PG_ADMIN_URL, skip_or_fail

ROOT = Path(__file__).resolve().parent.parent


def test_registry_bench_runs_on_a_tiny_input(tmp_path: Path) -> None:
    for tool in ("skopeo", "wrk", "ab", "curl", "docker-registry", "nginx", "openssl"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} is not installed (apt-get install {tool})")
    # The berth-pg target makes a scratch database there.
    admin = create_engine(engine_url(PG_ADMIN_URL))
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        skip_or_fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    finally:
        admin.dispose()
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
    lines = [line for line in table.read_text().splitlines() if line.startswith("| ")]
    # Two tables: the side-by-side one, then listings and gc at scale (bench/scale_bench.py).
    split = next(i for i, line in enumerate(lines) if line.startswith("| figure | target |"))
    rows, scale = lines[:split], lines[split:]
    assert any(row.startswith("| catalog page | berth-sqlite |") for row in scale), scale
    # Berth against the reference, both behind the sample nginx, and Berth on PostgreSQL,
    # bare and behind nginx.
    comparisons = (
        "| berth / reference | berth+nginx / reference+nginx | berth-pg / reference"
        " | berth-pg+nginx / reference+nginx |"
    )
    assert rows[0].endswith(comparisons), rows[0]
    figures = {row.split("|")[1].strip(): row for row in rows[1:]}
    assert {"big push", "big pull", "GET manifest by tag", "catalog page", "server CPU"} <= set(
        figures
    )
    # Many clients at once: throughput, latencies per request type, errors (none expected).
    assert {
        "16 concurrent pulls",
        "16 concurrent pushes p99",
        "mixed: layer GET p99",
        "mixed: catalog p50",
    } <= set(figures)
    errors = [row for name, row in figures.items() if name.endswith("errors")]
    assert len(errors) == 3
    for row in errors:
        assert row.count("| 0.0 errors ") == 6, row
    assert all(row.rstrip().endswith("x |") and "nan" not in row for row in rows[1:])
