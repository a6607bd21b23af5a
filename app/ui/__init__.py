"""The web UI at /ui/: browse, inspect and manage the registry in a browser.

A view-layer package beside app/views: Jinja templates and a little hand-written JS
(copy buttons, select-all, confirmations), every page readable with JavaScript off. What a
page shows comes from app/registry/browse.py; who may see and do what comes from the same
access policy the registry API obeys (app/auth/policy.py), asked again on every action.
"""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Registers /ui/ unless the `ui` setting is "off"."""
    if app.extensions["berth"].settings.ui == "off":
        return
    from app.ui import views

    views.init_app(app)
