"""What `berth mirror status` reports: each upstream, whether it answers, what is cached."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from app.mirror import queries
from app.mirror.context import Context


@dataclass(frozen=True)
class UpstreamStatus:
    prefix: str
    url: str
    default: bool
    ttl: float
    health: str  # "up", or "down (why)"
    cached: queries.CacheSize
    fetching: int  # blob fetches in flight now


def report(reg: Context) -> list[UpstreamStatus]:
    now = datetime.now(UTC)
    upstreams = reg.mirror.upstreams.all
    with reg.db.transaction() as session:
        fetches = [f for f in queries.fetches(session) if f.expires_at >= now]
        sizes = {u.prefix: queries.cache_size(session, u.prefix) for u in upstreams}
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
            health=health[u.prefix],
            cached=sizes[u.prefix],
            fetching=sum(1 for f in fetches if f.upstream == u.prefix),
        )
        for u in reg.mirror.upstreams.all
    ]
