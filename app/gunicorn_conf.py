"""Gunicorn settings for `berth serve`. Bind and worker count come from the command line.

gthread workers: a slow client pushing a large layer ties up one thread, not a process.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from typing import Any

from app.config import load_settings

# `berth serve` checked the settings before starting gunicorn.
_settings = load_settings()
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


# Prometheus multiprocess mode (app/metrics.py): the master prepares the shared directory
# before any worker imports prometheus_client, and drops a dead worker's live values.
def on_starting(server: Any) -> None:
    from app import metrics

    path = metrics.prepare_multiprocess_dir()
    server.log.info("metrics: %s=%s", metrics.ENV, path)


def child_exit(server: Any, worker: Any) -> None:
    from app import metrics

    metrics.mark_worker_dead(worker.pid)


def on_exit(server: Any) -> None:
    from app import metrics

    metrics.remove_multiprocess_dir()
