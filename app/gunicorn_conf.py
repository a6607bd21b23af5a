"""Gunicorn settings for `berth serve`. Bind and worker count come from the command line.

gthread workers: a slow client pushing a large layer ties up one thread, not a process.
"""

from __future__ import annotations

import gc
import os
import random
import threading
import time
from typing import Any

from app import metrics
from app.config import load_settings

# `berth serve` checked the settings before starting gunicorn.
_settings = load_settings()
# The app is built once, in the master, and the workers fork from it: the pages of
# everything imported and loaded are shared until written (see pre_fork) instead of each
# worker holding its own copy. Measured in docs/performance.md (memory).
preload_app = True
# prometheus_client picks its value store when first imported, which preloading does in
# the master: `berth serve` prepares the shared directory before it starts gunicorn
# (app/metrics.py), not this module, which tests import too.
worker_class = _settings.worker_class
threads = _settings.threads
# Uploads stream for as long as they take; the timeout only catches a wedged worker loop.
timeout = 120
graceful_timeout = 30
keepalive = 75
# Access log: `berth serve` adds --access-logfile - unless access_log is off.
errorlog = "-"
# Several instances may run on one host (and in the tests): no shared control socket.
control_socket_disable = True
forwarded_allow_ips = _settings.forwarded_allow_ips


def post_worker_init(worker: Any) -> None:
    """Each worker purges stale uploads now and then, at a jittered interval, so that no
    single process owns the job and a crashed one leaves nothing behind."""
    from app.notifications import delivery
    from app.registry import uploads

    registry = worker.wsgi.extensions["berth"]
    # Connections the master may have opened while loading belong to it, not to this fork.
    registry.db.after_fork()
    interval = registry.settings.upload_purge_interval

    def loop() -> None:
        while True:
            time.sleep(interval * random.uniform(0.5, 1.5))
            try:
                uploads.purge_stale(registry)
            except Exception:
                worker.log.exception("purging stale uploads failed")

    threading.Thread(target=loop, name="berth-upload-purge", daemon=True).start()
    # Webhook delivery threads (app/notifications/delivery.py), unless left to `berth notify`.
    delivery.start_in_server(registry)
    # The ~90,000 objects of the loaded app live as long as the worker: out of the
    # collector's sight, a full collection takes ~1 ms instead of stopping every thread of
    # the worker for 100-450 ms (GET manifest p99 during the first burst: ~300 -> ~20 ms).
    gc.collect()
    gc.freeze()


_warmed = False


def pre_fork(server: Any, worker: Any) -> None:
    """The loaded app's objects go out of the collector's sight before the fork: a collection
    in a worker would otherwise write to every one of them (their GC headers), and each
    page it touched would be copied into that worker."""
    global _warmed
    if not _warmed:  # once, before the first fork; the master makes little after that
        _warmed = True
        _warm_up(server.app.wsgi())
        gc.collect()
        gc.freeze()


def _warm_up(app: Any) -> None:
    """A few requests through the loaded app in the master, before the first fork. Python
    specialises the bytecode it runs and the libraries fill their caches on first use:
    writes that would otherwise happen in, and be copied into, every worker (~4 MiB each).
    Only routes that change nothing and reach no upstream; metrics do not count them."""
    client = app.test_client()
    for _ in range(20):
        for path in ("/v2/", "/v2/_catalog?n=1", "/healthz", "/readyz"):
            client.get(path, environ_base={metrics.WARM_UP: True})
    app.extensions["berth"].db.dispose()  # the master serves nothing: no connection kept


# Prometheus multiprocess mode (app/metrics.py): a dead worker's live values are dropped,
# and the shared directory goes with the master.
def on_starting(server: Any) -> None:
    server.log.info("metrics: %s=%s", metrics.ENV, os.environ.get(metrics.ENV))


def child_exit(server: Any, worker: Any) -> None:
    metrics.mark_worker_dead(worker.pid)


def on_exit(server: Any) -> None:
    metrics.remove_multiprocess_dir()
