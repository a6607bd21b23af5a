"""`docker-compose up -d --build` of compose.yml for real, against a private Docker Engine
(tests/e2e/dockerd.py), with the base images made by deploy/local-images.sh (no Docker Hub).

One project for the module, named at random, published on 127.0.0.1 through a generated .env;
an override file (in the test's temporary directory, never in the checkout) mounts the CA and
certificate from deploy/gen-certs.sh and gives the build the host's network: the engine runs
with --bridge=none, and the image build needs PyPI. The project is always taken down with its
volumes; images stay for the engine's life (this module), and the local-images cache keeps
the base images for the next run.

    .venv/bin/pytest -m compose tests/deploy
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import skip_or_fail
from tests.deploy.frontends import DEPLOY, ROOT, free_port, gen_certs
from tests.e2e.clients import ClientError, ClientSandbox
from tests.e2e.docker.conftest import TOOLS
from tests.e2e.dockerd import (
    BUSYBOX,
    BigFile,
    DockerCLI,
    DockerEngine,
    clean_env,
    docker_archive,
    is_static,
    running_engine,
)
from tests.e2e.ocilayout import OciImage, build_oci_layout, layout_differences, read_layout

pytestmark = [pytest.mark.compose, pytest.mark.e2e]

SERVICES = ("postgres", "berth", "nginx")
HEALTHY_TIMEOUT = 240.0
LOCAL_IMAGES_TIMEOUT = 1800.0  # debootstrap and two package builds, the first time
BUILD_TIMEOUT = 900.0
TIMEOUT = 30
STATE_FORMAT = "{{.State.Status}} {{.State.Health.Status}}"
DEPLOYER = ("deployer", "compose-Secret-7")
TOKEN_RULES = [
    {"repository": "*", "users": ["*"], "actions": ["pull"]},
    {"repository": "*", "users": [DEPLOYER[0]], "actions": ["push"]},
]


@pytest.fixture(scope="module")
def compose_engine() -> Iterator[DockerEngine]:
    """A private containerd + dockerd for this module only: its vfs layers (gigabytes for
    three Debian images) go as soon as the module is done."""
    tools = {**TOOLS, "docker-compose": "docker-compose", "debootstrap": "debootstrap"}
    tools.update(skopeo="skopeo", openssl="openssl")
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            skip_or_fail(f"{tool} not installed (apt-get install -y {package})")
    if not (BUSYBOX.exists() and is_static(BUSYBOX)):
        skip_or_fail(f"no static {BUSYBOX} (apt-get install -y busybox-static)")
    if os.geteuid() != 0:
        skip_or_fail("dockerd and debootstrap need root")
    if not Path("/etc/docker").is_dir():
        skip_or_fail("/etc/docker missing (the docker.io package creates it)")
    with running_engine(cgroup_parent=f"berth-compose-{os.getpid()}") as engine:
        yield engine


@pytest.fixture(scope="module")
def local_images(compose_engine: DockerEngine) -> str:
    """deploy/local-images.sh into the engine; returns its output."""
    env = clean_env(DOCKER_HOST=f"unix://{compose_engine.docker_sock}")
    result = subprocess.run(
        [str(DEPLOY / "local-images.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=LOCAL_IMAGES_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@dataclass
class Project:
    """One compose project: `compose(...)` is docker-compose with its files, .env and name."""

    name: str
    port: int
    files: list[Path]
    env_file: Path
    env: dict[str, str]
    ca: Path
    trust: Path  # a directory holding only ca.crt, for skopeo's --cert-dir

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def compose(
        self,
        *args: str,
        files: list[Path] | None = None,
        input: str | None = None,
        timeout: float = 300.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        argv = ["docker-compose", "--project-directory", str(ROOT), "-p", self.name]
        for f in files or self.files:
            argv += ["-f", str(f)]
        argv += ["--env-file", str(self.env_file), *args]
        result = subprocess.run(
            argv,
            env=self.env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClientError(argv, result.returncode, result.stdout, result.stderr)
        return result

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def health(self, service: str) -> str:
        container = self.container(service)
        if not container:
            return "missing"
        result = subprocess.run(
            ["docker", "inspect", "--format", STATE_FORMAT, container],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        return result.stdout.strip() or result.stderr.strip()

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {service: self.health(service) for service in SERVICES}
            if all(state == "running healthy" for state in states.values()):
                return
            time.sleep(2)
        raise AssertionError(f"not healthy after {timeout:.0f}s: {states}\n{self.logs()}")

    def logs(self) -> str:
        result = self.compose("logs", "--no-color", "--tail", "60", check=False, timeout=60)
        return result.stdout[-12000:] + result.stderr[-2000:]

    def exec(self, service: str, *command: str, input: str | None = None) -> str:
        return self.compose("exec", "-T", service, *command, input=input).stdout

    def get(self, path: str, **kwargs: object) -> requests.Response:
        return requests.get(f"{self.url}{path}", verify=str(self.ca), timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def compose_project(
    compose_engine: DockerEngine, local_images: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    work = tmp_path_factory.mktemp("compose")
    certs = work / "certs"
    trust = gen_certs(certs)
    override = work / "compose.test.yml"
    # The engine has no bridge: only the host's network reaches PyPI during the build.
    override.write_text(
        json.dumps(
            {
                "services": {
                    "berth": {"build": {"context": ".", "network": "host"}},
                    "nginx": {"volumes": [f"{certs}:/etc/nginx/certs:ro"]},
                }
            },
            indent=2,
        )
    )
    port = free_port()
    env_file = work / "env"
    env_file.write_text(
        f"BERTH_PORT=127.0.0.1:{port}\nPOSTGRES_PASSWORD={secrets.token_hex(12)}\nBERTH_WORKERS=2\n"
    )
    env = {
        k: v
        for k, v in clean_env(
            DOCKER_HOST=f"unix://{compose_engine.docker_sock}",
            DOCKER_CONFIG=str(work / "docker-config"),
        ).items()
        if not k.startswith(("BERTH_", "COMPOSE_", "POSTGRES_"))
    }
    project = Project(
        name=f"berthtest{secrets.token_hex(4)}",
        port=port,
        files=[ROOT / "compose.yml", override],
        env_file=env_file,
        env=env,
        ca=certs / "ca.crt",
        trust=trust,
    )
    try:
        project.compose("up", "-d", "--build", timeout=BUILD_TIMEOUT)
        project.wait_healthy()
        yield project
    finally:
        # Containers, networks and volumes; the images stay for the rest of the engine's life.
        project.compose("down", "-v", "--remove-orphans", "--timeout", "20", check=False)


@pytest.fixture
def sandbox() -> Iterator[ClientSandbox]:
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"berth-compose-{secrets.token_hex(4)}"
    try:
        yield ClientSandbox(workdir)  # no insecure registries: TLS is verified
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def docker(compose_engine: DockerEngine, compose_project: Project, tmp_path: Path) -> DockerCLI:
    # Docker skips verification on 127.0.0.0/8 anyway; the CA goes where a user puts it.
    compose_engine.trust(compose_project.host, compose_project.ca)
    return compose_engine.cli(tmp_path / "docker-config")


def skopeo(sandbox: ClientSandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return sandbox.run(["skopeo", "--policy", str(sandbox.policy), *args])


def push_and_pull_back(
    sandbox: ClientSandbox, project: Project, image: OciImage, ref: str, back: Path, *creds: str
) -> None:
    """skopeo copy image -> ref -> back (an OCI layout), verifying the compose CA."""
    copy = ["copy", "--retry-times", "0", "--preserve-digests"]
    skopeo(sandbox, *copy, "--dest-cert-dir", str(project.trust), *creds, image.ref, ref)
    pull_creds = [c.replace("--dest-", "--src-") for c in creds]
    skopeo(sandbox, *copy, "--src-cert-dir", str(project.trust), *pull_creds, ref, f"oci:{back}:v1")


def berth_metric(project: Project, name: str) -> float:
    """A metric of the berth container, read inside it (nginx does not proxy /metrics)."""
    text = project.exec(
        "berth",
        "python",
        "-c",
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:5000/metrics').read().decode())",
    )
    return sum(
        float(m.group(1)) for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    )


# --- the tests, in order: the last one turns token auth on -------------------------------


def _wait_for(docker: DockerCLI, container: str, *probe: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        try:
            return docker("exec", container, *probe).stdout
        except ClientError:
            if time.monotonic() > deadline:
                raise AssertionError(docker("logs", container).stderr[-4000:]) from None
            time.sleep(1)


def test_stand_ins_keep_the_official_images_contracts(
    compose_engine: DockerEngine, local_images: str, tmp_path: Path
) -> None:
    docker = compose_engine.cli(tmp_path / "docker-config")
    initdb = tmp_path / "initdb"
    initdb.mkdir()
    (initdb / "10-table.sql").write_text(
        "CREATE TABLE hello (x int); INSERT INTO hello VALUES (42);"
    )
    (initdb / "20-note.sh").write_text('echo "initdb.d sourced for $POSTGRES_USER"\n')
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "hello.conf.template").write_text(
        'server { listen 8080; location / { return 200 "${GREETING} $request_method"; } }\n'
    )
    postgres, nginx = (f"berth-standin-{secrets.token_hex(4)}" for _ in range(2))
    run = ["run", "--detach", "--network", "none", "--name"]
    try:
        docker(
            *run,
            postgres,
            *("-e", "POSTGRES_USER=alice", "-e", "POSTGRES_PASSWORD=pw", "-e", "POSTGRES_DB=shop"),
            *("-v", f"{initdb}:/docker-entrypoint-initdb.d:ro", "postgres:16-bookworm"),
        )
        docker(
            *run,
            nginx,
            *("-e", "GREETING=hello", "-v", f"{templates}:/etc/nginx/templates:ro", "nginx:1.25"),
        )
        _wait_for(docker, postgres, "pg_isready", "-U", "alice", "-d", "shop")
        # Made on the empty data directory: the user, the database, the initdb.d scripts.
        query = ["psql", "-U", "alice", "-d", "shop", "-tAc", "SELECT x FROM hello"]
        assert docker("exec", postgres, *query).stdout.strip() == "42"
        logs = docker("logs", postgres)
        assert "initdb.d sourced for alice" in logs.stdout + logs.stderr
        # The template rendered with the environment; nginx's own $variables left alone.
        page = _wait_for(docker, nginx, "curl", "-fsS", "http://127.0.0.1:8080/")
        assert page == "hello GET"
    finally:
        with contextlib.suppress(ClientError):  # a container that never started
            docker("rm", "--force", "--volumes", postgres, nginx)


def test_three_services_come_up_healthy_from_the_stand_ins(
    compose_project: Project, local_images: str
) -> None:
    for service in SERVICES:
        assert compose_project.health(service) == "running healthy", service
    # The stand-ins were used (no Docker Hub here), and the image runs Berth from the wheel.
    assert "python:3.11-slim-bookworm" in local_images
    site = compose_project.exec("berth", "python", "-c", "import app; print(app.__file__)")
    assert site.strip().startswith("/usr/local/lib/python3.11/"), site
    response = compose_project.get("/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    assert response.headers["Server"].startswith("nginx/")
    # The published port is on loopback only, as the .env asked.
    ports = compose_project.compose("port", "nginx", "443").stdout.strip()
    assert ports == compose_project.host
    # The postgres stand-in's entry point made the database on the empty volume.
    assert "init process complete" in compose_project.compose("logs", "postgres").stdout


def test_skopeo_push_pull_byte_for_byte_through_nginx(
    compose_project: Project, sandbox: ClientSandbox, tmp_path: Path
) -> None:
    image = build_oci_layout(tmp_path / "src", tag="v1", layers=3, layer_size=512 * 1024, seed=1)
    ref = f"docker://{compose_project.host}/team/skopeo:v1"
    # The certificate really is checked: without the compose CA the push is refused.
    with pytest.raises(ClientError, match="certificate"):
        skopeo(sandbox, "copy", "--retry-times", "0", image.ref, ref)
    push_and_pull_back(sandbox, compose_project, image, ref, tmp_path / "back")
    assert layout_differences(image, read_layout(tmp_path / "back", "v1")) == []
    # The web UI renders through nginx and lists it; its cookie is Secure (X-Forwarded-Proto).
    ui = compose_project.get("/ui/")
    assert ui.status_code == 200 and ">team/skopeo<" in ui.text
    assert "; Secure" in ui.headers["Set-Cookie"]


def test_docker_push_pull_run_through_nginx(compose_project: Project, docker: DockerCLI) -> None:
    ref = f"{compose_project.host}/team/docker:v1"
    archive = Path(docker.config_dir) / "image.tar"
    sums = docker_archive(
        archive, ref, {"etc/message": b"through compose", "data/big": BigFile(8 << 20, seed=3)}
    )
    docker.load(archive)
    digest, _ = docker.push(ref)
    # Only this test's images go: the engine also holds the project's.
    docker.rmi(ref)
    pulled = f"{compose_project.host}/team/docker@{digest}"
    docker("pull", pulled)
    assert docker.run_in(pulled, "cat", "/etc/message") == "through compose"
    assert docker.run_in(pulled, "sha256sum", "/data/big").split()[0] == sums["data/big"]
    docker.rmi(pulled)


def test_range_get_is_answered_206_by_nginx_from_the_blob_volume(
    compose_project: Project,
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upload = requests.post(
        f"{compose_project.url}/v2/team/blob/blobs/uploads/?digest={digest}",
        data=data,
        verify=str(compose_project.ca),
        timeout=TIMEOUT,
    )
    assert upload.status_code == 201, upload.text
    offloads = berth_metric(compose_project, "berth_blob_offloads_total")

    part = compose_project.get(f"/v2/team/blob/blobs/{digest}", headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206
    assert part.headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    assert part.content == data[100:1100]
    assert part.headers["Docker-Content-Digest"] == digest
    whole = compose_project.get(f"/v2/team/blob/blobs/{digest}")
    assert whole.status_code == 200 and whole.content == data
    assert "X-Accel-Redirect" not in whole.headers
    # Berth only said where the file is; nginx read it from the shared volume.
    assert berth_metric(compose_project, "berth_blob_offloads_total") == offloads + 2
    assert compose_project.get("/metrics").status_code == 404


def test_old_docker_and_v1_paths_go_to_the_v1_upstream(compose_project: Project) -> None:
    # No v1 registry runs (it is the `v1` profile): nginx answers those clients 502.
    started = time.monotonic()
    legacy = compose_project.get("/v2/", headers={"User-Agent": "docker/1.5.0 go/go1.4.1"})
    assert legacy.status_code == 502
    # ... promptly (the template's resolver_timeout), even where the name never resolves.
    assert time.monotonic() - started < 15
    assert legacy.headers["Server"].startswith("nginx/")
    assert compose_project.get("/v1/_ping").status_code == 502
    modern = compose_project.get("/v2/", headers={"User-Agent": "docker/1.6.0 go/go1.4.2"})
    assert modern.status_code == 200 and modern.json() == {}


def test_down_then_up_keeps_the_data(
    compose_project: Project, sandbox: ClientSandbox, tmp_path: Path
) -> None:
    image = build_oci_layout(tmp_path / "src", tag="v1", layers=2, layer_size=256 * 1024, seed=2)
    ref = f"docker://{compose_project.host}/team/kept:v1"
    push_and_pull_back(sandbox, compose_project, image, ref, tmp_path / "before")

    compose_project.compose("down", "--timeout", "20")
    assert all(not compose_project.container(s) for s in SERVICES)
    compose_project.compose("up", "-d")
    compose_project.wait_healthy()

    skopeo(
        sandbox,
        "copy",
        "--retry-times",
        "0",
        "--src-cert-dir",
        str(compose_project.trust),
        ref,
        f"oci:{tmp_path / 'after'}:v1",
    )
    assert layout_differences(image, read_layout(tmp_path / "after", "v1")) == []
    # The database was not initialised again: the volume kept it.
    assert "init process complete" not in compose_project.compose("logs", "postgres").stdout


def test_token_auth_through_an_override_with_a_user_made_by_exec(
    compose_project: Project, docker: DockerCLI, tmp_path: Path
) -> None:
    token = tmp_path / "compose.token.yml"
    token.write_text(
        json.dumps(
            {
                "services": {
                    "berth": {
                        "environment": {
                            "BERTH_AUTH": "token",
                            "BERTH_AUTH_RULES": json.dumps(TOKEN_RULES),
                        }
                    }
                }
            }
        )
    )
    files = [*compose_project.files, token]
    compose_project.files = files  # logs and teardown see the same project
    compose_project.compose("up", "-d", files=files)
    compose_project.wait_healthy()
    compose_project.exec(
        "berth", "berth", "user", "add", DEPLOYER[0], "--password-stdin", input=DEPLOYER[1] + "\n"
    )

    challenge = compose_project.get("/v2/")
    assert challenge.status_code == 401
    realm = f'realm="{compose_project.url}/auth/token"'
    assert realm in challenge.headers["WWW-Authenticate"]

    host = compose_project.host
    with pytest.raises(ClientError):
        docker.login(host, DEPLOYER[0], "not-the-password")
    ref = f"{host}/team/token:v1"
    archive = Path(docker.config_dir) / "image.tar"
    docker_archive(archive, ref, {"etc/message": b"token through compose"})
    docker.load(archive)
    docker.login(host, *DEPLOYER)
    digest, _ = docker.push(ref)
    docker("logout", host)
    docker.rmi(ref)
    pulled = f"{host}/team/token@{digest}"
    with pytest.raises(ClientError, match=r"(?i)unauthorized|denied"):
        docker("pull", pulled)
    docker.login(host, *DEPLOYER)
    docker("pull", pulled)
    assert docker.run_in(pulled, "cat", "/etc/message") == "token through compose"
    docker.rmi(pulled)
