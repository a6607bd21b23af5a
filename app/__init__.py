"""Berth: a container registry for the Docker Registry HTTP API V2 and OCI Distribution v1.1."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask

from app.config import load_settings
from app.context import Registry
from app.storage import StorageDriver


def create_app(
    overrides: Mapping[str, Any] | None = None, driver: StorageDriver | None = None
) -> Flask:
    """settings -> Registry.from_settings -> blueprints. Nothing is built at import time."""
    from app import metrics, ui
    from app.views import admin, auth, base, blobs, health, listings, manifests, mirror, uploads

    settings = load_settings(overrides=overrides)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("app").setLevel(settings.log_level.upper())
    app = Flask(__name__)
    app.extensions["berth"] = Registry.from_settings(settings, driver)
    base.init_app(app)
    for module in (blobs, uploads, manifests, listings):
        app.register_blueprint(module.bp)
    app.register_blueprint(health.bp)  # /healthz, /readyz
    metrics.init_app(app)  # /metrics and the request hooks that feed it
    auth.init_app(app)  # access control on /v2 and /api; nothing installed while auth = "none"
    mirror.init_app(app)  # pushes into a mirrored prefix refused (after access control)
    app.register_blueprint(admin.bp)  # /api/v1: repository delete
    ui.init_app(app)  # /ui/: the web UI, unless ui = "off"
    return app
