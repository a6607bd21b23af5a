"""The `berth` command: serve, migrate."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from app.config import ConfigError, Settings, load_settings


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from exc


@click.group()
def main() -> None:
    """Berth, a container registry (Docker Registry V2 / OCI Distribution v1.1)."""


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    from app.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    click.echo("database schema is up to date")


@main.command()
@click.option("--bind", default="127.0.0.1:5000", show_default=True, help="HOST:PORT to listen on")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="worker processes")
def serve(bind: str, workers: int | None) -> None:
    """Apply pending migrations, then serve the registry with gunicorn."""
    from app.migrate import upgrade

    settings = _settings()
    if settings.storage_driver == "filesystem":
        Path(settings.storage_root).mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    workers = workers or min(2 * (os.cpu_count() or 1) + 1, 8)
    conf = Path(__file__).with_name("gunicorn_conf.py")
    argv = [
        sys.executable, "-m", "gunicorn",
        "--config", str(conf),
        "--bind", bind,
        "--workers", str(workers),
        "--log-level", settings.log_level.lower(),
        "app.wsgi:app",
    ]  # fmt: skip
    os.execv(sys.executable, argv)
