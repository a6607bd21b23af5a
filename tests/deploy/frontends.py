"""Real nginx and Apache processes in front of a real `berth serve`, for the deploy tests.

Each proxy runs from its own temporary directory (never the system service), on a free
port, with its configuration rendered from the samples in deploy/ and a main configuration
written here; a tiny HTTP server stands in for a legacy v1 registry.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
NGINX_TEMPLATE = DEPLOY / "nginx" / "berth.conf.template"
APACHE_SITE = DEPLOY / "apache" / "berth.conf"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
START_TIMEOUT = 20.0
_PLACEHOLDER = re.compile(r"\$\{(BERTH_[A-Z0-9_]+)\}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(template: str, values: dict[str, str]) -> str:
    """envsubst restricted to ${BERTH_*}, as `envsubst '${BERTH_...}'` would do it; nginx's
    own $variables stay. A placeholder without a value is an error, not an empty string."""
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def gen_certs(out: Path, *names: str) -> Path:
    """deploy/gen-certs.sh into out/ (names: further host names or addresses); returns a
    directory holding only ca.crt, as the containers tools' --cert-dir wants it (any *.crt
    there is a trusted CA)."""
    subprocess.run(
        ["sh", str(DEPLOY / "gen-certs.sh"), str(out), *names], check=True, capture_output=True
    )
    trust = out / "trust"
    trust.mkdir()
    shutil.copy(out / "ca.crt", trust / "ca.crt")
    return trust


def world_readable_dir(prefix: str) -> Path:
    """A directory the proxies' unprivileged workers (nobody, www-data) can traverse:
    pytest's tmp_path is 0700, so offloaded blob files under it could not be opened."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@dataclass
