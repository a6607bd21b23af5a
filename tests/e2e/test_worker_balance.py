"""Connections that arrive together spread over the workers (app/gunicorn_worker.py): a
worker whose threads are all busy leaves new connections to the others."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from pathlib import Path

import requests

from tests.e2e.conftest import WORKERS, BerthServer, StartServer

THREADS = 2


def _workers(master: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                pids.append(int(entry.name))
    return pids


def _server_side_inodes(port: int, client_ports: set[int]) -> set[str]:
    """Socket inodes of the server's ends of our connections, from /proc/net/tcp."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == port and int(remote.split(":")[1], 16) in client_ports:
            inodes.add(inode)
    return inodes


def _holders(server: BerthServer, client_ports: set[int]) -> dict[int, int]:
    """How many of our connections each worker holds."""
    port = int(server.host.rsplit(":", 1)[1])
    inodes = _server_side_inodes(port, client_ports)
    held: dict[int, int] = {}
    for pid in _workers(server.process.pid):
        fd_dir = Path(f"/proc/{pid}/fd")
        links = []
        for fd in fd_dir.iterdir():
            try:
                links.append(os.readlink(fd))
            except OSError:
                continue
        count = sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)
        if count:
            held[pid] = count
    return held


def test_busy_worker_leaves_new_connections_to_the_others(
    berth_server_factory: StartServer,
) -> None:
    server = berth_server_factory(env={"BERTH_THREADS": str(THREADS)})
    capacity = WORKERS * THREADS
    blob = os.urandom(32 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    pushed = requests.post(
        f"{server.url}/v2/balance/blobs/uploads/?digest={digest}", data=blob, timeout=60
    )
    assert pushed.status_code == 201
    # Each connection GETs the blob and reads none of it: the thread sending it is busy
    # until the socket buffers are full, then blocked sending. (A thread waiting for an
    # upload's next bytes does not count: tests/e2e/test_slow_clients.py.)
    clients = []
    try:
        for _ in range(capacity):
            sock = socket.create_connection(("127.0.0.1", int(server.host.rsplit(":", 1)[1])))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(
                f"GET /v2/balance/blobs/{digest} HTTP/1.1\r\nHost: {server.host}\r\n\r\n".encode()
            )
            clients.append(sock)
            time.sleep(0.2)  # each arrives while the earlier ones are in progress
        deadline = time.monotonic() + 10
        ports = {sock.getsockname()[1] for sock in clients}
        held = _holders(server, ports)
        while sum(held.values()) < capacity and time.monotonic() < deadline:
            time.sleep(0.1)
            held = _holders(server, ports)
        # No worker took more connections than it has threads: every worker got its share.
        assert sorted(held.values()) == [THREADS] * WORKERS, held
    finally:
        for sock in clients:
            sock.close()
    # The server goes on serving once they are gone.
    assert requests.get(f"{server.url}/v2/", timeout=10).status_code == 200
