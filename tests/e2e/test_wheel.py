"""The built wheel, installed in a fresh virtualenv outside the checkout, migrates and serves:
what the Dockerfile and `pip install berth-*.whl` users rely on (migrations ship inside)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import StartServer

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ directory of a new virtualenv holding the wheel built from this checkout."""
    work = tmp_path_factory.mktemp("wheel")
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", ROOT, cwd=work
    )
    (wheel,) = (work / "dist").glob("berth-*.whl")
    _run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    _run(work / "venv/bin/pip", "install", "-q", wheel, cwd=work)
    return work / "venv/bin"


def test_wheel_installed_elsewhere_migrates_and_serves(
    installed: Path, berth_server_factory: StartServer, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
    env["BERTH_DATABASE_URL"] = f"sqlite:///{tmp_path / 'migrated.db'}"
    where = _run(
        installed / "python",
        "-c",
        "import app, app.migrate; print(app.__file__); print(app.migrate.MIGRATIONS)",
        cwd=tmp_path,
        env=env,
    ).split()
    # Both come from the virtualenv, not from the checkout the wheel was built in.
    assert all(str(installed.parent) in path and str(ROOT) not in path for path in where)
    assert "up to date" in _run(installed / "berth", "migrate", cwd=tmp_path, env=env)

    server = berth_server_factory(berth=installed / "berth", name="wheel")
    data = b"layer bytes from an installed wheel"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    pushed = requests.post(
        f"{server.url}/v2/wheel/test/blobs/uploads/?digest={digest}", data=data, timeout=30
    )
    assert pushed.status_code == 201, pushed.text
    pulled = requests.get(f"{server.url}/v2/wheel/test/blobs/{digest}", timeout=30)
    assert pulled.status_code == 200 and pulled.content == data
    # The web UI's templates and static files are inside the wheel too.
    page = requests.get(f"{server.url}/ui/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert ">wheel/test</a>" in page.text
    script = requests.get(f"{server.url}/ui/static/ui.js", timeout=30)
    assert script.status_code == 200 and "copyText" in script.text
