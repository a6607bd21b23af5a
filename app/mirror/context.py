"""What the pull-through cache needs from the composition root (app/context.py's Registry):
everything the content services need, and the configured upstreams with their clients."""

from __future__ import annotations

from typing import Protocol

from app.mirror.cache import Mirror
from app.registry.context import Context as RegistryContext


class Context(RegistryContext, Protocol):
    @property
    def mirror(self) -> Mirror: ...
