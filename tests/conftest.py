"""Fixtures shared by the API tests: an app per test on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from app import create_app
from app.db.models import Base
from app.db.session import engine_url
from app.migrate import upgrade
from bench.scratch import postgres_database
from tests.helpers import RegistryClient
from tests.s3server import S3Server, running_s3_server

STRICT = os.environ.get("BERTH_TEST_STRICT") == "1"
PG_ADMIN_URL = os.environ.get(
    "BERTH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def skip_or_fail(reason: str) -> NoReturn:
    """Locally a missing service skips; in CI (BERTH_TEST_STRICT=1) it fails the run."""
    if STRICT:
        pytest.fail(f"{reason} (BERTH_TEST_STRICT=1 forbids skipping)", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    """The URL of a new, empty database on the test server (bench/scratch.py, which the
    benchmarks use too), dropped afterwards with whatever connections a server left."""
    try:
        url, drop = postgres_database(prefix, PG_ADMIN_URL)
    except OperationalError as exc:
        skip_or_fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    try:
        yield url
    finally:
        drop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the local PostgreSQL server, migrated once for the whole run."""
    with scratch_postgres("berth_test") as url:
        upgrade(url)
        yield url


def _empty_postgres(url: str) -> None:
    engine = create_engine(engine_url(url))
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated once; each test starts from a copy (0.1 ms, where running
    the migrations again took most of an API test's time)."""
    path = tmp_path_factory.mktemp("template") / "berth.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "berth.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    _empty_postgres(url)
    return url


@pytest.fixture
def settings_overrides() -> dict[str, object]:
    """Tests override this to change settings (delete switch, upload age, ...)."""
    return {}


@pytest.fixture
def app(database_url: str, settings_overrides: dict[str, object]) -> Iterator[Flask]:
    flask_app = create_app(
        {"database_url": database_url, "storage_driver": "inmemory", **settings_overrides}
    )
    flask_app.testing = True
    yield flask_app
    flask_app.extensions["berth"].db.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def registry(client: FlaskClient) -> RegistryClient:
    return RegistryClient(client)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One local S3-compatible server (moto, its own process) for the whole run."""
    if importlib.util.find_spec("moto") is None:
        skip_or_fail("moto is not installed: pip install -e '.[test]' (moto[server])")
    with running_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server
