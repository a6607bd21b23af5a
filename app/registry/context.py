"""What the content services need from the composition root (app/context.py's Registry):
the settings, the database, the storage driver and the notification outbox."""

from __future__ import annotations

from typing import Protocol

from app.notifications.context import Context as NotificationContext
from app.storage import StorageDriver


class Context(NotificationContext, Protocol):
    @property
    def driver(self) -> StorageDriver: ...
