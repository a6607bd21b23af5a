"""/healthz (the process answers) and /readyz (the database and the storage answer).

Outside /v2 on purpose: probes and load balancers need no registry headers or credentials.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from sqlalchemy import text

from app.views.base import Response, registry

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    reg = registry()
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
    ready = all(value == "ok" for value in checks.values())
    response = jsonify({"status": "ready" if ready else "unavailable", "checks": checks})
    response.status_code = 200 if ready else 503
    return response
