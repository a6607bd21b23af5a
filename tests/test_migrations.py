"""Alembic from an empty database to head, on SQLite and PostgreSQL, matching the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from app.db.models import Base
from app.db.session import engine_url
from app.migrate import alembic_config, upgrade
from tests.conftest import scratch_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/fresh.db"
        return
    with scratch_postgres("berth_migrate") as url:
        yield url


def test_empty_to_head_matches_the_models(empty_database: str) -> None:
    upgrade(empty_database)
    engine = create_engine(engine_url(empty_database))
    with engine.connect() as conn:
        assert set(Base.metadata.tables) <= set(inspect(conn).get_table_names())
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_upgrade_is_idempotent_and_downgrade_empties(empty_database: str) -> None:
    from alembic import command

    upgrade(empty_database)
    upgrade(empty_database)  # a second `berth serve` start must be a no-op
    command.downgrade(alembic_config(empty_database), "base")
    engine = create_engine(engine_url(empty_database))
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    engine.dispose()


def test_mirror_retention_backfills_the_cache_repositories_last_checks(
    empty_database: str,
) -> None:
    """Repositories cached before 0009 get a last pull from their tags' last check; the
    others (Berth's own among them) none, so retention never takes them."""
    from alembic import command

    config = alembic_config(empty_database)
    command.upgrade(config, "0008_ui_sessions")
    engine = create_engine(engine_url(empty_database))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO repository (id, name, created_at) VALUES"
                " (1, 'docker.io/library/alpine', '2026-01-01 00:00:00+00'),"
                " (2, 'team/own', '2026-01-01 00:00:00+00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO mirror_tag (repository_id, name, digest, checked_at) VALUES"
                " (1, '3', 'sha256:a', '2026-02-01 00:00:00+00'),"
                " (1, 'edge', 'sha256:b', '2026-03-01 00:00:00+00')"
            )
        )
    command.upgrade(config, "head")
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT repository_id, pulled_at FROM mirror_repository"))
        found = [(repo, str(at)[:10]) for repo, at in rows]
    engine.dispose()
    assert found == [(1, "2026-03-01")]
