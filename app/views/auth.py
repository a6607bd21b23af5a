"""Access control on /v2 and /api: what each request needs, asked of the guard (app/auth/guard.py).

With `auth = "none"` (the default) nothing here is installed. Otherwise a before_request hook
maps each request to what it needs -- a login (GET /v2/), the catalog, or actions on one
repository (GET/HEAD: pull; POST/PATCH/PUT: pull and push, as distribution asks;
DELETE: delete, or push for an upload session) -- and the guard answers 401, 403 or 429
before any view runs. Every path under /api/ needs an admin. The decision is kept for the
request (views.base.access()), for the views that filter by it.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, g, request
from flask_httpauth import HTTPBasicAuth, HTTPTokenAuth

from app.auth.guard import TOKEN_PATH, Access, Guard, Need, Presented
from app.registry.references import is_valid_name
from app.views.base import Response, json_response, registry

bp = Blueprint("auth", __name__)
log = logging.getLogger(__name__)
# Only their header parsing is used: a Basic header's credentials, a Bearer header's token
# (None when the header is absent or of another scheme).
_basic = HTTPBasicAuth()
_bearer = HTTPTokenAuth(scheme="Bearer")


def _presented() -> Presented:
    credentials = _basic.get_auth()
    basic = None
    if credentials is not None:
        basic = (credentials.username or "", credentials.password or "")
    bearer = _bearer.get_auth()
    sent = request.headers.get("Authorization") is not None
    return Presented(
        basic=basic,
        token=bearer.token if bearer is not None else None,
        malformed=sent and credentials is None and bearer is None,
        peer=request.remote_addr or "",
        forwarded_for=request.headers.get("X-Forwarded-For", ""),
        host_url=request.host_url,
    )


def _need() -> Need:
    if request.endpoint == "listings.catalog":
        return Need("catalog")
    name = (request.view_args or {}).get("name")
    if not isinstance(name, str):
        return Need("login")
    if request.method in ("GET", "HEAD", "OPTIONS"):
        actions: tuple[str, ...] = ("pull",)
    elif request.method == "DELETE" and request.endpoint != "uploads.cancel_upload":
        actions = ("delete",)
    else:
        actions = ("pull", "push")
    source = request.args.get("from") or ""
    mounting = request.endpoint == "uploads.start_upload" and request.args.get("mount")
    if mounting and is_valid_name(source):
        return Need("repository", name, actions, (f"repository:{source}:pull",))
    return Need("repository", name, actions)


def _check_access(guard: Guard) -> None:
    path = request.path
    if path.startswith("/api/") or path == "/api":
        g.berth_access = Access(guard, guard.admin(_presented()))
        return
    if path != "/v2" and not path.startswith("/v2/"):
        return
    need, presented = _need(), _presented()
    caller = guard.caller(presented, need)
    g.berth_access = Access(guard, caller)
    guard.authorize(caller, need, presented)


@bp.get(TOKEN_PATH)
def issue_token() -> Response:
    guard = registry().guard
    assert guard is not None  # registered only when the guard issues tokens
    return json_response(guard.issue_token(_presented(), request.args.getlist("scope")))


def init_app(app: Flask) -> None:
    guard = app.extensions["berth"].guard
    if guard is None:
        return
    policy = guard.policy
    if not (policy.rules or policy.admin_users or policy.admin_groups or policy.anonymous_pull):
        log.warning(
            "auth = %s with no auth_rules or auth_admins: nobody may do anything", guard.mode
        )
    app.before_request(lambda: _check_access(guard))
    if guard.issues_tokens:  # token mode, and basic mode with anonymous pulls (guard.py)
        app.register_blueprint(bp)
