"""`berth import distribution PATH` and `berth import registry URL`: content from another
registry into this Berth's database and storage (not through its HTTP API)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from app.config import ConfigError, load_settings
from app.context import Registry

EXIT_PROBLEMS = 2  # something could not be imported: the report names it


def _registry() -> Registry:
    from app.migrate import upgrade

    try:
        settings = load_settings()
        upgrade(settings.database_url)
        return Registry.from_settings(settings)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from exc


@click.group("import")
def import_() -> None:
    """Load another registry's content into Berth (resumable: run again to finish)."""


@import_.command("distribution")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--hardlink", is_flag=True, help="hard-link blob files instead of copying them")
@click.option("--dry-run", is_flag=True, help="print what would be imported; change nothing")
@click.option("--repository", "repositories", multiple=True, help="only this one (repeatable)")
@click.option("--progress/--no-progress", default=None, help="default: on a terminal only")
def import_distribution(
    path: Path, hardlink: bool, dry_run: bool, repositories: tuple[str, ...], progress: bool | None
) -> None:
    """Import the reference registry's filesystem storage at PATH (its rootdirectory,
    holding docker/registry/v2): every repository, tag, manifest and blob, verified."""
    from app.client.progress import bar
    from app.importers.distribution import (
        DistributionStore,
        ImportOptions,
        NotADistributionStore,
        plan_bytes,
        run,
    )

    try:
        store = DistributionStore(path)
    except NotADistributionStore as exc:
        raise click.ClickException(str(exc)) from exc
    reg = _registry()
    options = ImportOptions(hardlink=hardlink, dry_run=dry_run, repositories=repositories)
    started = time.monotonic()
    try:
        repos = [r for r in store.repositories() if not repositories or r in repositories]
        total = 0 if dry_run else plan_bytes(store, reg, repos)
        with bar("import", total, enabled=False if dry_run else progress) as meter:
            report = run(reg, store, options, say=click.echo, moved=meter.update)
    finally:
        reg.close()
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    elapsed = time.monotonic() - started
    click.echo(f"{report.summary(dry_run)} in {elapsed:.1f}s")
    if report.problems:
        sys.exit(EXIT_PROBLEMS)


@import_.command("registry")
@click.argument("url")
@click.option("--prefix", default="", help="only repositories under this path")
@click.option("--dest-prefix", default="", help="put them under this path in Berth")
@click.option("--workers", type=click.IntRange(1, 32), default=4, show_default=True)
@click.option("--username", "-u", default=None, help="default: saved credentials")
@click.option("--password-stdin", is_flag=True)
@click.option("--tls-verify/--no-tls-verify", default=True)
@click.option("--progress/--no-progress", default=None, help="default: on a terminal only")
def import_registry(
    url: str,
    prefix: str,
    dest_prefix: str,
    workers: int,
    username: str | None,
    password_stdin: bool,
    tls_verify: bool,
    progress: bool | None,
) -> None:
    """Copy every repository (or those under --prefix) of the registry at URL into Berth,
    WORKERS tags at a time; run again to finish an interrupted import."""
    from app.client import ClientError, RegistryClient
    from app.client.progress import bar
    from app.importers.remote import run

    auth: tuple[str, str] | None = None
    if username:
        password = (
            sys.stdin.readline().rstrip("\r\n")
            if password_stdin
            else click.prompt("Password", hide_input=True)
        )
        auth = (username, password)
    reg = _registry()
    started = time.monotonic()
    try:
        with RegistryClient(url, auth=auth, tls=tls_verify) as client:
            report = run(
                reg,
                client,
                prefix,
                workers,
                dest_prefix,
                say=click.echo,
                progress=lambda label, total: bar(label, total, progress),
            )
    except ClientError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        reg.close()
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"{report.summary()} in {time.monotonic() - started:.1f}s")
    if report.problems:
        sys.exit(EXIT_PROBLEMS)


@import_.command("v1")
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="print what would be imported; change nothing")
def import_v1(path: Path, dry_run: bool) -> None:
    """Import the old v1 registry's storage at PATH (images/, repositories/): each tag
    becomes a Docker schema 2 image, its history kept."""
    from app.importers.v1 import NotAV1Store, V1Store, run

    try:
        store = V1Store(path)
    except NotAV1Store as exc:
        raise click.ClickException(str(exc)) from exc
    reg = _registry()
    started = time.monotonic()
    try:
        report = run(reg, store, dry_run, say=click.echo)
    finally:
        reg.close()
    for problem in report.problems:
        click.echo(f"problem: {problem}", err=True)
    click.echo(f"{report.summary(dry_run)} in {time.monotonic() - started:.1f}s")
    if report.problems:
        sys.exit(EXIT_PROBLEMS)
