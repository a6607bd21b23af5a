"""The upstream every pull-through cache test pulls from: a real Berth on a free port."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.upstream import Upstream


def database_copy(template: Path, path: Path) -> Path:
    shutil.copyfile(template, path)  # migrated once per run (tests/conftest.py)
    return path


@pytest.fixture
def upstream(tmp_path: Path, sqlite_template: Path) -> Iterator[Upstream]:
    server = Upstream(database_copy(sqlite_template, tmp_path / "upstream.db")).start()
    yield server
    server.close()
