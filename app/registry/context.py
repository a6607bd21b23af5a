"""What every service needs: the database, the storage driver and the settings."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.db import Database
from app.storage import StorageDriver


@dataclass(frozen=True)
class Registry:
    db: Database
    driver: StorageDriver
    settings: Settings
