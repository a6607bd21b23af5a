"""Who made a request, for the events it causes (the `request` and `actor` of an envelope)."""

from __future__ import annotations

from typing import Any

from flask import g, request

from app.notifications.events import RequestInfo
from app.views.base import access


def _actor() -> str:
    # The user access control authenticated (app/views/auth.py), or REMOTE_USER when a WSGI
    # front end authenticated the request. Anonymous: the actor is {}.
    user: Any = access().user or request.remote_user
    if user is None or isinstance(user, str):
        return user or ""
    return str(getattr(user, "name", None) or getattr(user, "username", None) or "")


def _client_addr() -> str:
    # As distribution does: the first X-Forwarded-For hop, then X-Real-Ip, then the peer.
    forwarded = request.headers.get("X-Forwarded-For", "").split(",")[0].strip()
    return forwarded or request.headers.get("X-Real-Ip", "") or request.remote_addr or ""


def _server_port() -> str:
    sock = request.environ.get("gunicorn.socket")
    try:
        return str(sock.getsockname()[1]) if sock is not None else ""
    except (OSError, IndexError, TypeError):
        return ""


def request_info() -> RequestInfo:
    return RequestInfo(
        id=g.get("request_id", ""),
        addr=_client_addr(),
        host=request.host,
        method=request.method,
        useragent=request.headers.get("User-Agent", ""),
        actor=_actor(),
        base_url=request.host_url.rstrip("/"),
        server_port=_server_port() or str(request.environ.get("SERVER_PORT", "")),
    )
