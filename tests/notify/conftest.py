"""Fixtures for the webhook tests: a real receiver, and registries whose endpoints point at it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from app import create_app
from app.context import Registry
from tests.e2e.conftest import (  # noqa: F401  (end-to-end fixtures, reused here)
    berth_server_factory,
    pg_database,
    pytest_runtest_makereport,
)
from tests.helpers import RegistryClient
from tests.notify.receiver import Receiver

# Who the test client says it is: the envelope's request and actor must carry it.
CLIENT_ENVIRON = {
    "REMOTE_ADDR": "10.1.2.3",
    "REMOTE_USER": "alice",
    "HTTP_USER_AGENT": "berth-tests/1.0",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


MakeRegistry = Callable[..., tuple[Registry, RegistryClient]]


@pytest.fixture
def make_registry(database_url: str) -> Iterator[MakeRegistry]:
    """make(endpoints, **settings) -> (Registry, RegistryClient) on the test's database."""
    apps: list[Flask] = []

    def make(endpoints: list[dict[str, Any]], **settings: Any) -> tuple[Registry, RegistryClient]:
        app = create_app(
            {
                "database_url": database_url,
                "storage_driver": "inmemory",
                "notifications": endpoints,
                "notifications_in_server": False,
                **settings,
            }
        )
        app.testing = True
        apps.append(app)
        client = app.test_client()
        client.environ_base.update(CLIENT_ENVIRON)
        return app.extensions["berth"], RegistryClient(client)

    yield make
    for app in apps:
        app.extensions["berth"].db.dispose()
