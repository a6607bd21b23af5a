"""compose.yml validates with docker-compose (offline, no engine), and the container entry
point waits for the database, migrates and serves, run here against the local PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, inspect

from app.db.session import engine_url
from tests.deploy.frontends import DEPLOY, NGINX_TEMPLATE, ROOT, free_port
from tests.e2e.clients import require_tool

ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
VENV_BIN = Path(sys.executable).parent


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("docker-compose")
    return subprocess.run(
        [tool, "--project-directory", str(ROOT), "-f", str(ROOT / "compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "COMPOSE_"))},
    )


def test_compose_file_validates() -> None:
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr
    services = compose("--profile", "v1", "config", "--services").stdout.split()
    assert sorted(services) == ["berth", "nginx", "postgres", "registryv1"]
    # The legacy v1 registry runs only with `--profile v1`.
    rendered = compose("config").stdout
    assert re.search(r"^  registryv1:\n(?:    .*\n)*?    profiles:\n    - v1$", rendered, re.M)


def test_compose_wires_the_nginx_sample() -> None:
    rendered = compose("config").stdout
    # Every placeholder of the template has a value in the nginx service's environment.
    for name in set(re.findall(r"\$\{(BERTH_[A-Z0-9_]+)\}", NGINX_TEMPLATE.read_text())):
        assert re.search(rf"^\s+{name}: \S", rendered, re.MULTILINE), name
    # Berth offloads blobs to nginx, which reads them from the same volume.
    assert "BERTH_BLOB_OFFLOAD: x-accel-redirect" in rendered
    assert "- blobs:/var/lib/berth/storage:rw" in rendered  # berth writes
    assert "- blobs:/var/lib/berth/storage:ro" in rendered  # nginx reads
    assert "/readyz" in rendered and "condition: service_healthy" in rendered
    # Settings come through the environment: an override shows up.
    env_override = subprocess.run(
        [require_tool("docker-compose"), "-f", str(ROOT / "compose.yml"), "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "BERTH_WORKERS": "7", "BERTH_PORT": "5443"},
        timeout=60,
    )
    assert "BERTH_WORKERS: '7'" in env_override.stdout
    assert "published: 5443" in env_override.stdout or "5443:443" in env_override.stdout


def _entrypoint(env: dict[str, str], *args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            ["sh", str(ENTRYPOINT), *args],
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("BERTH_")},
                "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
                "BERTH_PYTHON": sys.executable,
                **env,
            },
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is None:
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                return
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                continue


class DelayedForwarder:
    """A TCP port that refuses connections until opened, then forwards to PostgreSQL:
    a database that comes up after the container that needs it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.stopped = threading.Event()
        self.listener: socket.socket | None = None

    def open(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.listener is not None
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopped.set()
        if self.listener is not None:
            self.listener.close()


@pytest.fixture
def late_postgres(pg_database: str) -> Iterator[tuple[DelayedForwarder, str]]:
    match = re.match(r"postgresql://([^@]+)@([^:/]+):(\d+)/(.+)$", pg_database)
    assert match, pg_database
    user, host, port, name = match.groups()
    forwarder = DelayedForwarder((host, int(port)))
    yield forwarder, f"postgresql://{user}@127.0.0.1:{forwarder.port}/{name}"
    forwarder.close()


def test_entrypoint_waits_for_the_database_migrates_and_serves(
    late_postgres: tuple[DelayedForwarder, str], pg_database: str, tmp_path: Path
) -> None:
    forwarder, url = late_postgres
    port = free_port()
    log = tmp_path / "entrypoint.log"
    process = _entrypoint(
        {
            "BERTH_DATABASE_URL": url,
            "BERTH_STORAGE_ROOT": str(tmp_path / "storage"),
            "BERTH_DB_WAIT_TIMEOUT": "60",
        },
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        log=log,
    )
    try:
        time.sleep(3)  # the database is not there yet: the script must still be waiting
        assert process.poll() is None, log.read_text()
        assert "is up" not in log.read_text()
        forwarder.open()
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.2)
        output = log.read_text()
        assert ready is not None and ready.status_code == 200, output
        assert re.search(r"database postgresql://postgres@127\.0\.0\.1:\d+/\S+ is up", output)
        assert "database schema is up to date" in output  # `berth migrate` ran
        assert "Starting gunicorn" in output  # then `berth serve` (the default command)
    finally:
        _stop(process)
    engine = create_engine(engine_url(pg_database))
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"alembic_version", "repository", "blob", "manifest", "tag"} <= tables


def test_entrypoint_gives_up_when_the_database_never_comes(tmp_path: Path) -> None:
    log = tmp_path / "entrypoint.log"
    closed = free_port()
    process = _entrypoint(
        {
            "BERTH_DATABASE_URL": f"postgresql://berth:secret@127.0.0.1:{closed}/berth",
            "BERTH_STORAGE_ROOT": str(tmp_path / "storage"),
            "BERTH_DB_WAIT_TIMEOUT": "2",
        },
        log=log,
    )
    try:
        assert process.wait(timeout=30) != 0
    finally:
        _stop(process)
    output = log.read_text()
    assert f"database postgresql://berth:***@127.0.0.1:{closed}/berth not reachable" in output
    assert "secret" not in output
    assert "Starting gunicorn" not in output


def test_local_images_make_every_image_compose_pulls() -> None:
    # deploy/local-images.sh stands in for exactly the images compose.yml (default profile)
    # and the Dockerfile would pull; berth's own image is built, not pulled.
    listed = subprocess.run(
        [str(DEPLOY / "local-images.sh"), "--list"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    rendered = compose("config").stdout
    section = re.search(r"^services:\n((?:  .*\n|\n)*)", rendered, re.M)
    assert section, rendered
    services = re.split(r"^  (?=\w[\w-]*:$)", section.group(1), flags=re.M)
    pulled = {
        match.group(1)
        for block in services
        if not re.search(r"^    (?:build|profiles):", block, re.M)
        and (match := re.search(r"^    image: (\S+)$", block, re.M))
    }
    bases = set(re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M))
    assert sorted(listed) == sorted(pulled | bases)
