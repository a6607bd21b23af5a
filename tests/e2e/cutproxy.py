"""A loopback TCP proxy that drops one connection once, mid-request: a real dropped
connection for the client's resume logic to survive."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class CutProxy:
    def __init__(self, upstream: tuple[str, int], cut_after: int, marker: bytes) -> None:
        """Forward to `upstream`; the first connection whose request starts with `marker`
        (b"PATCH") is closed after `cut_after` bytes of it went upstream."""
        self.upstream, self.cut_after, self.marker = upstream, cut_after, marker
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CutProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        back = threading.Thread(target=self._pipe, args=(upstream, client), daemon=True)
        back.start()
        armed, count = False, 0
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if not armed and self.cuts == 0 and data.startswith(self.marker):
                    armed = True
                if armed:
                    if count + len(data) > self.cut_after:
                        upstream.sendall(data[: self.cut_after - count])
                        self.cuts += 1
                        break
                    count += len(data)
                upstream.sendall(data)
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def cut_proxy(host: str, cut_after: int, marker: bytes = b"PATCH") -> Iterator[CutProxy]:
    name, port = host.rsplit(":", 1)
    with CutProxy((name, int(port)), cut_after, marker) as proxy:
        yield proxy
