"""What `berth mirror status` reports: each upstream, whether it answers, what is cached,
and each cached repository's last pull and when retention removes it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.mirror import queries
from app.mirror.context import Context
from app.mirror.upstreams import Upstream


@dataclass(frozen=True)
class CachedRepository:
    name: str
    last_pull: str  # ISO 8601, UTC
    expires: str | None  # when gc may remove it, unless pulled before; None: never


@dataclass(frozen=True)
class UpstreamStatus:
    prefix: str
    url: str
    default: bool
    ttl: float
    retention: float | None
    health: str  # "up", or "down (why)"
    cached: queries.CacheSize
    fetching: int  # blob fetches in flight now
    repositories: list[CachedRepository]


def _cached(upstream: Upstream, repo: queries.CachedRepository) -> CachedRepository:
    keep = upstream.retention_for(repo.name)
    expires = None if keep is None else (repo.pulled_at + timedelta(seconds=keep)).isoformat()
    return CachedRepository(repo.name, repo.pulled_at.isoformat(), expires)


def report(reg: Context) -> list[UpstreamStatus]:
    now = datetime.now(UTC)
    upstreams = reg.mirror.upstreams.all
    with reg.db.transaction() as session:
        fetches = [f for f in queries.fetches(session) if f.expires_at >= now]
        sizes = {u.prefix: queries.cache_size(session, u.prefix) for u in upstreams}
        cached = {
            u.prefix: [_cached(u, r) for r in queries.cached_repositories(session, u.prefix)]
            for u in upstreams
        }
    # All at once: one upstream that is down costs its connect timeout, not every one's in turn
    # (the web UI's mirror page waits for this).
    with ThreadPoolExecutor(max_workers=max(1, min(len(upstreams), 8))) as pool:
        pings = pool.map(lambda u: reg.mirror.client(u).ping(), upstreams)
        health = {u.prefix: ping for u, ping in zip(upstreams, pings, strict=True)}
    return [
        UpstreamStatus(
            prefix=u.prefix,
            url=u.url,
            default=u.default,
            ttl=u.ttl,
            retention=u.retention,
            health=health[u.prefix],
            cached=sizes[u.prefix],
            fetching=sum(1 for f in fetches if f.upstream == u.prefix),
            repositories=cached[u.prefix],
        )
        for u in upstreams
    ]
