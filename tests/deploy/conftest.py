"""Fixtures for the deployment tests: certificates from deploy/gen-certs.sh, a v1 stub, and
a `berth serve` behind a real nginx or Apache started from the samples in deploy/."""

from __future__ import annotations

import shutil
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.deploy.frontends import (
    Proxy,
    V1Stub,
    gen_certs,
    start_apache,
    start_nginx,
    world_readable_dir,
)
from tests.e2e.clients import require_tool
from tests.e2e.conftest import (  # noqa: F401 - fixtures shared with the e2e tests
    BerthServer,
    StartServer,
    berth_server_factory,
    pg_database,
)

OFFLOAD = {"nginx": "x-accel-redirect", "apache": "x-sendfile"}


@dataclass(frozen=True)
class Certs:
    dir: Path  # ca.crt, ca.key, server.crt, server.key
    trust: Path  # only ca.crt: what --cert-dir / --src-cert-dir / --dest-cert-dir take

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"


@dataclass(frozen=True)
class Deployment:
    proxy: Proxy
    berth: BerthServer
    v1: V1Stub
    certs: Certs
    storage: Path


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    require_tool("openssl")
    out = tmp_path_factory.mktemp("certs")
    return Certs(out, gen_certs(out))


@pytest.fixture
def storage_root() -> Iterator[Path]:
    path = world_readable_dir("berth-deploy-")
    yield path / "storage"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def v1_stub() -> Iterator[V1Stub]:
    stub = V1Stub()
    yield stub
    stub.close()


def start_deployment(
    kind: str,
    request: pytest.FixtureRequest,
    certs: Certs,
    storage: Path,
    v1: V1Stub,
    tmp_path: Path,
    htpasswd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Deployment]:
    require_tool("nginx" if kind == "nginx" else "apache2")
    # nginx in front of PostgreSQL (as in compose.yml), Apache in front of SQLite.
    database_url = request.getfixturevalue("pg_database") if kind == "nginx" else None
    start: StartServer = request.getfixturevalue("berth_server_factory")
    berth = start(
        database_url=database_url,
        storage_root=storage,
        # As the samples say: the front end on this host is the one proxy believed.
        env={
            "BERTH_BLOB_OFFLOAD": OFFLOAD[kind],
            "BERTH_FORWARDED_ALLOW_IPS": "127.0.0.1",
            **(env or {}),
        },
        name=f"berth-{kind}",
    )
    workdir = tmp_path / kind
    if kind == "nginx":
        proxy = start_nginx(workdir, certs.dir, berth.host, v1.host, storage, certs.ca)
    else:
        proxy = start_apache(
            workdir, certs.dir, berth.host, v1.host, storage, certs.ca, htpasswd=htpasswd
        )
    try:
        yield Deployment(proxy, berth, v1, certs, storage)
    finally:
        proxy.stop()


@pytest.fixture(params=["nginx", "apache"])
def deployment(
    request: pytest.FixtureRequest,
    certs: Certs,
    storage_root: Path,
    v1_stub: V1Stub,
    tmp_path: Path,
) -> Iterator[Deployment]:
    yield from start_deployment(request.param, request, certs, storage_root, v1_stub, tmp_path)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed compose test shows the tails of its services' logs."""
    report = yield
    project = getattr(item, "funcargs", {}).get("compose_project")
    if project is not None and report.failed and report.when == "call":
        report.sections.append(("docker-compose logs (tails)", project.logs()))
    return report
