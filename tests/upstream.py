"""A real Berth serving HTTP on a free port in a thread: an upstream for the pull-through
cache's API tests. Requests are counted at the upstream (what single flight is about), and a
switch makes it corrupt blob bytes or answer slowly, as a misbehaving registry would."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from app import create_app
from tests.helpers import RegistryClient


class Upstream:
    def __init__(self, database: Path, overrides: dict[str, Any] | None = None) -> None:
        self.app: Flask = create_app(
            {"database_url": f"sqlite:///{database}", "storage_driver": "inmemory",
             "access_log": False, **(overrides or {})}
        )  # fmt: skip
        self.app.testing = True
        self.registry = RegistryClient(self.app.test_client())
        self.requests: Counter[tuple[str, str]] = Counter()  # (method, kind) -> count
        self.corrupt = False  # blob GETs get one byte flipped
        self.delay = 0.0  # seconds before each 64 KiB piece of a blob GET
        self._lock = threading.Lock()
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, method: str, kind: str) -> int:
        with self._lock:
            return self.requests[(method, kind)]

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        kind = "blob" if "/blobs/sha" in path else "manifest" if "/manifests/" in path else "other"
        with self._lock:
            self.requests[(method, kind)] += 1
        body = self.app.wsgi_app(environ, start_response)
        if kind == "blob" and method == "GET" and (self.corrupt or self.delay):
            return self._misbehave(body)
        return body

    def _misbehave(self, body: Iterable[bytes]) -> Iterator[bytes]:
        data = b"".join(body)
        if self.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        for i in range(0, len(data), 64 * 1024):
            time.sleep(self.delay)
            yield data[i : i + 64 * 1024]

    def start(self) -> Upstream:
        self._server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Down: connections to its port are refused until start() again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.app.extensions["berth"].db.dispose()
