"""0010_repository_stats on a registry with content: the figures it adds to each repository
are counted from the rows already there, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from app.db.session import engine_url
from app.migrate import upgrade
from tests.test_migrations import empty_database  # noqa: F401 - the fixture

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _at(hours: int) -> datetime:
    return T0 + timedelta(hours=hours)


def test_the_figures_are_counted_from_existing_content(empty_database: str) -> None:  # noqa: F811
    upgrade(empty_database, "0008_ui_sessions")
    engine = create_engine(engine_url(empty_database))
    with engine.begin() as conn:
        run = conn.execute
        for rid, name in ((1, "app"), (2, "blobs-only"), (3, "empty")):
            run(
                text("INSERT INTO repository (id, name, created_at) VALUES (:i, :n, :t)"),
                {"i": rid, "n": name, "t": T0},
            )
        for bid, size in ((1, 1000), (2, 20), (3, 5)):
            run(
                text("INSERT INTO blob (id, digest, size, created_at) VALUES (:i, :d, :s, :t)"),
                {"i": bid, "d": f"sha256:{bid:064x}", "s": size, "t": T0},
            )
        for rid, bid, hours in ((1, 1, 1), (1, 2, 1), (2, 3, 7)):
            run(
                text(
                    "INSERT INTO repository_blob (repository_id, blob_id, created_at)"
                    " VALUES (:r, :b, :t)"
                ),
                {"r": rid, "b": bid, "t": _at(hours)},
            )
        for mid, hours in ((1, 2), (2, 3)):
            run(
                text(
                    "INSERT INTO manifest (id, repository_id, digest, media_type, payload, size,"
                    " created_at) VALUES (:i, 1, :d, 'application/json', :p, 300, :t)"
                ),
                {"i": mid, "d": f"sha256:{mid + 100:064x}", "p": b"x" * 300, "t": _at(hours)},
            )
        for tid, name, mid, hours in ((1, "v1", 1, 4), (2, "v2", 2, 5), (3, "latest", 2, 5)):
            run(
                text(
                    "INSERT INTO tag (id, repository_id, name, manifest_id, updated_at)"
                    " VALUES (:i, 1, :n, :m, :t)"
                ),
                {"i": tid, "n": name, "m": mid, "t": _at(hours)},
            )
    upgrade(empty_database)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT name, tag_count, manifest_count, blob_count, total_size, last_push"
                " FROM repository ORDER BY id"
            )
        ).all()
    engine.dispose()
    figures = {row[0]: tuple(row[1:5]) for row in rows}
    assert figures == {
        "app": (3, 2, 2, 1000 + 20 + 2 * 300),
        "blobs-only": (0, 0, 1, 5),
        "empty": (0, 0, 0, 0),
    }
    pushed = [row[5] for row in rows]
    pushed = [datetime.fromisoformat(p) if isinstance(p, str) else p for p in pushed]
    assert [p if p is None or p.tzinfo else p.replace(tzinfo=UTC) for p in pushed] == [
        _at(5),  # the latest tag
        _at(7),  # its blob link
        None,  # nothing pushed
    ]
