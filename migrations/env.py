"""Alembic environment: online migrations only, under an advisory lock on PostgreSQL so
that several `berth serve` processes starting together migrate once."""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, text

from app.db.models import Base
from app.db.session import engine_url

config = context.config
if config.config_file_name:
    fileConfig(config.config_file_name)

# An arbitrary constant shared by every Berth process: the migration lock's key.
MIGRATION_LOCK = 0x4265727468


def run_migrations_online() -> None:
    # From the alembic command line, BERTH_DATABASE_URL wins over alembic.ini.
    url = os.environ.get("BERTH_DATABASE_URL") if config.config_file_name else None
    engine = create_engine(engine_url(url or config.get_main_option("sqlalchemy.url") or ""))
    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=Base.metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if postgres:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                connection.commit()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Berth migrates online only: run `berth migrate`.")
run_migrations_online()
