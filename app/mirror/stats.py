"""The cache's Prometheus counters, per upstream (served at /metrics with the rest).

prometheus_client is imported inside the function, never at import time: gunicorn's master
sets up multiprocess mode before any worker imports it (see app/metrics.py)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Counters:
    hits: Any
    misses: Any
    errors: Any
    fetched: Any
    stale: Any


@functools.cache
def counters() -> Counters:
    from prometheus_client import Counter

    return Counters(
        hits=Counter(
            "berth_mirror_cache_hits",
            "Pulls through the cache answered from what it holds, by upstream and kind",
            ["upstream", "kind"],
        ),
        misses=Counter(
            "berth_mirror_cache_misses",
            "Pulls through the cache that had to ask the upstream, by upstream and kind",
            ["upstream", "kind"],
        ),
        errors=Counter(
            "berth_mirror_upstream_errors",
            "Upstream requests that failed, by upstream and the OCI code answered",
            ["upstream", "code"],
        ),
        fetched=Counter(
            "berth_mirror_upstream_bytes",
            "Blob and manifest bytes fetched from the upstream",
            ["upstream"],
        ),
        stale=Counter(
            "berth_mirror_stale_served",
            "Cached tags served unchecked because their upstream could not be asked",
            ["upstream"],
        ),
    )


def hit(upstream: str, kind: str) -> None:
    counters().hits.labels(upstream, kind).inc()


def miss(upstream: str, kind: str) -> None:
    counters().misses.labels(upstream, kind).inc()


def error(upstream: str, code: str) -> None:
    counters().errors.labels(upstream, code).inc()


def fetched(upstream: str, size: int) -> None:
    counters().fetched.labels(upstream).inc(size)


def stale(upstream: str) -> None:
    counters().stale.labels(upstream).inc()
