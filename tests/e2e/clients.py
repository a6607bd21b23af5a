"""Run real registry clients (skopeo, podman, buildah) against a test registry.

Everything runs isolated from the machine's own container setup: each `ClientSandbox` owns a
temp directory with its own registries.conf, policy.json, auth file, storage, HOME/XDG dirs and
containers-image blob-info cache, so tests neither read nor write the user's (or root's) config
and storage, and one test's cached "blob X lives at repo Y" knowledge can't change another
test's HTTP traffic. All registries are spoken to over plain HTTP (tls-verify=false).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

DEFAULT_TIMEOUT = 180.0  # seconds, per client invocation
Creds = tuple[str, str] | str  # (user, password) or "user:password"

# containers/image writes its blob-info cache here when running as root, with no way to
# redirect it from skopeo/podman/buildah 4.x CLIs; we bind-mount a private dir over it.
_SYSTEM_BLOB_CACHE = Path("/var/lib/containers/cache")


class ClientError(RuntimeError):
    """A client command failed or timed out; carries its argv and output."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stdout: str, stderr: str):
        self.argv = list(argv)
        self.returncode = returncode  # None: timed out
        self.stdout = stdout
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited {returncode}"
        msg = f"{' '.join(self.argv)} {status}"
        if stdout.strip():
            msg += f"\n--- stdout ---\n{_tail(stdout)}"
        # stderr last: that is where the clients put the actual error.
        super().__init__(f"{msg}\n--- stderr ---\n{_tail(stderr)}")


