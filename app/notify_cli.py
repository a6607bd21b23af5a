"""`berth notify` (the webhook delivery worker) and `berth notify status`."""

from __future__ import annotations

import json
import logging
import signal
from types import FrameType

import click

from app.config import ConfigError, load_settings
from app.context import Registry


def _registry() -> Registry:
    try:
        return Registry.from_settings(load_settings())
    except ConfigError as exc:
        raise click.ClickException(f"configuration: {exc}") from exc


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
    from app.notifications.delivery import Deliverer

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
    names = ", ".join(ep.name for ep in reg.outbox.enabled) or "none enabled"
    click.echo(f"berth notify: delivering to {names}", err=True)
    deliverer.start()
    while not deliverer.stopping.wait(1.0):
        pass
    deliverer.stop(timeout=15)
    reg.close()


@notify.command("status")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def notify_status(as_json: bool) -> None:
    """Pending, sent and failed counts per endpoint, and why one is behind."""
    from app.notifications.delivery import status

    reg = _registry()
    report = status(reg)
    reg.close()
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
