"""`berth serve`'s worker count: the flag, BERTH_WORKERS (the compose sample's knob), or
one per CPU; what gunicorn is started with is read off the command it is exec'd as."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from app import cli


def _gunicorn_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str], *args: str
) -> int:
    started: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execv", lambda _path, argv: started.append(argv))
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 3)
    env = {
        "BERTH_DATABASE_URL": f"sqlite:///{tmp_path / 'berth.db'}",
        "BERTH_STORAGE_ROOT": str(tmp_path / "storage"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        **env,
    }
    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.setenv(name, "0")  # serve sets these in its own environment otherwise
    result = CliRunner().invoke(cli.main, ["serve", *args], env=env)
    assert result.exit_code == 0, result.output
    argv = started[0]
    return int(argv[argv.index("--workers") + 1])


def test_workers_default_to_one_per_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _gunicorn_workers(monkeypatch, tmp_path, {}) == 3
    # compose passes ${BERTH_WORKERS:-}: empty is the default, not an error.
    assert _gunicorn_workers(monkeypatch, tmp_path, {"BERTH_WORKERS": ""}) == 3


def test_workers_from_the_environment_or_the_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert _gunicorn_workers(monkeypatch, tmp_path, {"BERTH_WORKERS": "5"}) == 5
    assert _gunicorn_workers(monkeypatch, tmp_path, {"BERTH_WORKERS": "5"}, "--workers", "2") == 2


def test_a_worker_count_below_one_is_refused(tmp_path: Path) -> None:
    env = {"BERTH_DATABASE_URL": f"sqlite:///{tmp_path / 'berth.db'}", "BERTH_WORKERS": "0"}
    result = CliRunner().invoke(cli.main, ["serve"], env=env)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--workers'" in result.output
