"""Retention of cached repositories: when each was last pulled, recorded cheaply, and which
ones gc removes because nobody pulled them for longer than their upstream's `retention`
(or a matching `retention_rules` entry) says.

A pull is not a write: the cache's own writes (a manifest stored, a tag rechecked, a blob
fetched or linked) record it in passing, and a pull answered from the cache records it only
when the last record is older than the recording interval (an hour, or a tenth of a shorter
retention). Each worker remembers what it recorded, so most pulls cost neither a read nor a
write; gc allows for the interval, so a repository is never removed early.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.mirror import queries
from app.mirror.upstreams import Upstreams, record_interval

_REMEMBERED = 10_000  # repositories a worker remembers; past that it starts afresh


class PullLog:
    """Per process: when this worker last knew each cached repository's pull to be recorded
    (time.monotonic()), so it asks the database again only once the interval has passed."""

    def __init__(self) -> None:
        self._known: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, repo: str, interval: float) -> bool:
        with self._lock:
            known = self._known.get(repo)
        return known is None or time.monotonic() - known >= interval

    def noted(self, repo: str, age: float = 0.0) -> None:
        """The database holds a pull of `repo` from `age` seconds ago."""
        with self._lock:
            if len(self._known) >= _REMEMBERED:
                self._known.clear()
            self._known[repo] = time.monotonic() - age


@dataclass(frozen=True)
class Retention:
    """What gc asks (app/registry/gc.py's Expiry): the cached repositories past their
    retention. Own repositories never are: only those the cache wrote, under a prefix."""

    upstreams: Upstreams

    def expired(
        self, session: Session, now: datetime, names: Collection[str] | None = None
    ) -> list[str]:
        found = []
        for upstream in self.upstreams.all:
            if not upstream.retains:
                continue
            for repo in queries.cached_repositories(session, upstream.prefix, names):
                keep = upstream.retention_for(repo.name)
                if keep is None:
                    continue
                # The last pull may be up to one recording interval later than recorded.
                if repo.pulled_at < now - timedelta(seconds=keep + record_interval(keep)):
                    found.append(repo.name)
        return found
