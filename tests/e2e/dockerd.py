"""A private Docker Engine for the end-to-end tests: its own containerd and dockerd.

Nothing of the machine's own Docker setup is read or changed: both daemons run from one
temporary directory (data, exec and state roots, sockets, config files, logs) and are stopped
by PID at the end. dockerd has no option to move its certs.d directory (registry.CertsDir()
is /etc/docker/certs.d unless running under RootlessKit), and 20.10 also writes key.json
into /etc/docker. So both daemons share a private mount namespace in which /etc/docker is a
bind mount of <tmp>/etc-docker: per-registry CAs go in `certs_d` and dockerd reads them
there, as it would read /etc/docker/certs.d, while the real /etc/docker is never touched.
/run is an empty tmpfs there, since containerd 1.6 puts shim sockets in /run/containerd/s
whatever its state directory. containerd lives in the same namespace so that what dockerd
mounts (network namespaces, /dev/shm) is visible to the shims and runc it starts.

Docker treats every registry on 127.0.0.0/8 as insecure (HTTPS without verification, then
plain HTTP), so a TLS test that should prove the CA is checked needs a registry on another
address: `host_address()` finds one.

Images are made without any registry: `docker_archive` writes a `docker save` tarball (a
static busybox layer plus a layer of test files) for `docker load`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from tests.e2e.clients import ClientError, run

START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0  # seconds between SIGTERM and SIGKILL
NAMESPACE = "berth-test"  # containerd namespace for ctr (dockerd uses "moby")
BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: one static binary, no libc needed
APPLETS = ("sh", "cat", "ls", "sha256sum", "uname")
_MTIME = 946684800  # 2000-01-01: stable layer digests
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: \d+")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment minus proxies and DOCKER_* settings: everything here is local."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DOCKER_") and k.lower() not in _PROXY_VARIABLES
    }
    return {**env, **extra}


_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@dataclass
class DockerEngine:
    """containerd + dockerd running from `dir`; `docker()` gives a CLI with its own config."""

    dir: Path
    docker_sock: Path
    containerd_sock: Path
    certs_d: Path  # what dockerd sees as /etc/docker/certs.d
    cgroup_parent: str
    containerd: subprocess.Popen[bytes] = field(repr=False)
    dockerd: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def logs(self, limit: int = 6000) -> str:
        parts = []
        for name in ("dockerd.log", "containerd.log"):
            with contextlib.suppress(FileNotFoundError):
                text = (self.dir / name).read_text(errors="replace")
                parts.append(f"--- {name} ---\n{text[-limit:]}")
        return "\n".join(parts)

    def trust(self, registry: str, ca: Path) -> None:
        """Trust `ca` for `registry` (host:port), as /etc/docker/certs.d/HOST:PORT/ca.crt."""
        target = self.certs_d / registry
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(ca, target / "ca.crt")

    def cli(self, config_dir: Path) -> DockerCLI:
        return DockerCLI(self, config_dir)

    def ctr(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
        argv = ["ctr", "--address", str(self.containerd_sock), "--namespace", NAMESPACE, *args]
        return run(argv, env=clean_env(), timeout=timeout)

    def ctr_run(self, image: str, *command: str) -> str:
        """`ctr run --rm`, with runc's state, the I/O FIFOs and the cgroup kept under this
        engine (ctr's defaults are /run/containerd/... and /<namespace>/<id>)."""
        container = f"ctr-{uuid.uuid4().hex[:12]}"
        return self.ctr(
            "run",
            "--rm",
            f"--fifo-dir={self.dir}/ctr-fifo",
            f"--runc-root={self.dir}/ctr-runc",
            f"--cgroup=/{self.cgroup_parent}/{container}",
            image,
            container,
            *command,
        ).stdout

    def stop(self) -> None:
        for process in (self.dockerd, self.containerd):  # dockerd first: it uses containerd
            if process is not None:
                _stop(process)
        # Shims outlive containerd (they are meant to); ours name our socket on their argv.
        for pid in _pids_with_arg(str(self.containerd_sock)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _unmount_under(self.dir)
        _remove_cgroups(self.cgroup_parent)
        shutil.rmtree(self.dir, ignore_errors=True)


class DockerCLI:
    """The docker CLI against one DockerEngine, with DOCKER_CONFIG (and HOME) in `config_dir`
    so `docker login` writes there and never to ~/.docker."""

    def __init__(self, engine: DockerEngine, config_dir: Path):
        self.engine = engine
        self.config_dir = Path(config_dir)
        self.config_dir.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        return clean_env(
            DOCKER_HOST=f"unix://{self.engine.docker_sock}",
            DOCKER_CONFIG=str(self.config_dir),
            HOME=str(self.config_dir),
        )

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], env=self.env(), input=input, timeout=timeout)

    def load(self, archive: Path) -> None:
        self("load", "--input", str(archive))

    def push(self, ref: str) -> tuple[str, str]:
        """Push; returns (manifest digest, the CLI's output)."""
        out = self("push", ref).stdout
        found = PUSH_DIGEST.search(out)
        assert found, f"no digest in docker push output:\n{out}"
        return found.group(1), out

    def login(self, registry: str, user: str, password: str) -> subprocess.CompletedProcess[str]:
        # --password-stdin keeps the password out of argv (and of error messages).
        return self("login", "--username", user, "--password-stdin", registry, input=password)

    def rmi(self, *refs: str) -> None:
        self("rmi", "--force", *refs)

    def remove_all_images(self) -> None:
        ids = self("images", "--all", "--quiet").stdout.split()
        if ids:
            self("rmi", "--force", *dict.fromkeys(ids))

    def inspect(self, ref: str) -> dict[str, object]:
        return json.loads(self("image", "inspect", ref).stdout)[0]

    def run_in(self, image: str, *command: str) -> str:
        """`docker run --rm --network none`: the daemon has no bridge, and tests need none."""
        return self("run", "--rm", "--network", "none", image, *command).stdout


