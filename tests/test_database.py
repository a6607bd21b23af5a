"""The SQLite connection setup: a busy database at connect time waits, never fails a request."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text

from app.db import session as db_session
from app.db.session import Database


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
