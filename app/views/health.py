"""/healthz (the process answers) and /readyz (the database and the storage answer).

Outside /v2 on purpose: probes and load balancers need no registry headers or credentials.
"""

from __future__ import annotations

from flask import Blueprint

from app.registry.health import readiness
from app.views.base import Response, json_response, registry

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    checks = readiness(registry())
    ready = all(value == "ok" for value in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return json_response(body, 200 if ready else 503)