def host_address() -> str | None:
    """An IPv4 address of this machine outside 127.0.0.0/8 (docker verifies TLS there)."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:  # SIOCGIFADDR: the interface's IPv4 address; fails when it has none
                answer = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
        address = socket.inet_ntoa(answer[20:24])
        if not address.startswith("127."):
            return address
    return None


def is_static(executable: Path) -> bool:
    """Whether an ELF executable has no PT_INTERP, i.e. needs no dynamic loader or libc
    (Debian's busybox package is dynamic, busybox-static is not)."""
    with executable.open("rb") as f:
        header = f.read(64)
        if header[:5] != b"\x7fELF\x02":  # 64-bit ELF
            return False
        (phoff,) = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, n * phentsize)[0] != 3 for n in range(phnum))


def start_engine(
    cgroup_parent: str, daemon_config: Mapping[str, object] | None = None
) -> DockerEngine:
    """Start containerd, then dockerd, in a private mount namespace; raise with their logs.

    `daemon_config`: more daemon.json keys (`registry-mirrors`, `insecure-registries`...)."""
    base = Path(tempfile.mkdtemp(prefix="berth-docker-"))  # short: unix socket paths < 108
    etc_docker = base / "etc-docker"
    (etc_docker / "certs.d").mkdir(parents=True)
    containerd_sock = base / "containerd.sock"
    config = base / "containerd.toml"
    config.write_text(
        f"""version = 2
root = "{base}/containerd/root"
state = "{base}/containerd/state"
# The Kubernetes CRI plugin would want CNI and an image-pull sandbox: nothing here uses it.
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{containerd_sock}"
[ttrpc]
  address = "{containerd_sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/containerd/opt"
"""
    )
    # dockerd only consults /etc/docker/daemon.json without --config-file; this one is ours.
    daemon_json = base / "daemon.json"
    daemon_json.write_text(
        json.dumps({"log-level": "info", "debug": False, **(daemon_config or {})})
    )
    with (base / "containerd.log").open("wb") as log:
        containerd = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                'mount --bind "$1" /etc/docker && mount -t tmpfs -o mode=0755 berth-run /run'
                ' && exec containerd --config "$2"',
                "berth-containerd",
                str(etc_docker),
                str(config),
            ],
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    engine = DockerEngine(
        dir=base,
        docker_sock=base / "docker.sock",
        containerd_sock=containerd_sock,
        certs_d=etc_docker / "certs.d",
        cgroup_parent=cgroup_parent,
        containerd=containerd,
    )
    try:
        _wait(
            engine,
            containerd,
            lambda: engine.ctr("version", timeout=10),
        )
        with (base / "dockerd.log").open("wb") as log:
            # nsenter execs dockerd in containerd's namespace: its PID is the Popen's.
            engine.dockerd = subprocess.Popen(
                [
                    "nsenter",
                    f"--mount=/proc/{containerd.pid}/ns/mnt",
                    "dockerd",
                    f"--config-file={daemon_json}",
                    "--storage-driver=vfs",  # works on any filesystem, no kernel modules
                    "--iptables=false",
                    "--ip6tables=false",
                    "--bridge=none",
                    f"--data-root={base}/data",
                    f"--exec-root={base}/exec",
                    f"--host=unix://{engine.docker_sock}",
                    f"--pidfile={base}/docker.pid",
                    f"--containerd={containerd_sock}",
                    # cgroupfs: a plain cgroup parent name, with or without systemd.
                    "--exec-opt=native.cgroupdriver=cgroupfs",
                    f"--cgroup-parent={cgroup_parent}",
                ],
                env=clean_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        probe = engine.cli(base / "probe-config")
        _wait(engine, engine.dockerd, lambda: probe("version"))
    except BaseException:
        engine.stop()
        raise
    return engine


def _wait(engine: DockerEngine, process: subprocess.Popen[bytes], probe: object) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with status {process.returncode}\n{engine.logs()}")
        try:
            probe()  # type: ignore[operator]
            return
        except ClientError as exc:
            last = exc.stderr[-500:]
        time.sleep(0.2)
    raise RuntimeError(f"not ready after {START_TIMEOUT:.0f}s: {last}\n{engine.logs()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=10)


def _pids_with_arg(arg: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if arg.encode() in (proc / "cmdline").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
    return pids


def _unmount_under(root: Path) -> None:
    """Unmount (deepest first) anything still mounted below `root` in our namespace."""
    prefix = str(root) + "/"
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def _remove_cgroups(parent: str) -> None:
    # cgroupfs driver: dockerd made <hierarchy>/<parent>/ in every hierarchy; empty by now.
    for hierarchy in Path("/sys/fs/cgroup").glob("*"):
        with contextlib.suppress(OSError):
            (hierarchy / parent).rmdir()
    with contextlib.suppress(OSError):
        (Path("/sys/fs/cgroup") / parent).rmdir()


# --- images -------------------------------------------------------------------------------


class RandomBytes(io.RawIOBase):
    """`size` pseudo-random bytes from `seed`, read as a stream (no 200 MB in memory)."""

    def __init__(self, size: int, seed: int):
        self.left = size
        self.state = hashlib.sha256(str(seed).encode()).digest()
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        chunk = bytearray()
        while len(chunk) < n:
            # SHAKE output is incompressible, so gzip cannot shrink the layer on the wire.
            self.state = hashlib.sha256(self.state).digest()
            chunk += hashlib.shake_256(self.state).digest(min(n - len(chunk), 1 << 20))
        self.left -= n
        self.sha256.update(chunk)
        return bytes(chunk)


def _add(tar: tarfile.TarFile, name: str, data: bytes | BinaryIO, size: int | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.mode = _MTIME, 0o755 if name.startswith("bin/") else 0o644
    if isinstance(data, bytes):
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        info.size = size or 0
        tar.addfile(info, data)


def _dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, _MTIME
    tar.addfile(info)


def _layer(path: Path, write: object) -> str:
    """Write a layer tar to `path` with `write(tar)`; returns its digest (the diff ID)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        write(tar)  # type: ignore[operator]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _busybox_layer(tar: tarfile.TarFile) -> None:
    _dir(tar, "bin")
    _add(tar, "bin/busybox", BUSYBOX.read_bytes())
    for applet in APPLETS:
        info = tarfile.TarInfo(f"bin/{applet}")
        info.type, info.linkname, info.mtime = tarfile.SYMTYPE, "busybox", _MTIME
        tar.addfile(info)
    for name in ("etc", "tmp", "proc", "sys", "dev"):
        _dir(tar, name)


@dataclass(frozen=True)
class BigFile:
    """A file of `size` seeded random bytes, streamed into a layer."""

    size: int
    seed: int = 0


def docker_archive(
    path: Path,
    tag: str,
    files: Mapping[str, bytes | BigFile],
    arch: str = "amd64",
) -> dict[str, str]:
    """Write a `docker save` archive: a busybox layer, then a layer holding `files`
    ({"etc/x": b"..."}). Returns {file name: sha256 hex} for each BigFile."""
    work = Path(tempfile.mkdtemp(prefix="layers-", dir=path.parent))
    sums: dict[str, str] = {}

    def files_layer(tar: tarfile.TarFile) -> None:
        for name, content in files.items():
            if isinstance(content, BigFile):
                stream = RandomBytes(content.size, content.seed)
                _add(tar, name, stream, content.size)  # type: ignore[arg-type]
                sums[name] = stream.sha256.hexdigest()
            else:
                _add(tar, name, content)

    try:
        diff_ids = [
            _layer(work / "base.tar", _busybox_layer),
            _layer(work / "files.tar", files_layer),
        ]
        config = {
            "architecture": arch,
            "os": "linux",
            "created": "2000-01-01T00:00:00Z",
            "config": {"Env": [_PATH], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [
                {"created": "2000-01-01T00:00:00Z", "created_by": "berth test: busybox"},
                {"created": "2000-01-01T00:00:00Z", "created_by": f"berth test: {tag}"},
            ],
        }
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        layer_names = [f"{d.split(':')[1]}/layer.tar" for d in diff_ids]
        manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": layer_names}]
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as out:
            _add(out, "manifest.json", json.dumps(manifest).encode())
            _add(out, config_name, config_bytes)
            for name, src in zip(layer_names, ("base.tar", "files.tar"), strict=True):
                out.add(work / src, arcname=name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return sums


@contextlib.contextmanager
def running_engine(
    cgroup_parent: str, daemon_config: Mapping[str, object] | None = None
) -> Iterator[DockerEngine]:
    engine = start_engine(cgroup_parent, daemon_config)
    try:
        yield engine
    finally:
        engine.stop()
