"""What `berth serve` sets up around gunicorn: the access log switch, malloc tuning."""

from __future__ import annotations

from pathlib import Path

import requests

from tests.e2e.conftest import StartServer


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_access_log_on_by_default_and_off_when_asked(
    berth_server_factory: StartServer,
) -> None:
    logged = berth_server_factory(name="logged")
    quiet = berth_server_factory(env={"BERTH_ACCESS_LOG": "false"}, name="quiet")
    for server in (logged, quiet):
        requests.get(f"{server.url}/v2/_catalog?marker=access-log-check", timeout=10)
    logged.stop()
    quiet.stop()
    assert '"GET /v2/_catalog?marker=access-log-check HTTP/1.1" 200' in logged.log()
    assert "access-log-check" not in quiet.log()
    assert "Starting gunicorn" in quiet.log()  # the log itself is there, just no access lines


def test_workers_reuse_big_buffers_unless_told_otherwise(
    berth_server_factory: StartServer,
) -> None:
    # glibc reads these at process start: the gunicorn master (and so every worker) has them.
    tuned = berth_server_factory(name="tuned")
    assert _environ(tuned.process.pid)["MALLOC_MMAP_THRESHOLD_"] == str(4 * 1024 * 1024)
    assert _environ(tuned.process.pid)["MALLOC_TRIM_THRESHOLD_"] == str(16 * 1024 * 1024)
    assert _environ(tuned.process.pid)["MALLOC_ARENA_MAX"] == "2"
    mine = berth_server_factory(env={"MALLOC_MMAP_THRESHOLD_": "131072"}, name="mine")
    assert _environ(mine.process.pid)["MALLOC_MMAP_THRESHOLD_"] == "131072"
