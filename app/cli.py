"""The `berth` command: serve, migrate."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from app.config import ConfigError, Settings, load_settings
from app.context import Features, Registry
from app.db import Database


def _settings() -> Settings:
    """The settings, every feature's part checked (no database or disk touched yet)."""
    try:
        settings = load_settings()
        Features.from_settings(settings)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from exc
    return settings


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
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    envvar="BERTH_WORKERS",  # empty counts as unset: compose passes ${BERTH_WORKERS:-}
    help="worker processes (default: one per CPU, 2 to 8)",
)
def serve(bind: str, workers: int | None) -> None:
    """Apply pending migrations, then serve the registry with gunicorn."""
    from app import malloc
    from app.migrate import upgrade

    settings = _settings()
    if settings.storage_driver == "filesystem":
        Path(settings.storage_root).mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    # One worker per CPU (2 to 8): a worker's threads already overlap its I/O, so processes
    # only need to cover the cores, and each costs ~30 MiB. On 2 cores, 2 workers beat the
    # old 2 x CPUs + 1 on nearly every benchmark figure at 2/3 the memory (performance.md).
    workers = workers or min(max(os.cpu_count() or 1, 2), 8)
    for name, value in malloc.TUNING.items():  # set ones are the operator's
        os.environ.setdefault(name, value)
    # Before gunicorn loads the app in its master (preload_app), which imports
    # prometheus_client: the workers' shared metrics directory (app/metrics.py).
    from app import metrics

    metrics.prepare_multiprocess_dir()
    conf = Path(__file__).with_name("gunicorn_conf.py")
    argv = [
        sys.executable, "-m", "gunicorn",
        "--config", str(conf),
        "--bind", bind,
        "--workers", str(workers),
        "--log-level", settings.log_level.lower(),
        *(["--access-logfile", "-"] if settings.access_log else []),
        "app.wsgi:app",
    ]  # fmt: skip
    os.execv(sys.executable, argv)


@main.group()
def user() -> None:
    """Registry accounts (bcrypt hashes in the database) for auth = "basic" or "token"."""


def _accounts() -> Database:
    """The configured database, migrated first (accounts involve no blobs)."""
    from app.migrate import upgrade

    settings = _settings()
    upgrade(settings.database_url)
    return Database(settings.database_url, settings.sqlite_busy_timeout)


def _new_password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


_password_stdin = click.option(
    "--password-stdin", is_flag=True, help="read the password from the first line of stdin"
)
_cost = click.option(
    "--cost", type=click.IntRange(4, 16), default=12, show_default=True, help="bcrypt cost"
)


@user.command("add")
@click.argument("name")
@_password_stdin
@_cost
def user_add(name: str, password_stdin: bool, cost: int) -> None:
    """Create the account NAME."""
    from app.auth import users

    try:
        users.check_name(name)
        users.add(_accounts(), name, _new_password(password_stdin), cost)
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {name} added")


@user.command("passwd")
@click.argument("name")
@_password_stdin
@_cost
def user_passwd(name: str, password_stdin: bool, cost: int) -> None:
    """Set a new password for NAME (servers may accept the old one for auth_cache_ttl)."""
    from app.auth import users

    try:
        users.set_password(_accounts(), name, _new_password(password_stdin), cost)
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"password of {name} changed")


@user.command("delete")
@click.argument("name")
def user_delete(name: str) -> None:
    """Delete the account NAME (servers may accept it for auth_cache_ttl more seconds)."""
    from app.auth import users

    try:
        users.remove(_accounts(), name)
    except users.UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {name} deleted")


@user.command("list")
def user_list() -> None:
    """List the accounts: the database's, then those only in the htpasswd file."""
    from app.auth.users import Authenticator

    settings = _settings()
    for name, where in Authenticator(_accounts(), settings.auth_htpasswd).all_names():
        click.echo(name if where == "database" else f"{name}\t({where})")


def _add_notify() -> None:
    from app.notify_cli import notify

    main.add_command(notify)


_add_notify()


def _add_mirror() -> None:
    from app.mirror_cli import mirror

    main.add_command(mirror)


_add_mirror()


def _add_client_and_import() -> None:
    # The HTTP client's commands (app/client/cli.py) and `berth import` (app/import_cli.py).
    from app.client.cli import register
    from app.import_cli import import_

    register(main)
    main.add_command(import_)


_add_client_and_import()


def _registry(settings: Settings) -> Registry:
    """The configured registry, for maintenance commands."""
    try:
        return Registry.from_settings(settings)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from exc


@main.command()
@click.option("--dry-run", is_flag=True, help="report what would be deleted; change nothing")
@click.option(
    "--delete-untagged",
    is_flag=True,
    help="also delete manifests no tag reaches (never the children of a tagged index)",
)
@click.option(
    "--grace",
    metavar="DURATION",
    help="leave alone what is younger than this (30m, 24h, 7d; default: gc_grace, 24h)",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=500, show_default=True,
    help="rows deleted per transaction",
)  # fmt: skip
@click.option(
    "--throttle", type=click.FloatRange(min=0), default=0.0, metavar="SECONDS",
    help="pause after each deleting transaction, to spare a busy database",
)  # fmt: skip
def gc(
    dry_run: bool, delete_untagged: bool, grace: str | None, batch_size: int, throttle: float
) -> None:
    """Delete unreferenced manifests and blobs while the registry keeps serving."""
    from app.registry.gc import GcOptions, collect

    try:
        settings = load_settings(overrides={"gc_grace": grace} if grace is not None else None)
    except ConfigError as exc:
        raise click.ClickException(f"--grace: {exc}") from exc
    options = GcOptions(dry_run, delete_untagged, settings.gc_grace, batch_size, throttle)
    reg = _registry(settings)
    expiry = reg.mirror.retention  # the pull-through cache's, when an upstream has one
    try:
        report = collect(reg, options, lambda line: click.echo(line, err=True), expiry)
    finally:
        reg.close()
    verb = "would delete" if dry_run else "deleted"
    for name in report.expired:
        click.echo(
            f"{'would remove' if dry_run else 'removed'} {name}: not pulled within its retention"
        )
    retention = (
        f"; {report.repositories} cached repositories past their retention" if expiry else ""
    )
    click.echo(
        f"{verb} {report.manifests} manifests, {report.links} blob links, {report.blobs} blobs"
        f" and {report.orphans} orphaned blob files ({report.bytes_freed} bytes);"
        f" {report.uploads} stale uploads{retention}"
    )


@main.group()
def repo() -> None:
    """Repositories as a whole."""


@repo.command("delete")
@click.argument("name")
def repo_delete(name: str) -> None:
    """Delete repository NAME: tags, manifests, links, uploads, and blobs only it used."""
    from app.errors import RegistryError
    from app.registry import repositories

    reg = _registry(_settings())
    try:
        deleted = repositories.delete(reg, name)
    except RegistryError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message} ({name})") from exc
    finally:
        reg.close()
    click.echo(
        f"repository {name} deleted: {deleted.tags} tags, {deleted.manifests} manifests,"
        f" {deleted.blobs_unlinked} blob links, {deleted.uploads} uploads;"
        f" {deleted.blobs_freed} blobs freed ({deleted.bytes_freed} bytes)"
    )