class Proxy:
    """One running front end: its HTTPS base URL and logs."""

    kind: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    error_log: Path = field(repr=False)
    access_log: Path = field(repr=False)
    address: str = "127.0.0.1"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def logs(self) -> str:
        parts = []
        for path in (self.error_log, self.access_log, self.workdir / "stdout.log"):
            with contextlib.suppress(FileNotFoundError):
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process.poll() is None:
            # nginx: SIGQUIT is a graceful stop; httpd: SIGTERM stops at once (SIGQUIT dumps).
            sig = signal.SIGQUIT if self.kind == "nginx" else signal.SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _wait_listening(proxy: Proxy, ca: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if proxy.process.poll() is not None:
            raise RuntimeError(
                f"{proxy.kind} exited with {proxy.process.returncode}\n{proxy.logs()}"
            )
        try:
            requests.get(f"{proxy.url}/healthz", verify=str(ca), timeout=2)
            return
        except requests.RequestException as exc:
            last = exc.__class__.__name__
        time.sleep(0.1)
    proxy.stop()
    raise RuntimeError(
        f"{proxy.kind} not answering after {START_TIMEOUT}s ({last})\n{proxy.logs()}"
    )


def _values(port: int, certs: Path, upstream: str, v1: str, storage: Path) -> dict[str, str]:
    return {
        "BERTH_LISTEN": str(port),
        "BERTH_SERVER_NAME": "localhost",
        "BERTH_TLS_CERT": str(certs / "server.crt"),
        "BERTH_TLS_KEY": str(certs / "server.key"),
        "BERTH_UPSTREAM": upstream,
        "BERTH_V1_UPSTREAM": v1,
        "BERTH_STORAGE_ROOT": str(storage),
        "BERTH_RESOLVER": "127.0.0.1",
    }


def start_nginx(
    workdir: Path,
    certs: Path,
    upstream: str,
    v1: str,
    storage: Path,
    ca: Path,
    address: str = "127.0.0.1",
) -> Proxy:
    port = free_port()
    values = _values(port, certs, upstream, v1, storage)
    values["BERTH_LISTEN"] = f"{address}:{port}"
    (workdir / "tmp").mkdir(parents=True)
    site = workdir / "berth.conf"
    site.write_text(render(NGINX_TEMPLATE.read_text(), values))
    # The main configuration a distribution ships; the sample is included in http{}. Each
    # client being proxied holds two connections (its own and the one to Berth): the load
    # test's 1,000 slow clients need more than Debian's 768 per worker.
    (workdir / "nginx.conf").write_text(
        f"""
worker_processes 2;
worker_rlimit_nofile 8192;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;
events {{ worker_connections 4096; }}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    include {site};
}}
"""
    )
    argv = ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf")]
    subprocess.run([*argv, "-t"], check=True, capture_output=True)
    with (workdir / "stdout.log").open("wb") as out:
        process = subprocess.Popen(
            [*argv, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proxy = Proxy(
        "nginx", port, workdir, process, workdir / "error.log", workdir / "access.log", address
    )
    _wait_listening(proxy, ca)
    return proxy


_APACHE_MODULES = [
    ("mpm_event_module", "mod_mpm_event.so"),
    ("authn_core_module", "mod_authn_core.so"),
    ("authn_file_module", "mod_authn_file.so"),
    ("authz_core_module", "mod_authz_core.so"),
    ("authz_user_module", "mod_authz_user.so"),
    ("auth_basic_module", "mod_auth_basic.so"),
    ("socache_shmcb_module", "mod_socache_shmcb.so"),
    ("ssl_module", "mod_ssl.so"),
    ("proxy_module", "mod_proxy.so"),
    ("proxy_http_module", "mod_proxy_http.so"),
    ("rewrite_module", "mod_rewrite.so"),
    ("headers_module", "mod_headers.so"),
    ("env_module", "mod_env.so"),
    ("xsendfile_module", "mod_xsendfile.so"),
]


def start_apache(
    workdir: Path,
    certs: Path,
    upstream: str,
    v1: str,
    storage: Path,
    ca: Path,
    htpasswd: Path | None = None,
) -> Proxy:
    """httpd with deploy/apache/berth.conf; with htpasswd, the BerthPolicy variant."""
    port = free_port()
    values = _values(port, certs, upstream, v1, storage)
    values["BERTH_HTPASSWD"] = str(htpasswd or workdir / "no-htpasswd")
    logs = workdir / "logs"
    logs.mkdir(parents=True)
    modules = "\n".join(
        f"LoadModule {name} {APACHE_MODULES / so}"
        for name, so in _APACHE_MODULES
        if (APACHE_MODULES / so).exists()
    )
    # Debian's own main config expects apache2ctl's environment; this one stands alone.
    (workdir / "httpd.conf").write_text(
        f"""
ServerRoot {workdir}
DefaultRuntimeDir {workdir}
PidFile {workdir}/httpd.pid
Mutex file:{workdir} default
ServerName localhost
Listen 127.0.0.1:{port}
User www-data
Group www-data
ErrorLog {logs}/error.log
LogLevel warn
LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
SSLSessionCache shmcb:{workdir}/ssl_scache(512000)
{modules}
Include {APACHE_SITE}
"""
    )
    env = {**os.environ, **values, "APACHE_LOG_DIR": str(logs)}
    argv = ["apache2", "-f", str(workdir / "httpd.conf")]
    if htpasswd is not None:
        argv += ["-D", "BerthPolicy"]
    subprocess.run([*argv, "-t"], check=True, capture_output=True, env=env)
    with (workdir / "stdout.log").open("wb") as out:
        process = subprocess.Popen(
            [*argv, "-D", "FOREGROUND"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proxy = Proxy(
        "apache", port, workdir, process, logs / "berth-error.log", logs / "berth-access.log"
    )
    _wait_listening(proxy, ca)
    return proxy


class V1Stub:
    """Stands in for a legacy v1 registry: answers everything, remembers what it got."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stub.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "user_agent": self.headers.get("User-Agent", ""),
                        "body": body.decode(errors="replace"),
                    }
                )
                payload = b'"v1 stub"'
                self.send_response(404 if self.path.startswith("/v2") else 200)
                self.send_header("X-Registry-Stub", "v1")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _answer

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
