"""What `berth mirror status` reports: each upstream, whether it answers, what is cached."""

from __future__ import annotations

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
    with reg.db.transaction() as session:
        fetches = [f for f in queries.fetches(session) if f.expires_at >= now]
        sizes = {u.prefix: queries.cache_size(session, u.prefix) for u in reg.mirror.upstreams.all}
    return [
        UpstreamStatus(
            prefix=u.prefix,
            url=u.url,
            default=u.default,
            ttl=u.ttl,
            health=reg.mirror.client(u).ping(),
            cached=sizes[u.prefix],
            fetching=sum(1 for f in fetches if f.upstream == u.prefix),
        )
        for u in reg.mirror.upstreams.all
    ]
