"""Readiness: whether the database and the storage answer (for /readyz)."""

from __future__ import annotations

import logging

from sqlalchemy import text

from app.registry.context import Context

log = logging.getLogger(__name__)


def readiness(reg: Context) -> dict[str, str]:
    """ "ok", or the class of the error, for the database and for the storage."""
    checks: dict[str, str] = {}
    try:
        with reg.db.transaction() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not ready", never a 500
        log.warning("readiness: database check failed: %s", exc)
        checks["database"] = f"error: {exc.__class__.__name__}"
    try:
        reg.driver.list("")
        checks["storage"] = "ok"
    except Exception as exc:
        log.warning("readiness: storage check failed: %s", exc)
        checks["storage"] = f"error: {exc.__class__.__name__}"
    return checks
