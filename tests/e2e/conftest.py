"""End-to-end fixtures: real `berth serve` processes (gunicorn, 2 workers) and fresh databases.

`berth_server_factory` starts as many servers as a test needs (any database URL, any storage
root, so two instances can share both); `berth_server` is one server on a private SQLite file.
When a test fails, the tail of every server log it started is attached to the failure report.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import scratch_postgres, skip_or_fail
from tests.e2e.reference import Reference, free_port

BERTH = Path(sys.executable).parent / "berth"
STARTUP_TIMEOUT = 30.0  # seconds until GET /v2/ must answer 200
STOP_TIMEOUT = 15.0  # seconds between SIGTERM and SIGKILL
LOG_TAIL = 8000  # characters of server log shown with a failure
WORKERS = 2

_E2E_DIR = Path(__file__).resolve().parent
_SERVERS = pytest.StashKey[list["BerthServer"]]()


@dataclass
class BerthServer:
    """One running `berth serve` (gunicorn master + workers, in their own process group)."""

    host: str  # "127.0.0.1:PORT", as container clients want it
    url: str  # "http://127.0.0.1:PORT"
    log_path: Path
    database_url: str
    storage_root: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    log_reported: bool = field(default=False, repr=False)  # already in a failure message

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, limit: int = LOG_TAIL) -> str:
        text = self.log()
        return text if len(text) <= limit else "...\n" + text[-limit:]

    def terminate(self) -> None:
        """Ask gunicorn to shut down (SIGTERM to the whole group); see wait_stopped."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)

    def wait_stopped(self, timeout: float = STOP_TIMEOUT) -> None:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait(timeout=10)
        # Workers outlive a SIGKILLed master: make sure nothing of the group is left.
        _signal_group(self.process, signal.SIGKILL)

    def stop(self) -> None:
        self.terminate()
        self.wait_stopped()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    # start_new_session: the group id is the master's pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(server: BerthServer, timeout: float) -> str | None:
    """None once GET /v2/ gives 200 (or 401); otherwise why not (exited, or timed out)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            return f"berth serve exited with status {code}"
        try:
            response = requests.get(f"{server.url}/v2/", timeout=2)
            if response.status_code in (200, 401):  # 401: auth is on, and it answers
                return None
            last = f"GET /v2/ answered {response.status_code}"
        except requests.RequestException as exc:
            last = f"GET /v2/ failed: {exc.__class__.__name__}"
        time.sleep(0.1)
    return f"not ready after {timeout:.0f}s ({last})"


StartServer = Callable[..., BerthServer]


def add_user(database_url: str, name: str, password: str, cost: int = 4) -> None:
    """An account made the way an operator makes one: `berth user add`."""
    env = {**os.environ, "BERTH_DATABASE_URL": database_url}
    env.pop("BERTH_CONFIG", None)
    subprocess.run(
        [str(BERTH), "user", "add", name, "--password-stdin", "--cost", str(cost)],
        input=password + "\n",
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def berth_server_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartServer]:
    """Returns start(database_url=None, storage_root=None, env=None, name=None, berth=None)
    -> BerthServer.

    Defaults: a fresh SQLite file and storage directory per server, and the `berth` of this
    interpreter (`berth` names another installation's). Servers are stopped at teardown
    (SIGTERM to all at once, SIGKILL after STOP_TIMEOUT).
    """
    servers: list[BerthServer] = []
    request.node.stash[_SERVERS] = servers

    def start(
        database_url: str | None = None,
        storage_root: Path | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
        berth: Path = BERTH,
    ) -> BerthServer:
        workdir = tmp_path_factory.mktemp(name or "berth")
        database_url = database_url or f"sqlite:///{workdir / 'berth.db'}"
        storage_root = Path(storage_root or workdir / "storage")
        server_env = {
            **os.environ,
            "BERTH_DATABASE_URL": database_url,
            "BERTH_STORAGE_ROOT": str(storage_root),
            **(env or {}),
        }
        server_env.pop("BERTH_CONFIG", None)  # only what the test says
        problem = ""
        for attempt in range(3):  # a free port can be taken between probe and bind
            port = _free_port()
            log_path = workdir / f"server-{port}.log"
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [str(berth), "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS)],
                    cwd=workdir,
                    env=server_env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            server = BerthServer(
                host=f"127.0.0.1:{port}",
                url=f"http://127.0.0.1:{port}",
                log_path=log_path,
                database_url=database_url,
                storage_root=storage_root,
                process=process,
            )
            servers.append(server)
            problem = _wait_ready(server, STARTUP_TIMEOUT) or ""
            if not problem:
                return server
            server.stop()
            if "Address already in use" not in server.log() or attempt == 2:
                break
        server.log_reported = True
        pytest.fail(
            f"berth serve on {server.host} did not come up: {problem}\n"
            f"--- server log ({server.log_path}) ---\n{server.log_tail()}",
            pytrace=False,
        )

    yield start

    for server in servers:
        server.terminate()
    for server in servers:
        server.wait_stopped()


@pytest.fixture
def berth_server(berth_server_factory: StartServer) -> BerthServer:
    """One server on its own SQLite database and storage root."""
    return berth_server_factory()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database; dropped after the test."""
    with scratch_postgres("berth_e2e") as url:
        yield url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # This hook sees the whole session's items: mark only those under tests/e2e.
    for item in items:
        if _E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and report.when in ("setup", "call"):
        for server in item.stash.get(_SERVERS, []):
            if server.log_reported:
                continue
            report.sections.append(
                (f"berth server {server.host} log ({server.log_path})", server.log_tail())
            )
    return report


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[Reference]:
    """Debian's docker-registry with htpasswd auth (USER, PASSWORD), stopped at teardown."""
    if shutil.which("docker-registry") is None:
        skip_or_fail("docker-registry not installed (apt-get install -y docker-registry)")
    if shutil.which("skopeo") is None:
        skip_or_fail("skopeo not installed (apt-get install -y skopeo)")  # pushes to it
    server = Reference(tmp_path / "reference", free_port())
    server.workdir.mkdir()
    yield server.start()
    server.stop()
