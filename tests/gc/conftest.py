"""Garbage-collection fixtures: the API fixtures on a real filesystem store (gc deletes files),
plus the end-to-end ones (real `berth serve`, fresh PostgreSQL databases)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from app import create_app
from tests.e2e.conftest import berth_server_factory, pg_database  # noqa: F401 - fixtures


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    return tmp_path / "storage"


@pytest.fixture
def app(
    database_url: str, storage_root: Path, settings_overrides: dict[str, object]
) -> Iterator[Flask]:
    """Overrides tests/conftest.py's app: a filesystem driver, so freed bytes can be seen."""
    flask_app = create_app(
        {
            "database_url": database_url,
            "storage_driver": "filesystem",
            "storage_root": str(storage_root),
            **settings_overrides,
        }
    )
    flask_app.testing = True
    yield flask_app
    flask_app.extensions["berth"].db.dispose()
