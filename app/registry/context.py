"""What every service needs: the database, the storage driver and the settings."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.db import Database
from app.storage import StorageDriver, create_driver, driver_params


@dataclass(frozen=True)
class Registry:
    db: Database
    driver: StorageDriver
    settings: Settings

    @classmethod
    def from_settings(cls, settings: Settings, driver: StorageDriver | None = None) -> Registry:
        """The configured database and storage driver (or the driver given, for tests)."""
        if driver is None:
            driver = create_driver(settings.storage_driver, driver_params(settings))
        return cls(Database(settings.database_url), driver, settings)
