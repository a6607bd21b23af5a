"""SQLite locked by another writer for longer than sqlite_busy_timeout: the request is
answered 503 UNAVAILABLE with Retry-After, nothing of it is written, and the registry goes
on by itself once the lock is released."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from pathlib import Path

from app import create_app
from tests.helpers import error_codes


def test_a_write_locked_past_the_busy_timeout_answers_503(
    tmp_path: Path, sqlite_template: Path
) -> None:
    path = tmp_path / "berth.db"
    shutil.copyfile(sqlite_template, path)
    app = create_app(
        {
            "database_url": f"sqlite:///{path}",
            "storage_driver": "inmemory",
            "sqlite_busy_timeout": 1,
        }
    )
    client = app.test_client()
    assert client.get("/v2/_catalog").status_code == 200  # running: the file is in WAL mode
    holder = sqlite3.connect(path, isolation_level=None)  # another process's long write
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        refused = client.post("/v2/locked/repo/blobs/uploads/")
        waited = time.monotonic() - started
        assert refused.status_code == 503
        assert error_codes(refused) == ["UNAVAILABLE"]
        assert refused.headers["Retry-After"].isdigit()
        assert 0.9 < waited < 10, waited  # the busy timeout, not 30 s
        # Readers are not blocked by a writer (WAL), and nothing of the refusal was written.
        catalog = client.get("/v2/_catalog")
        assert catalog.status_code == 200
        assert catalog.get_json() == {"repositories": []}
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    digest = "sha256:" + hashlib.sha256(b"after").hexdigest()
    pushed = client.post(f"/v2/locked/repo/blobs/uploads/?digest={digest}", data=b"after")
    assert pushed.status_code == 201
    assert client.head(f"/v2/locked/repo/blobs/{digest}").status_code == 200
