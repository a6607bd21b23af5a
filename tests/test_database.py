"""The connection setup: a busy SQLite database at connect time waits, and PostgreSQL
connections the server ended are replaced; neither fails a request."""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from app.db import session as db_session
from app.db.session import Database, engine_url
from tests.conftest import PG_ADMIN_URL


class _BusyThenFine:
    """A cursor whose first journal_mode checks meet a lock held outside the busy handler."""

    def __init__(self, busy: int) -> None:
        self.busy, self.calls = busy, 0

    def execute(self, sql: str) -> _BusyThenFine:
        self.calls += 1
        if self.busy:
            self.busy -= 1
            raise sqlite3.OperationalError("database is locked")
        return self

    def fetchone(self) -> tuple[str]:
        return ("wal",)


def test_wal_check_retries_a_locked_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_session.time, "sleep", lambda _s: None)
    cursor = _BusyThenFine(busy=3)
    db_session._set_wal(cursor)
    assert cursor.calls == 4


def test_wal_check_gives_up_on_other_errors() -> None:
    class Broken(_BusyThenFine):
        def execute(self, sql: str) -> _BusyThenFine:
            raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        db_session._set_wal(Broken(0))


def test_new_database_is_in_wal_mode(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'berth.db'}")
    assert database.rows(text("PRAGMA journal_mode")) == [("wal",)]
    assert database.rows(text("PRAGMA foreign_keys")) == [(1,)]
    database.dispose()


def _terminate_connections(url: str) -> None:
    """End every server process serving url's database, as a PostgreSQL restart does, and
    wait until they are gone."""
    name = url.rsplit("/", 1)[1]
    admin = create_engine(engine_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    others = "FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
    with admin.connect() as conn:
        conn.execute(text(f"SELECT pg_terminate_backend(pid) {others}"), {"n": name})
        deadline = time.monotonic() + 10
        while conn.execute(text(f"SELECT count(*) {others}"), {"n": name}).scalar():
            assert time.monotonic() < deadline, "the server processes did not end"
            time.sleep(0.05)
    admin.dispose()


@pytest.mark.postgres
def test_connections_the_server_ended_are_replaced_without_an_error(postgres_url: str) -> None:
    database = Database(postgres_url)
    try:
        # Hold several connections at once so the pool keeps more than one.
        with database.transaction() as first, database.transaction() as second:
            first.execute(text("SELECT 1"))
            second.execute(text("SELECT 1"))
        assert database.rows(text("SELECT 1")) == [(1,)]
        _terminate_connections(postgres_url)
        # Every pooled connection is dead now; neither a read nor a transaction sees it.
        assert database.rows(text("SELECT 2")) == [(2,)]
        with database.transaction() as session:
            assert session.scalar(text("SELECT 3")) == 3
        with database.transaction() as session:
            assert session.scalar(text("SELECT 4")) == 4
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_read_leaves_the_connection_transactional(postgres_url: str) -> None:
    """rows() reads without a transaction; the connection it used must not carry that into
    the next unit of work, whose failure has to undo all of it."""
    database = Database(postgres_url)
    name = f"rolled-back-{uuid.uuid4().hex[:8]}"
    insert = text("INSERT INTO repository (name, created_at) VALUES (:n, now())")
    count = text("SELECT count(*) FROM repository WHERE name = :n")
    try:
        database.engine.pool.dispose()  # one connection, so the read and the write share it
        assert database.rows(count, {"n": name}) == [(0,)]
        with pytest.raises(RuntimeError), database.transaction(write=True) as session:
            session.execute(insert, {"n": name})
            raise RuntimeError("the request failed after the insert")
        assert database.rows(count, {"n": name}) == [(0,)]
    finally:
        database.dispose()


@pytest.mark.postgres
def test_writes_wait_for_the_log_unless_they_are_bookkeeping(postgres_url: str) -> None:
    """A write transaction commits durably unless it says otherwise, on every connection of
    the pool, whatever the one before it on that connection did."""
    database = Database(postgres_url)
    show = text("SHOW synchronous_commit")
    try:
        database.engine.pool.dispose()  # one connection, shared by all below
        for _ in range(2):
            with database.transaction(write=True, durable=False) as session:
                assert session.scalar(show) == "off"
            with database.transaction(write=True) as session:
                assert session.scalar(show) == "on"
            with database.statement() as session:
                assert session.scalar(show) == "off"
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_statement_commits_by_itself(postgres_url: str) -> None:
    database = Database(postgres_url)
    name = f"statement-{uuid.uuid4().hex[:8]}"
    insert = text("INSERT INTO repository (name, created_at) VALUES (:n, now())")
    count = text("SELECT count(*) FROM repository WHERE name = :n")
    try:
        with pytest.raises(RuntimeError), database.statement() as session:
            session.execute(insert, {"n": name})
            raise RuntimeError("what follows the statement fails")
        assert database.rows(count, {"n": name}) == [(1,)]
        # The connection goes back to transactions: a failure there still undoes everything.
        with pytest.raises(RuntimeError), database.transaction(write=True) as session:
            session.execute(insert, {"n": name + "-2"})
            raise RuntimeError("the request failed after the insert")
        assert database.rows(count, {"n": name + "-2"}) == [(0,)]
    finally:
        database.dispose()


@pytest.mark.postgres
def test_connections_are_checked_whatever_their_descriptor(postgres_url: str) -> None:
    """A worker with a thousand clients connected gives PostgreSQL sockets descriptors past
    1,024, which select() cannot watch; taking such a connection must still work."""
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    database = Database(postgres_url)
    try:
        assert database.rows(text("SELECT 1")) == [(1,)]
        with database.transaction() as session:
            assert session.scalar(text("SELECT 2")) == 2
    finally:
        database.dispose()
        for fd in held:
            os.close(fd)