def _tail(text: str, limit: int = 4000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def require_tool(name: str) -> str:
    """Return the tool's path, or skip the test (fail instead if BERTH_TEST_STRICT=1)."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} not installed (apt-get install -y {name})"
        if os.environ.get("BERTH_TEST_STRICT") == "1":
            pytest.fail(f"BERTH_TEST_STRICT=1: {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a command; raise ClientError (with stderr) on non-zero exit or timeout."""
    try:
        proc = subprocess.run(
            list(argv),
            env=env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        out, err = _text(exc.stdout), _text(exc.stderr)
        raise ClientError(argv, None, out, err + f"\n(timeout after {timeout}s)") from None
    if proc.returncode != 0:
        raise ClientError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def _text(data: str | bytes | None) -> str:
    # TimeoutExpired carries the partial output as bytes on POSIX even in text mode.
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _creds_arg(creds: Creds) -> str:
    return creds if isinstance(creds, str) else f"{creds[0]}:{creds[1]}"


@functools.cache
def _can_private_mount() -> bool:
    """Whether we may bind-mount over the system blob cache in a private mount namespace."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        _SYSTEM_BLOB_CACHE.mkdir(parents=True, exist_ok=True)  # mount point must exist
        subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"],
            check=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return True


class ClientSandbox:
    """Private configuration + state for containers-image based tools (podman/buildah/skopeo).

    `insecure_registries` ("host:port") are marked insecure in the private registries.conf, so
    even commands without an explicit --tls-verify=false use plain HTTP for them.
    """

    def __init__(self, workdir: Path, insecure_registries: Iterable[str] = ()):
        self.dir = Path(workdir)
        self.root = self.dir / "storage"  # graphroot: images, layers, libpod db
        self.runroot = self.dir / "run"
        self.tmp = self.dir / "tmp"  # TMPDIR: c/image stages big blobs here (default /var/tmp)
        self.libpod_tmp = self.dir / "libpod-tmp"  # podman --tmpdir: events log, alive lock
        self.blob_cache = self.dir / "blob-info-cache"
        self.home = self.dir / "home"
        self.registries_conf = self.dir / "registries.conf"
        self.storage_conf = self.dir / "storage.conf"
        self.containers_conf = self.dir / "containers.conf"
        self.policy = self.dir / "policy.json"
        self.authfile = self.dir / "auth.json"
        for d in (self.root, self.runroot, self.tmp, self.libpod_tmp, self.blob_cache, self.home):
            d.mkdir(parents=True, exist_ok=True)
        self.insecure_registries: list[str] = []
        self.set_insecure_registries(insecure_registries)
        # storage.conf must name driver+runroot itself: podman errors "runroot must be set"
        # with an empty CONTAINERS_STORAGE_CONF even when --root/--runroot flags are given.
        self.storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{self.root}"\nrunroot = "{self.runroot}"\n'
        )
        self.containers_conf.write_text(
            '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\n'
        )
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        if not self.authfile.exists():
            # Must exist: podman stats REGISTRY_AUTH_FILE even for anonymous pulls.
            self.authfile.write_text('{"auths": {}}')

    def set_insecure_registries(self, registries: Iterable[str]) -> None:
        self.insecure_registries = list(dict.fromkeys([*self.insecure_registries, *registries]))
        lines = ["unqualified-search-registries = []"]  # never fall back to docker.io etc.
        for reg in self.insecure_registries:
            lines += ["", "[[registry]]", f'location = "{reg}"', "insecure = true"]
        self.registries_conf.write_text("\n".join(lines) + "\n")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CONTAINERS_REGISTRIES_CONF=str(self.registries_conf),
            CONTAINERS_STORAGE_CONF=str(self.storage_conf),
            CONTAINERS_CONF=str(self.containers_conf),
            REGISTRY_AUTH_FILE=str(self.authfile),
            TMPDIR=str(self.tmp),
            # HOME/XDG: stop fallback reads of ~/.docker/config.json, ~/.config/containers/*,
            # and (non-root) redirect the blob-info cache under XDG_DATA_HOME.
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.home / ".config"),
            XDG_DATA_HOME=str(self.home / ".local/share"),
        )
        env.pop("DOCKER_CONFIG", None)
        env.pop("CONTAINER_HOST", None)  # never talk to a remote podman service
        return env

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """Prefix argv so that, as root, the tool's blob-info cache is our private dir."""
        if not _can_private_mount():
            return list(argv)
        # unshare execs (no fork), so a timeout kill hits the client process itself.
        script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "berth-sandbox",
            str(self.blob_cache),
            str(_SYSTEM_BLOB_CACHE),
            *argv,
        ]

    def run(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        return run(self.wrap(argv), env=self.env(), input=input, timeout=timeout)


_default_sandbox: ClientSandbox | None = None


def default_sandbox() -> ClientSandbox:
    """Process-wide sandbox for one-off skopeo calls; removed at interpreter exit."""
    global _default_sandbox
    if _default_sandbox is None:
        tmp = tempfile.mkdtemp(prefix="berth-clients-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        _default_sandbox = ClientSandbox(Path(tmp))
    return _default_sandbox


def _is_docker(ref: str) -> bool:
    return ref.startswith("docker://")


def skopeo_copy(
    src: str,
    dst: str,
    *,
    creds: Creds | None = None,
    src_creds: Creds | None = None,
    dest_creds: Creds | None = None,
    preserve_digests: bool = True,
    extra_args: Sequence[str] = (),
    sandbox: ClientSandbox | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> str | None:
    """`skopeo copy src dst` over plain HTTP; returns the copied manifest digest.

    `creds` applies to whichever side(s) are docker:// refs; src_creds/dest_creds override.
    preserve_digests (default) makes skopeo fail rather than silently rewrite a manifest,
    so a round trip through the registry must be byte-exact.
    """
    sb = sandbox or default_sandbox()
    digestfile = Path(tempfile.mkstemp(dir=sb.tmp, prefix="digest-")[1])
    argv = [
        "skopeo",
        "--policy",
        str(sb.policy),
        "--tmpdir",
        str(sb.tmp),
        "copy",
        "--retry-times",
        "0",
        "--digestfile",
        str(digestfile),
    ]
    if preserve_digests:
        argv.append("--preserve-digests")
    if _is_docker(src):
        argv.append("--src-tls-verify=false")
        if src_creds or creds:
            argv += ["--src-creds", _creds_arg(src_creds or creds)]  # type: ignore[arg-type]
    if _is_docker(dst):
        argv.append("--dest-tls-verify=false")
        if dest_creds or creds:
            argv += ["--dest-creds", _creds_arg(dest_creds or creds)]  # type: ignore[arg-type]
    argv += [*extra_args, src, dst]
    try:
        sb.run(argv, timeout=timeout)
        return digestfile.read_text().strip() or None
    finally:
        digestfile.unlink(missing_ok=True)


def skopeo_inspect(
    ref: str,
    *,
    raw: bool = False,
    config: bool = False,
    creds: Creds | None = None,
    sandbox: ClientSandbox | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Any:
    """`skopeo inspect` (parsed JSON); raw=True gives the manifest bytes as a str."""
    sb = sandbox or default_sandbox()
    argv = ["skopeo", "--policy", str(sb.policy), "inspect"]
    if _is_docker(ref):
        argv.append("--tls-verify=false")
    if creds:
        argv += ["--creds", _creds_arg(creds)]
    if raw:
        argv.append("--raw")
    if config:
        argv.append("--config")
    out = sb.run([*argv, ref], timeout=timeout).stdout
    return out if raw and not config else json.loads(out)


def skopeo_delete(
    ref: str,
    *,
    creds: Creds | None = None,
    sandbox: ClientSandbox | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> None:
    sb = sandbox or default_sandbox()
    argv = ["skopeo", "--policy", str(sb.policy), "delete", "--tls-verify=false"]
    if creds:
        argv += ["--creds", _creds_arg(creds)]
    sb.run([*argv, ref], timeout=timeout)


def _read_digestfile(path: Path) -> str:
    try:
        return path.read_text().strip()
    finally:
        path.unlink(missing_ok=True)


class Podman:
    """podman with private storage (vfs), config and state; safe to run as root in a sandbox.

    Refs without a transport are podman image names; registry refs may be given as
    "host:port/repo:tag" or "docker://host:port/repo:tag".
    """

    def __init__(
        self,
        workdir: Path | None = None,
        insecure_registries: Iterable[str] = (),
        *,
        sandbox: ClientSandbox | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        if sandbox is None:
            if workdir is None:
                raise ValueError("Podman needs a workdir or a sandbox")
            sandbox = ClientSandbox(workdir, insecure_registries)
        else:
            sandbox.set_insecure_registries(insecure_registries)
        self.sandbox = sandbox
        self.timeout = timeout

    def global_args(self) -> list[str]:
        sb = self.sandbox
        return [
            "podman",
            "--root",
            str(sb.root),
            "--runroot",
            str(sb.runroot),
            "--storage-driver",
            "vfs",  # no overlay/fuse-overlayfs needed inside the sandbox
            "--tmpdir",
            str(sb.libpod_tmp),  # else /run/libpod
            "--cgroup-manager",
            "cgroupfs",  # no systemd here
            "--events-backend",
            "file",  # no journald; log lands in --tmpdir
            "--network-config-dir",
            str(sb.dir / "networks"),  # else /etc/containers/networks
        ]

    def run(
        self, *args: str, input: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.sandbox.run(
            [*self.global_args(), *args], input=input, timeout=timeout or self.timeout
        )

    def _tls_args(self) -> list[str]:
        return ["--tls-verify=false", "--signature-policy", str(self.sandbox.policy)]

    def pull(self, ref: str, *, creds: Creds | None = None, extra_args: Sequence[str] = ()) -> str:
        """Pull (any transport: oci:DIR:TAG, docker://..., host/repo:tag); returns image ID.

        Note: an oci:DIR:TAG pull is named "localhost/DIR:latest" (podman 4.3 drops TAG);
        use the returned ID (= config digest hex) rather than that name.
        """
        args = ["pull", *self._tls_args(), *extra_args]
        if creds:
            args += ["--creds", _creds_arg(creds)]
        out = self.run(*args, ref).stdout.split()
        return out[-1]  # stdout is just the image ID; progress goes to stderr

    def push(
        self,
        image: str,
        dest: str,
        *,
        creds: Creds | None = None,
        extra_args: Sequence[str] = (),
    ) -> str:
        """Push a local image to `dest`; returns the manifest digest the registry accepted.

        Note: podman recompresses layers from its uncompressed storage, so layer and manifest
        digests differ from those of the layout the image was pulled from.
        """
        digestfile = Path(tempfile.mkstemp(dir=self.sandbox.tmp, prefix="digest-")[1])
        args = ["push", *self._tls_args(), "--digestfile", str(digestfile), *extra_args]
        if creds:
            args += ["--creds", _creds_arg(creds)]
        try:
            self.run(*args, image, dest if "://" in dest else f"docker://{dest}")
        except BaseException:
            digestfile.unlink(missing_ok=True)
            raise
        return _read_digestfile(digestfile)

    def tag(self, image: str, *new_names: str) -> None:
        self.run("tag", image, *new_names)

    def rmi(self, *images: str, force: bool = True) -> None:
        self.run("rmi", *(["--force"] if force else []), *images)

    def inspect(self, image: str) -> dict[str, Any]:
        return json.loads(self.run("image", "inspect", image).stdout)[0]

    def image_digest(self, image: str) -> str:
        """Manifest digest recorded for a local image (as pulled)."""
        return self.run("image", "inspect", "--format", "{{.Digest}}", image).stdout.strip()

    def image_id(self, image: str) -> str:
        return self.run("image", "inspect", "--format", "{{.ID}}", image).stdout.strip()

    def exists(self, image: str) -> bool:
        try:
            self.run("image", "exists", image)
        except ClientError as exc:
            if exc.returncode == 1:
                return False
            raise
        return True

    def images(self) -> list[dict[str, Any]]:
        return json.loads(self.run("images", "--format", "json").stdout or "[]")

    def login(self, registry: str, username: str, password: str) -> None:
        # --password-stdin keeps the password out of argv (and thus out of error messages).
        self.run(
            "login",
            "--tls-verify=false",
            "--username",
            username,
            "--password-stdin",
            registry,
            input=password,
        )

    def logout(self, registry: str) -> None:
        self.run("logout", registry)


class Buildah:
    """buildah sharing a Podman's (or any sandbox's) private storage and config."""

    def __init__(self, sandbox: ClientSandbox, *, timeout: float = DEFAULT_TIMEOUT):
        self.sandbox = sandbox
        self.timeout = timeout

    def run(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        sb = self.sandbox
        argv = [
            "buildah",
            "--root",
            str(sb.root),
            "--runroot",
            str(sb.runroot),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--registries-conf",
            str(sb.registries_conf),
            *args,
        ]
        return sb.run(argv, timeout=timeout or self.timeout)

    def push(
        self,
        image: str,
        dest: str,
        *,
        creds: Creds | None = None,
        extra_args: Sequence[str] = (),
    ) -> str:
        """Push a local image to `dest`; returns the pushed manifest digest."""
        digestfile = Path(tempfile.mkstemp(dir=self.sandbox.tmp, prefix="digest-")[1])
        # --retry 0: buildah retries 3x by default, which would hide flaky server errors.
        args = [
            "push",
            "--tls-verify=false",
            "--signature-policy",
            str(self.sandbox.policy),
            "--retry",
            "0",
            "--digestfile",
            str(digestfile),
            *extra_args,
        ]
        if creds:
            args += ["--creds", _creds_arg(creds)]
        try:
            self.run(*args, image, dest if "://" in dest else f"docker://{dest}")
        except BaseException:
            digestfile.unlink(missing_ok=True)
            raise
        return _read_digestfile(digestfile)


def wait_for_registry(host_port: str, timeout: float = 30.0) -> None:
    """Block until GET http://host_port/v2/ answers (200 or 401), else raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host_port}/v2/", timeout=2):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 401:  # auth-enabled registry: alive
                return
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"registry at {host_port} not ready after {timeout}s: {last}")
