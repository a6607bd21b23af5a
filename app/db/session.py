"""Engine and short transactions. No session outlives one block of work, so no
transaction stays open while blob bytes stream."""

from __future__ import annotations

import contextlib
import select
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.expression import Executable


def engine_url(url: str) -> str:
    """Berth ships psycopg2; SQLAlchemy 2.1 would pick psycopg 3 for a bare postgresql://."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _set_wal(cursor: Any) -> None:
    """WAL mode sticks to the file, so this is a no-op after the first time; but the check
    can meet SQLITE_BUSY without the busy handler being asked (another process is resetting
    the WAL as its last connection closes), so it is retried for a while, not failed."""
    deadline = time.monotonic() + 30
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_setup(engine: Engine, busy_timeout: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # The timeout first: switching to WAL itself needs a lock another process may hold.
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        _set_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock up front: a deferred transaction that upgrades
        # later fails with SQLITE_BUSY instead of waiting when another writer got there.
        mode = "IMMEDIATE" if conn.get_execution_options().get("berth_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def _postgres_setup(engine: Engine) -> None:
    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        # An idle connection has nothing to read: PostgreSQL only writes to one unasked
        # when it ends it (a restart, pg_terminate_backend, idle timeouts), with an error
        # and then EOF. A look at the socket costs a system call where SQLAlchemy's
        # pre-ping costs a round trip on every checkout; the pool replaces what fails it.
        # poll, not select: a worker with a thousand clients has descriptors past 1,024.
        idle = select.poll()
        idle.register(dbapi_conn.fileno(), select.POLLIN)
        if dbapi_conn.closed or idle.poll(0):
            raise DisconnectionError("the server closed the connection while it was idle")


_BEFORE_COMMIT = "berth_before_commit"
# PostgreSQL connections commit without waiting for the log unless a transaction asks to
# (Database.transaction's durable writes): most writes are an upload's bookkeeping.
_ASYNC_CONNECTIONS = {"options": "-c synchronous_commit=off"}
_DURABLE_COMMIT = text("SET LOCAL synchronous_commit TO ON")


@contextmanager
def _autocommit(driver: Any) -> Iterator[None]:
    """psycopg2's own autocommit switch, sent nothing for (SQLAlchemy's isolation_level
    option costs a SET when the connection goes back to the pool); off again after, so the
    pool hands out a transactional connection."""
    driver.autocommit = True
    try:
        yield
    finally:
        if not driver.closed:
            driver.autocommit = False


def before_commit(session: Session, key: str, work: Callable[[Session], None]) -> None:
    """Run `work` as the last statements of this Database.transaction, once per key however
    often it is asked for: a row lock taken there (a repository's figures) is held the
    shortest time, and never while the transaction still waits for other locks."""
    session.info.setdefault(_BEFORE_COMMIT, {})[key] = work


@dataclass(frozen=True)
class _Compiled:
    """A statement as the driver takes it: SQL text, and how to lay out the parameters."""

    sql: str
    defaults: dict[str, Any]  # values SQLAlchemy bound itself (a LIMIT's OFFSET 0, say)
    order: tuple[str, ...] | None  # positional paramstyles (SQLite's ?): names in order

    @classmethod
    def of(cls, statement: Executable, engine: Engine) -> _Compiled:
        compiled = statement.compile(dialect=engine.dialect)  # type: ignore[attr-defined]
        order = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        return cls(compiled.string, dict(compiled.params), order)

    def arguments(self, params: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        values = {**self.defaults, **params}
        return values if self.order is None else tuple(values[name] for name in self.order)


class Database:
    def __init__(self, url: str, sqlite_busy_timeout: float = 30) -> None:
        self.url = url = engine_url(url)
        # A connection for each of a worker's threads (8 by default) and its background
        # jobs, kept open: an overflow connection is made and closed on every busy request.
        pool = {"pool_size": 10, "max_overflow": 5}
        if url.startswith("sqlite"):
            self.engine = create_engine(url, **pool)
            _sqlite_setup(self.engine, sqlite_busy_timeout)
        else:
            self.engine = create_engine(url, connect_args=_ASYNC_CONNECTIONS, **pool)
            _postgres_setup(self.engine)
        self._postgres = self.dialect == "postgresql"
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._compiled: dict[Executable, _Compiled] = {}

    def after_fork(self) -> None:
        """In a forked process: forget the parent's pooled connections without closing them
        (they are the parent's sockets); this process opens its own."""
        self.engine.dispose(close=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self, write: bool = False, durable: bool = True) -> Iterator[Session]:
        """One short unit of work: committed on success, rolled back on any error. Only a
        write=True transaction may write (SQLite takes its write lock up front for it).

        durable=False is for what a crash of the database may lose without harm: an upload
        session's lease and size (a client that finds them gone starts the upload again),
        a blob's link (durable with the next durable commit: see uploads._publish). Never
        for what a client is told is stored for good: manifests, tags, deletes. PostgreSQL
        then answers the COMMIT without waiting for its log to reach the disk (~3.5 ms of
        a short write's time here); SQLite in WAL mode with synchronous=NORMAL never waits
        for that at commit."""
        with self._sessions() as session:
            session.connection(execution_options={"berth_write": write})
            try:
                if write and durable and self._postgres:
                    session.execute(_DURABLE_COMMIT)
                yield session
                for work in session.info.pop(_BEFORE_COMMIT, {}).values():
                    work(session)
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def statement(self) -> Iterator[Session]:
        """A write of one statement, atomic by itself and not durable (as durable=False
        above): an upload session's lease taken, renewed or given back, its size recorded.
        On PostgreSQL it commits as it runs, one round trip where a transaction takes three
        (BEGIN, the statement, COMMIT)."""
        if not self._postgres:
            with self.transaction(write=True, durable=False) as session:
                yield session
            return
        with (
            self._sessions() as session,
            _autocommit(session.connection().connection.driver_connection),
        ):
            yield session

    @contextmanager
    def scratch(self) -> Iterator[Connection]:
        """A connection of its own, for a long job's temporary tables (gc's mark). Closed at
        the end rather than pooled, so that its tables go with it whatever happened."""
        connection = self.engine.connect()
        try:
            yield connection
        finally:
            connection.invalidate()
            connection.close()

    def rows(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """One read for the hot GET/HEAD paths, on the driver's own connection from the pool.

        SQLAlchemy's execution and result layers cost ~70 µs per statement, more than SQLite
        takes to read a page of 100 tags; here the statement is compiled once for this
        database (and kept: pass statements built once, at import) and its rows come back as
        the driver gives them, with no type processing: a caller reading a binary column
        converts it (PostgreSQL's driver gives a memoryview). No transaction on either
        database: each statement is its own snapshot, so two calls must not rely on
        agreeing."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = _Compiled.of(statement, self.engine)
        driver_error = self.engine.dialect.loaded_dbapi.Error
        try:
            connection = self.engine.raw_connection()
        except driver_error as exc:  # connecting failed: the database is away
            raise DBAPIError.instance(compiled.sql, None, exc, driver_error) from exc
        # On PostgreSQL a single read needs no transaction around it (it is its own
        # snapshot): that saves the BEGIN and the ROLLBACK, two of its three round trips.
        mode = _autocommit(connection.driver_connection) if self._postgres else nullcontext()
        try:
            with mode, contextlib.closing(connection.cursor()) as cursor:
                cursor.execute(compiled.sql, compiled.arguments(params or {}))
                return list(cursor.fetchall())
        except driver_error as exc:
            # As SQLAlchemy's own execution would: its exception types, and a connection
            # that broke is not handed out again.
            error = DBAPIError.instance(compiled.sql, None, exc, driver_error)
            if isinstance(error, OperationalError | InterfaceError):
                connection.invalidate(exc)
            raise error from exc
        finally:
            connection.close()  # back to the pool, which rolls back what the driver began

    def dispose(self) -> None:
        self.engine.dispose()
