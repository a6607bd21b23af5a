"""gunicorn's gthread worker, with one change: a worker stops accepting new connections while
every one of its threads is busy.

gthread workers all accept from the one listening socket, and a connection stays with the
worker that accepted it for as long as it is kept alive. A burst of clients (a CI fleet,
a proxy opening its upstream connections, wrk) can land on one worker: one core, its threads
fighting over one GIL, the other workers idle. Measured with wrk on the tag page: ~2,700
req/s when the 16 connections spread, ~800 when one worker took them all. Idle keep-alive
connections do not count against the limit, so many quiet clients are still fine
(worker_connections still caps the total).

It reads gthread's own counters (nr_conns, keepalived_conns, pending_conns), which is why
setup.cfg pins gunicorn to 27.x.
"""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker


class BalancedThreadWorker(ThreadWorker):
    @property
    def worker_connections(self) -> int:
        # gthread accepts while nr_conns < worker_connections: that is, while fewer than
        # `threads` connections are in a request (or about to be).
        idle = len(self.keepalived_conns) + len(self.pending_conns)
        return min(self._max_connections, idle + int(self.cfg.threads))

    @worker_connections.setter
    def worker_connections(self, value: int) -> None:
        self._max_connections = value
