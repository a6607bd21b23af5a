"""What notification services need from the composition root (app/context.py's Registry)."""

from __future__ import annotations

from typing import Protocol

from app.config import Settings
from app.db import Database
from app.notifications.outbox import Outbox


class Context(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def db(self) -> Database: ...

    @property
    def outbox(self) -> Outbox: ...
