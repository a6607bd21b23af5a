"""The slow-client target of issue 14, held for real: 1,000 connections (half request heads,
half upload bodies, each trickling a byte a second) for 60 s, against `berth serve` directly
and behind the sample nginx. Meanwhile GET /v2/ on a new connection keeps its p99 under
100 ms and skopeo pushes and pulls take at most twice as long as without the load (the
median of three rounds each way; bench/slow_clients.py runs the same, and prints the
figures)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import slow_clients
from bench.registry_bench import Target, start_berth, start_berth_behind_nginx
from tests.e2e.clients import require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONNECTIONS = 1000
HOLD = 60.0


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return slow_clients.build_images(tmp_path_factory.mktemp("slow") / "image", 16 * 1024 * 1024)


def _start(kind: str, workdir: Path) -> Target:
    if kind == "nginx":
        require_tool("nginx")
        return start_berth_behind_nginx(workdir, None, None)
    return start_berth(workdir, None, None)


@pytest.fixture(params=["direct", "nginx"])
def target(request: pytest.FixtureRequest) -> Iterator[Target]:
    require_tool("skopeo")
    slow_clients.raise_fd_limit()
    # Not under pytest's private base directory: nginx's workers (nobody) read blob files.
    workdir = Path(tempfile.mkdtemp(prefix="berth-slow-load-"))
    workdir.chmod(0o755)
    try:
        started = _start(request.param, workdir)
        try:
            yield started
        finally:
            started.stop()
    finally:
        os.environ.pop("REQUESTS_CA_BUNDLE", None)  # set by start_berth_behind_nginx
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_thousand_slow_connections_leave_the_registry_usable(
    target: Target, image: Path, tmp_path: Path
) -> None:
    figures = slow_clients.run(target, image, tmp_path, CONNECTIONS, HOLD)
    print(figures.line(target.name))
    # Every slow connection was held to the end, none given up by the server.
    assert figures.held_heads + figures.held_bodies >= 0.95 * CONNECTIONS, figures.line("")
    assert figures.lost_bodies == 0
    assert figures.probe_failures == 0
    assert figures.p(0.99) < 100, figures.line(target.name)
    assert figures.push_loaded <= 2 * figures.push_idle, figures.line(target.name)
    assert figures.pull_loaded <= 2 * figures.pull_idle, figures.line(target.name)


def test_slow_bodies_with_basic_auth_are_held_and_the_user_pushes(
    image: Path, tmp_path: Path
) -> None:
    """The bench's berth+basic target, small: the slow PATCHes carry credentials, and the
    bench user may push and pull (basic auth with no rules lets nobody do anything)."""
    require_tool("skopeo")
    require_tool("htpasswd")
    slow_clients.raise_fd_limit()
    workdir = tmp_path / "berth"
    workdir.mkdir()
    started = start_berth(workdir, None, None, slow_clients.add_bench_user(workdir))
    try:
        figures = slow_clients.run(started, image, tmp_path, 40, 8.0, basic=True)
    finally:
        started.stop()
    assert figures.held_bodies == 20 and figures.lost_bodies == 0, figures.line("berth+basic")
    assert figures.probe_failures == 0 and figures.refused == 0, figures.line("berth+basic")
