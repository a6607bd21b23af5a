"""`berth notify` (the webhook delivery worker) and `berth notify status`."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from types import FrameType

import click

from app.config import ConfigError, Settings, load_settings
from app.registry.context import Registry


def _registry() -> Registry:
    try:
        settings: Settings = load_settings()
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from exc
    if settings.storage_driver == "filesystem":
        Path(settings.storage_root).mkdir(parents=True, exist_ok=True)
    return Registry.from_settings(settings)


@click.group(invoke_without_command=True)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="seconds between looks at the outbox",
)
@click.pass_context
def notify(ctx: click.Context, poll: float) -> None:
    """Deliver webhook notifications until stopped (SIGTERM/SIGINT).

    Runs beside or instead of the delivery threads in `berth serve` (see
    notifications_in_server); any number of these may share one database."""
    if ctx.invoked_subcommand is not None:
        return
    from app.migrate import upgrade
    from app.registry.endpoints import enabled
    from app.registry.notify import Deliverer

    reg = _registry()
    logging.basicConfig(
        level=reg.settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    upgrade(reg.settings.database_url)
    deliverer = Deliverer(reg, poll=poll)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        deliverer.stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    names = ", ".join(ep.name for ep in enabled(reg.settings)) or "none enabled"
    click.echo(f"berth notify: delivering to {names}", err=True)
    deliverer.start()
    while not deliverer.stopping.wait(1.0):
        pass
    deliverer.stop(timeout=15)
    reg.db.dispose()


@notify.command("status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def notify_status(as_json: bool) -> None:
    """Pending, sent and failed counts per endpoint, and why one is behind."""
    from app.registry.notify import status

    reg = _registry()
    report = status(reg)
    reg.db.dispose()
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report:
        click.echo("no notification endpoints configured")
        return
    columns = ("name", "state", "pending", "sent", "failed", "consecutive_failures")
    titles = ("ENDPOINT", "STATE", "PENDING", "SENT", "FAILED", "FAILING")
    rows = [titles, *[tuple(str(entry[c]) for c in columns) for entry in report]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for entry in report:
        if entry["pending"] and entry["oldest_pending"]:
            click.echo(f"{entry['name']}: oldest pending event from {entry['oldest_pending']}")
        if entry["last_error"]:
            click.echo(f"{entry['name']}: last error: {entry['last_error']}")
        if entry["consecutive_failures"] and entry["next_attempt"]:
            click.echo(f"{entry['name']}: next attempt at {entry['next_attempt']}")
