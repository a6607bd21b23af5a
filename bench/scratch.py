"""A scratch PostgreSQL database for a benchmark run: made empty, dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from sqlalchemy import create_engine, text

from app.db.session import engine_url

PG_ADMIN = os.environ.get("BERTH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_database(
    prefix: str = "berth_bench", admin_url: str = PG_ADMIN
) -> tuple[str, Callable[[], None]]:
    """The URL of a new, empty database beside admin_url's, and a function that drops it
    (forcing out any connection a server left)."""
    admin = create_engine(engine_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except BaseException:
        admin.dispose()
        raise

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return admin_url.rsplit("/", 1)[0] + "/" + name, drop
