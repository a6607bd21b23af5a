"""Fixtures for Docker as a client: one private Docker Engine (containerd + dockerd, see
tests/e2e/dockerd.py) for the whole session, a docker CLI with a fresh config per test, images
built locally with `docker load`, and `berth serve` with access control on."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.deploy.frontends import Proxy, V1Stub, gen_certs, start_nginx, world_readable_dir
from tests.e2e.conftest import BerthServer, StartServer, add_user
from tests.e2e.dockerd import (
    BUSYBOX,
    DockerCLI,
    DockerEngine,
    docker_archive,
    host_address,
    is_static,
    running_engine,
)

TOOLS = {
    "docker": "docker.io",
    "dockerd": "docker.io",
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "unshare": "util-linux",
    "nsenter": "util-linux",
}
RULES = [
    {"repository": "*", "users": ["*"], "actions": ["pull"]},
    {"repository": "*", "users": ["docker-deployer"], "actions": ["push"]},
]
DEPLOYER = ("docker-deployer", "deploy-Secret-1")
READER = ("reader", "reader-Secret-2")


_ENGINE = pytest.StashKey[DockerEngine]()


def require_engine() -> None:
    """Skip (fail under BERTH_TEST_STRICT=1) unless a private engine can run here."""
    for tool, package in TOOLS.items():
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} not installed (apt-get install -y {package})")
    if not (BUSYBOX.exists() and is_static(BUSYBOX)):
        # The images have no libc: only a static busybox runs in them.
        skip_or_fail(f"no static {BUSYBOX} (apt-get install -y busybox-static)")
    if os.geteuid() != 0:
        skip_or_fail("dockerd needs root")
    if not Path("/etc/docker").is_dir():
        # The private namespace binds over it; creating it would touch the real /etc.
        skip_or_fail("/etc/docker missing (the docker.io package creates it)")


@pytest.fixture(scope="session")
def docker_engine(request: pytest.FixtureRequest) -> Iterator[DockerEngine]:
    require_engine()
    with running_engine(cgroup_parent=f"berth-test-{os.getpid()}") as engine:
        request.config.stash[_ENGINE] = engine
        yield engine
        del request.config.stash[_ENGINE]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    engine = item.config.stash.get(_ENGINE, None)
    if engine and report.failed and report.when in ("setup", "call"):
        report.sections.append(("dockerd and containerd logs (tails)", engine.logs()))
    return report


@pytest.fixture
def docker(docker_engine: DockerEngine, tmp_path: Path) -> Iterator[DockerCLI]:
    """The docker CLI with its own DOCKER_CONFIG; the engine's images go at teardown, so
    every pull in a test really downloads."""
    cli = docker_engine.cli(tmp_path / "docker-config")
    cli.remove_all_images()
    yield cli
    cli.remove_all_images()


LoadImage = Callable[..., str]


@pytest.fixture
def load_image(docker: DockerCLI, tmp_path: Path) -> LoadImage:
    """load(tag, message, arch="amd64", files=None) -> tag: busybox plus /etc/message."""

    def load(tag: str, message: str, arch: str = "amd64", files: dict | None = None) -> str:
        archive = tmp_path / f"image-{len(list(tmp_path.glob('image-*')))}.tar"
        docker_archive(archive, tag, {"etc/message": message.encode(), **(files or {})}, arch)
        docker.load(archive)
        archive.unlink()
        return tag

    return load


AuthServer = Callable[..., BerthServer]


@pytest.fixture
def auth_server(berth_server_factory: StartServer, tmp_path: Path) -> AuthServer:
    """start(mode, anonymous_pull=False, env=None): the Apache sample's policy (every user
    pulls, docker-deployer pushes) with DEPLOYER and READER, on SQLite."""

    def start(
        mode: str,
        anonymous_pull: bool = False,
        env: dict[str, str] | None = None,
        storage_root: Path | None = None,
    ) -> BerthServer:
        database_url = f"sqlite:///{tmp_path / f'auth-{mode}.db'}"
        for name, password in (DEPLOYER, READER):
            add_user(database_url, name, password)
        settings = {
            "BERTH_AUTH": mode,
            "BERTH_AUTH_RULES": json.dumps(RULES),
            "BERTH_AUTH_ANONYMOUS_PULL": "true" if anonymous_pull else "false",
            **(env or {}),
        }
        return berth_server_factory(
            database_url=database_url, env=settings, storage_root=storage_root, name=mode
        )

    return start


@dataclass(frozen=True)
class TlsRegistry:
    proxy: Proxy  # nginx from deploy/nginx, on an address docker does not call insecure
    berth: BerthServer  # auth on, blobs sent by nginx (X-Accel-Redirect)
    ca: Path

    @property
    def host(self) -> str:
        return self.proxy.host


@pytest.fixture
def tls_registry(
    request: pytest.FixtureRequest, auth_server: AuthServer, tmp_path: Path
) -> Iterator[TlsRegistry]:
    """Parametrise indirectly with the auth mode; basic by default."""
    for tool in ("nginx", "openssl"):
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} not installed (apt-get install -y {tool})")
    address = host_address()
    if address is None:
        # docker skips certificate checks for 127.0.0.0/8: a loopback test would prove nothing.
        skip_or_fail("no IPv4 address outside 127.0.0.0/8 for a TLS registry docker verifies")
    certs = tmp_path / "certs"
    gen_certs(certs, address)
    storage = world_readable_dir("berth-docker-tls-")  # nginx's workers read blob files
    v1 = V1Stub()
    try:
        berth = auth_server(
            getattr(request, "param", "basic"),
            # The sample's nginx is the one proxy believed (its X-Forwarded-Proto makes
            # the token realm https).
            env={
                "BERTH_BLOB_OFFLOAD": "x-accel-redirect",
                "BERTH_FORWARDED_ALLOW_IPS": "127.0.0.1",
            },
            storage_root=storage / "s",
        )
        proxy = start_nginx(
            tmp_path / "nginx", certs, berth.host, v1.host, storage / "s", certs / "ca.crt", address
        )
        try:
            yield TlsRegistry(proxy, berth, certs / "ca.crt")
        finally:
            proxy.stop()
    finally:
        v1.close()
        shutil.rmtree(storage, ignore_errors=True)
