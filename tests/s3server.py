"""A local S3-compatible server for the tests: moto's server mode in its own process.

A real HTTP server on a free port, so the S3 driver is tested over the wire exactly as it talks
to AWS S3 or MinIO, and `berth serve` subprocesses can share it. One server per test session;
each user takes a bucket (or a key prefix) of its own.
"""

from __future__ import annotations

import contextlib
import functools
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import requests
from botocore.config import Config

ACCESS_KEY = "berth-test"
SECRET_KEY = "berth-test-secret"
REGION = "us-east-1"
STARTUP_TIMEOUT = 30.0


@dataclass
class S3Server:
    endpoint_url: str
    log_path: Path

    @functools.cached_property
    def _client(self) -> Any:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}),
        )

    def client(self) -> Any:
        """A boto3 S3 client on this server (one, shared: making one takes most of a second)."""
        return self._client

    def new_bucket(self) -> str:
        name = f"berth-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def driver_params(self, bucket: str, **extra: str) -> dict[str, str]:
        """create_driver("s3", ...) params for this server."""
        return {
            "bucket": bucket,
            "endpoint_url": self.endpoint_url,
            "region": REGION,
            "access_key": ACCESS_KEY,
            "secret_key": SECRET_KEY,
            **extra,
        }

    def server_env(self, bucket: str, **extra: str) -> dict[str, str]:
        """BERTH_* variables that make `berth serve` keep its blobs in this bucket."""
        env = {
            "BERTH_STORAGE_DRIVER": "s3",
            "BERTH_S3_BUCKET": bucket,
            "BERTH_S3_ENDPOINT_URL": self.endpoint_url,
            "BERTH_S3_REGION": REGION,
            "BERTH_S3_ACCESS_KEY": ACCESS_KEY,
            "BERTH_S3_SECRET_KEY": SECRET_KEY,
        }
        env.update({f"BERTH_S3_{key.upper()}": value for key, value in extra.items()})
        return env

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            entry["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for entry in page.get("Contents", [])
        ]

    def open_multipart_uploads(self, bucket: str) -> list[str]:
        listed = self.client().list_multipart_uploads(Bucket=bucket)
        return [upload["Key"] for upload in listed.get("Uploads", [])]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_s3_server(workdir: Path) -> Iterator[S3Server]:
    """Start `python -m moto.server` on a free port; stop it on exit."""
    problem = "not started"
    for _ in range(3):  # the port can be taken between probe and bind
        port = _free_port()
        log_path = workdir / f"moto-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = S3Server(f"http://127.0.0.1:{port}", log_path)
        problem = _wait_ready(server, process)
        if not problem:
            try:
                yield server
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            return
        process.kill()
        process.wait(timeout=10)
    raise RuntimeError(f"moto server did not start: {problem}\n{log_path.read_text()[-4000:]}")


def _wait_ready(server: S3Server, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with status {process.returncode}"
        try:
            requests.get(f"{server.endpoint_url}/moto-api/", timeout=2)
            return ""
        except requests.RequestException:
            time.sleep(0.1)
    return "no answer"
