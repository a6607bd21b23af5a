"""The configured upstreams, each with its client and this worker's record of pulls, built
once per process by the composition root; and the one rule for writes: a mirrored prefix
takes no pushes."""

from __future__ import annotations

from collections.abc import Sequence

from app.errors import Denied
from app.mirror.client import UpstreamClient
from app.mirror.retention import PullLog, Retention
from app.mirror.upstreams import Route, Upstream, Upstreams


class Mirror:
    def __init__(self, upstreams: Sequence[Upstream] = ()) -> None:
        self.upstreams = Upstreams(tuple(upstreams))
        self._clients = {u.prefix: UpstreamClient(u) for u in self.upstreams.all}
        self.pulls = PullLog()

    @property
    def retention(self) -> Retention | None:
        """gc's view of the cache's retention; None when no upstream has any."""
        if not any(u.retains for u in self.upstreams.all):
            return None
        return Retention(self.upstreams)

    def __bool__(self) -> bool:
        return bool(self.upstreams.all)

    def client(self, upstream: Upstream) -> UpstreamClient:
        return self._clients[upstream.prefix]

    def route(self, name: str, ns: str | None = None) -> Route | None:
        return self.upstreams.route(name, ns) if self.upstreams.all else None

    def refuse_push(self, name: str) -> None:
        """DENIED for a write into a mirrored prefix: its content is the upstream's."""
        upstream = self.upstreams.owner(name) if self.upstreams.all else None
        if upstream is not None:
            raise Denied(
                {"repository": name, "mirror": upstream.prefix, "upstream": upstream.url},
                message=f"{name} is in the pull-through cache of {upstream.url}"
                f" ({upstream.prefix}/): it is a mirror, pushes are refused",
            )
