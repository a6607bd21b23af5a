"""Prometheus metrics at /metrics: requests by route and status, body bytes in and out,
request and upload durations. Correct with several gunicorn workers (multiprocess mode).

prometheus_client chooses where values live (process memory, or one mmap file per process
under PROMETHEUS_MULTIPROC_DIR) when it is first imported. `berth serve` prepares that
directory before it starts gunicorn (whose master loads the app), so this module imports
prometheus_client only inside functions, never at import time.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, current_app, request

from app.views.base import Response

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set by prepare_multiprocess_dir when it made the directory itself, so on_exit removes it.
_OWNED_ENV = "BERTH_METRICS_DIR_OWNED"
# Uploads of big layers take minutes; the default buckets stop at 10 s.
UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_UPLOAD_BLUEPRINT = "uploads."
_BYTES_IN = "berth.metrics.bytes_in"
_STARTED = "berth.metrics.started"
# Set on the requests gunicorn_conf sends through the app before forking: not traffic.
WARM_UP = "berth.warm_up"


# --- the gunicorn master: one directory per server, wiped at start -------------------------


def prepare_multiprocess_dir() -> Path:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory before workers start.

    An operator's directory is emptied (values left by an earlier run would be added to this
    run's); without one, a private temporary directory is made, so two servers on one host
    never mix their numbers."""
    configured = os.environ.get(ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="berth-metrics-"))
        os.environ[ENV] = str(path)
        os.environ[_OWNED_ENV] = str(path)
    return path


def mark_worker_dead(pid: int) -> None:
    """A worker exited: its live gauges stop counting; its counters stay in the totals."""
    if os.environ.get(ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def remove_multiprocess_dir() -> None:
    owned = os.environ.get(_OWNED_ENV)
    if owned and owned == os.environ.get(ENV):
        shutil.rmtree(owned, ignore_errors=True)


# --- the workers: instruments, request hooks and the /metrics view ---------------------------


@dataclass(frozen=True)
class Instruments:
    requests: Any
    bytes_in: Any
    bytes_out: Any
    duration: Any
    upload_duration: Any
    offloads: Any


@functools.cache
def instruments() -> Instruments:
    """Built once per process, the first time an app is created in it."""
    from prometheus_client import Counter, Histogram

    return Instruments(
        requests=Counter(
            "berth_http_requests",
            "HTTP requests answered, by route (Flask endpoint), method and status",
            ["route", "method", "status"],
        ),
        bytes_in=Counter(
            "berth_http_request_bytes", "Request body bytes received, by route", ["route"]
        ),
        bytes_out=Counter(
            "berth_http_response_bytes",
            "Response body bytes sent by Berth itself (not offloaded blobs, not HEAD), by route",
            ["route"],
        ),
        duration=Histogram(
            "berth_http_request_duration_seconds",
            "Time from request start until the response is ready (downloads: first byte)",
            ["route", "method"],
            buckets=REQUEST_BUCKETS,
        ),
        upload_duration=Histogram(
            "berth_upload_request_duration_seconds",
            "Duration of blob upload requests (POST/PATCH/PUT), body received and stored",
            ["route", "status"],
            buckets=UPLOAD_BUCKETS,
        ),
        offloads=Counter(
            "berth_blob_offloads",
            "Blob GETs handed to the front end (X-Accel-Redirect / X-Sendfile)",
            ["mode"],
        ),
    )


class _CountingInput:
    """wsgi.input that counts what the view reads (chunked uploads have no Content-Length)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.count = 0

    def read(self, *args: Any) -> bytes:
        data: bytes = self._stream.read(*args)
        self.count += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        # Werkzeug's LimitedStream reads through readinto when the stream has it (the test
        # client's BytesIO); gunicorn's body has only read.
        if hasattr(self._stream, "readinto"):
            size = self._stream.readinto(buffer) or 0
        else:
            data = self._stream.read(len(buffer))
            size = len(data)
            buffer[:size] = data
        self.count += size
        return size

    def readline(self, *args: Any) -> bytes:
        data: bytes = self._stream.readline(*args)
        self.count += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        for line in self._stream:
            self.count += len(line)
            yield line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _counted(body: Iterable[bytes], route: str, ins: Instruments) -> Iterator[bytes]:
    sent = 0
    try:
        for chunk in body:
            sent += len(chunk)
            yield chunk
    finally:
        ins.bytes_out.labels(route).inc(sent)
        close = getattr(body, "close", None)
        if close is not None:
            close()


def _route() -> str:
    rule = request.url_rule
    return rule.endpoint if rule is not None else "unmatched"


def _record(response: Response) -> Response:
    if request.environ.get(WARM_UP):
        return response
    ins = instruments()
    route, method = _route(), request.method
    ins.requests.labels(route, method, str(response.status_code)).inc()
    counter = request.environ.get(_BYTES_IN)
    if counter is not None and counter.count:
        ins.bytes_in.labels(route).inc(counter.count)
    elapsed = time.perf_counter() - request.environ.get(_STARTED, time.perf_counter())
    ins.duration.labels(route, method).observe(elapsed)
    if route.startswith(_UPLOAD_BLUEPRINT) and method in ("POST", "PATCH", "PUT"):
        ins.upload_duration.labels(route, str(response.status_code)).observe(elapsed)
    for header, mode in (("X-Accel-Redirect", "x-accel-redirect"), ("X-Sendfile", "x-sendfile")):
        if header in response.headers:
            ins.offloads.labels(mode).inc()
    if method == "HEAD" or response.status_code in (204, 304):
        return response
    if response.content_length is not None:
        # Sent as declared (sendfile included); a client that hangs up early is overcounted.
        ins.bytes_out.labels(route).inc(response.content_length)
    elif response.response is not None:
        response.response = _counted(response.response, route, ins)
    return response


def metrics_view() -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    if os.environ.get(ENV):
        # Every worker's numbers, summed from the files all of them write.
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    body = generate_latest(registry) + _notification_lines()
    return Response(body, content_type=CONTENT_TYPE_LATEST)


def _notification_lines() -> bytes:
    """Webhook outbox state per endpoint, read from the database at scrape time (it is shared
    by every worker and instance, so no process-local counter could say it)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    from app.notifications import delivery

    numbers = delivery.counts(current_app.extensions["berth"])
    if not numbers:
        return b""
    family = GaugeMetricFamily(
        "berth_notification_events",
        "Webhook events per endpoint: pending, sent (within retention), failed attempts",
        labels=["endpoint", "state"],
    )
    for endpoint, states in sorted(numbers.items()):
        for state, value in sorted(states.items()):
            family.add_metric([endpoint, state], value)

    class _Collector:
        def collect(self) -> Iterator[GaugeMetricFamily]:
            yield family

    registry = CollectorRegistry()
    registry.register(_Collector())
    return generate_latest(registry)


def init_app(app: Flask) -> None:
    instruments()
    inner = app.wsgi_app

    def counting_input(environ: dict[str, Any], start_response: Any) -> Any:
        # Here, not in before_request: a hook that answers early (401) must still be timed.
        environ[_STARTED] = time.perf_counter()
        counter = _CountingInput(environ["wsgi.input"])
        environ["wsgi.input"] = counter
        environ[_BYTES_IN] = counter
        return inner(environ, start_response)

    app.wsgi_app = counting_input  # type: ignore[method-assign]

    app.after_request(_record)
    app.add_url_rule("/metrics", "metrics", metrics_view, methods=["GET"])
