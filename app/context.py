"""The composition root: every part of a running registry, built and checked once from the
settings. Views, CLI commands and gunicorn's hooks get what they need from a Registry; the
features (app/registry, app/auth, app/notifications) never import this module, they declare
what they need as small protocols (e.g. app/registry/context.py) that Registry satisfies.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.auth.guard import Guard
from app.auth.policy import Policy
from app.config import ConfigError, Settings
from app.db import Database
from app.mirror.cache import Mirror
from app.mirror.upstreams import Upstream, parse_upstreams
from app.notifications.endpoints import Endpoint, parse_endpoints
from app.notifications.outbox import Outbox
from app.storage import StorageDriver, create_driver


@dataclass(frozen=True)
class Features:
    """The structured settings, parsed and checked with no I/O: what `berth serve` checks
    before it touches the database or the disk. A bad value raises ConfigError naming it."""

    policy: Policy
    endpoints: tuple[Endpoint, ...]
    upstreams: tuple[Upstream, ...] = ()  # the pull-through cache's (app/mirror)

    @classmethod
    def from_settings(cls, settings: Settings) -> Features:
        try:
            endpoints = tuple(parse_endpoints(settings.notifications))
        except ValueError as exc:
            raise ConfigError(f"notifications: {exc}") from exc
        upstreams = parse_upstreams(settings.mirror_upstreams)
        return cls(Policy.from_settings(settings), endpoints, upstreams)


def storage_driver(settings: Settings) -> StorageDriver:
    """The configured driver (the filesystem driver creates its root)."""
    return create_driver(
        settings.storage_driver,
        {
            "root": settings.storage_root,
            "bucket": settings.s3_bucket,
            "endpoint_url": settings.s3_endpoint_url,
            "region": settings.s3_region,
            "access_key": settings.s3_access_key,
            "secret_key": settings.s3_secret_key,
            "prefix": settings.s3_prefix,
            "redirect": str(settings.s3_redirect),
            "part_size": str(settings.s3_part_size),
        },
    )


@dataclass(frozen=True)
class Registry:
    settings: Settings
    db: Database
    driver: StorageDriver
    outbox: Outbox
    policy: Policy
    guard: Guard | None  # None while auth = "none"
    mirror: Mirror  # the pull-through cache's upstreams and their clients (empty: none)

    @classmethod
    def from_settings(cls, settings: Settings, driver: StorageDriver | None = None) -> Registry:
        """Everything the settings describe (or the driver given, for tests)."""
        features = Features.from_settings(settings)
        db = Database(settings.database_url, settings.sqlite_busy_timeout)
        guard = Guard(settings, db, features.policy) if settings.auth != "none" else None
        return cls(
            settings=settings,
            db=db,
            driver=driver if driver is not None else storage_driver(settings),
            outbox=Outbox(features.endpoints),
            policy=features.policy,
            guard=guard,
            mirror=Mirror(features.upstreams),
        )

    def close(self) -> None:
        self.db.dispose()
