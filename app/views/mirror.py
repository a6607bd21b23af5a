"""The pull-through cache at the HTTP edge: writes into a mirrored prefix are refused.

One before_request hook, installed after access control's (a caller without push rights
hears 401/403 from the guard first), so every write endpoint -- upload, mount, manifest PUT
-- refuses alike, and none of them needs to know about mirrors."""

from __future__ import annotations

from flask import Flask, request

from app.views.base import registry

_WRITES = ("POST", "PUT", "PATCH")


def _refuse_writes() -> None:
    name = (request.view_args or {}).get("name")
    if request.method in _WRITES and isinstance(name, str) and request.path.startswith("/v2/"):
        registry().mirror.refuse_push(name)


def init_app(app: Flask) -> None:
    if app.extensions["berth"].mirror:
        app.before_request(_refuse_writes)
