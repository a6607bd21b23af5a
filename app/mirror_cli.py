"""`berth mirror status`: the pull-through cache's upstreams, their health, what is cached."""

from __future__ import annotations

import dataclasses
import json

import click

from app.config import ConfigError, load_settings
from app.context import Registry


@click.group()
def mirror() -> None:
    """The pull-through cache (mirror_upstreams)."""


@mirror.command("status")
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of a table")
@click.option("--repositories", is_flag=True, help="also each cached repository: last pull, expiry")
def status(as_json: bool, repositories: bool) -> None:
    """List the upstreams: prefix, URL, health, cached repositories, blobs and bytes."""
    from app.migrate import upgrade
    from app.mirror.status import report

    try:
        settings = load_settings()
        upgrade(settings.database_url)
        reg = Registry.from_settings(settings)
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from exc
    try:
        found = report(reg)
    finally:
        reg.close()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(s) for s in found], indent=2))
        return
    if not found:
        click.echo("no mirror_upstreams configured")
        return
    click.echo("prefix\turl\tdefault\tttl\tretention\thealth\trepositories\tblobs\tbytes\tfetching")
    for s in found:
        retention = "off" if s.retention is None else f"{s.retention:g}s"
        click.echo(
            f"{s.prefix}/\t{s.url}\t{'yes' if s.default else 'no'}\t{s.ttl:g}s\t{retention}"
            f"\t{s.health}\t{s.cached.repositories}\t{s.cached.blobs}\t{s.cached.bytes}"
            f"\t{s.fetching}"
        )
    if repositories:
        click.echo("\nrepository\tlast pull\tremoved after")
        for s in found:
            for repo in s.repositories:
                click.echo(f"{repo.name}\t{repo.last_pull}\t{repo.expires or 'never'}")
