"""/ui/ pages and forms. Each view parses the request, makes one service call and renders.

Sessions: with auth on, logging in checks the same accounts as the registry API (the guard's
password check and failed-login limiter) and starts a server-side session
(app/auth/sessions.py) whose id is an HttpOnly, SameSite=Lax cookie, Secure when the request
came over https (gunicorn believes X-Forwarded-Proto from forwarded_allow_ips). Every POST
must carry the CSRF token: the session's, or before login and with auth off a random
cookie's (double submit). Permissions are asked of the policy on every request.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, current_app, g, redirect, render_template, request, url_for
from flask import Response as FlaskResponse
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from app.auth import sessions
from app.auth.guard import Access, Caller, Presented
from app.context import Registry
from app.errors import RegistryError, TooManyRequests, Unauthorized
from app.mirror.status import report as mirror_status_report
from app.notifications import delivery
from app.notifications.events import RequestInfo
from app.registry import browse, manifests
from app.registry import repositories as repository_store
from app.ui import filters
from app.ui.viewer import Viewer
from app.views.origin import request_info

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
SESSION_COOKIE = "berth_ui_session"
CSRF_COOKIE = "berth_ui_csrf"
PER_PAGE = 50
MAX_PER_PAGE = 200
# No inline script or style, nothing from elsewhere: a label that slipped past escaping
# still could not run.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_OPEN_ENDPOINTS = {"ui.login", "ui.static"}

Response = BaseResponse | str | tuple[str, int]


def _registry() -> Registry:
    reg: Registry = current_app.extensions["berth"]
    return reg


def _viewer() -> Viewer:
    viewer: Viewer = g.ui_viewer
    return viewer


def _request_info() -> RequestInfo:
    """Who made the change, for the webhook events it causes: as for the API, with the
    UI's logged-in user as the actor."""
    user = _viewer().user
    if user is not None:
        g.berth_access = Access(_registry().guard, Caller(user, authenticated=True))
    return request_info()


def _int_arg(name: str, default: int, upper: int | None = None) -> int:
    raw = request.args.get(name, "")
    value = int(raw) if raw.isascii() and raw.isdigit() else default
    value = max(value, 1)
    return min(value, upper) if upper else value


def _presented(username: str, password: str) -> Presented:
    return Presented(
        basic=(username, password),
        peer=request.remote_addr or "",
        forwarded_for=request.headers.get("X-Forwarded-For", ""),
        host_url=request.host_url,
    )


# --- every request -----------------------------------------------------------------------------


@bp.before_request
def _load_viewer() -> Response | None:
    reg = _registry()
    settings = reg.settings
    read_only = settings.ui == "read-only" or not settings.delete_enabled
    user, csrf = None, ""
    if reg.guard is not None:
        found = sessions.lookup(reg.db, request.cookies.get(SESSION_COOKIE, ""))
        if found is not None:
            user, csrf = found.user, found.csrf_token
    if not csrf:
        csrf = request.cookies.get(CSRF_COOKIE, "")
        if len(csrf) != 43:  # token_urlsafe(32); anything else is not ours
            csrf = g.ui_new_csrf = secrets.token_urlsafe(32)
    g.ui_viewer = viewer = Viewer(reg.guard, user, csrf, read_only)
    if request.method == "POST" and not viewer.csrf_ok(request.form.get("csrf_token")):
        return _page(
            "error.html",
            403,
            title="Form expired",
            message=(
                "This form was not sent from this session (missing or stale CSRF token). "
                "Reload the page and try again."
            ),
        )
    anonymous_locked_out = (
        reg.guard is not None and user is None and not reg.guard.policy.anonymous_pull
    )
    if anonymous_locked_out and request.endpoint not in _OPEN_ENDPOINTS:
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")), 303)
    return None


@bp.after_request
def _headers(response: FlaskResponse) -> FlaskResponse:
    if request.endpoint != "ui.static":
        response.headers.update(SECURITY_HEADERS)
    new_csrf = g.get("ui_new_csrf")
    if new_csrf:
        response.set_cookie(
            CSRF_COOKIE,
            new_csrf,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure,
            path="/ui",
        )
    return response


def _page(template: str, status: int = 200, **context: Any) -> FlaskResponse:
    # The app's response class sets no default type (an empty 202 carries none): say it.
    body = render_template(template, viewer=_viewer(), **context)
    return FlaskResponse(body, status, mimetype="text/html")


@bp.errorhandler(RegistryError)
def _registry_error(error: RegistryError) -> Response:
    if isinstance(error, Unauthorized) and _viewer().auth_on:
        return redirect(url_for("ui.login", next=request.full_path.rstrip("?")), 303)
    page = _page("error.html", error.status, title=error.code, message=error.message)
    if isinstance(error, TooManyRequests):
        page.headers.update(error.headers)
    return page


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    return _page("error.html", error.code or 400, title=error.name, message=error.description)


# --- login -------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    # Only somewhere inside the UI: never an open redirect to another site.
    if target and target.startswith("/ui") and not target.startswith("//") and "\\" not in target:
        return target
    return url_for("ui.repositories")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response:
    reg = _registry()
    target = _safe_next(request.values.get("next"))
    if reg.guard is None:
        return redirect(target, 303)
    if request.method == "GET":
        return _page("login.html", next=target, error="")
    username = request.form.get("username", "")
    try:
        caller = reg.guard.basic_caller(_presented(username, request.form.get("password", "")))
    except (Unauthorized, TooManyRequests) as exc:
        page = _page("login.html", exc.status, next=target, error=exc.message, username=username)
        if isinstance(exc, TooManyRequests):
            page.headers.update(exc.headers)
        return page
    if caller.user is None:
        return _page(
            "login.html",
            401,
            next=target,
            error="enter a username and a password",
            username=username,
        )
    session_id, _ = sessions.create(reg.db, caller.user, reg.settings.ui_session_ttl)
    response = redirect(target, 303)
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=reg.settings.ui_session_ttl,
        httponly=True,
        samesite="Lax",
        secure=request.is_secure,
        path="/ui",
    )
    return response


@bp.post("/logout")
def logout() -> Response:
    reg = _registry()
    sessions.end(reg.db, request.cookies.get(SESSION_COOKIE, ""))
    response = redirect(url_for("ui.login"), 303)
    response.delete_cookie(
        SESSION_COOKIE, path="/ui", httponly=True, samesite="Lax", secure=request.is_secure
    )
    return response


# --- browsing ----------------------------------------------------------------------------------


def _order() -> tuple[str, bool]:
    return request.args.get("sort", "name"), request.args.get("order", "asc") == "desc"


@bp.get("/")
def repositories() -> Response:
    sort, descending = _order()
    search = request.args.get("q", "")[:255]
    page = browse.repositories(
        _registry(),
        search,
        sort,
        descending,
        _int_arg("page", 1),
        _int_arg("per_page", PER_PAGE, MAX_PER_PAGE),
        _viewer().visible(),
    )
    return _page("repositories.html", found=page, q=search, sort=sort, descending=descending)


@bp.get("/repo/<repo:name>")
def repository(name: str) -> Response:
    _viewer().require(name, "pull")
    sort, descending = _order()
    page = browse.tags(
        _registry(),
        name,
        sort,
        descending,
        _int_arg("page", 1),
        _int_arg("per_page", PER_PAGE, MAX_PER_PAGE),
    )
    return _page(
        "repository.html",
        name=name,
        found=page,
        sort=sort,
        descending=descending,
        deleted=request.args.getlist("deleted"),
        missing=request.args.getlist("missing"),
    )


@bp.get("/repo/<repo:name>/-/manifest/<reference>")
def manifest(name: str, reference: str) -> Response:
    _viewer().require(name, "pull")
    detail = browse.manifest(_registry(), name, reference)
    return _page("manifest.html", name=name, m=detail, index_types=manifests.INDEX_TYPES)


# --- changes -----------------------------------------------------------------------------------


@bp.post("/repo/<repo:name>/-/delete-tags")
def delete_tags(name: str) -> Response:
    _viewer().require(name, "delete")
    done = browse.delete_tags(_registry(), name, request.form.getlist("tag"), _request_info())
    query = urlencode(
        [("deleted", t) for t in done.deleted] + [("missing", t) for t in done.missing]
    )
    return redirect(url_for("ui.repository", name=name) + ("?" + query if query else ""), 303)


@bp.post("/repo/<repo:name>/-/delete-manifest")
def delete_manifest(name: str) -> Response:
    _viewer().require(name, "delete")
    digest = request.form.get("digest", "")
    if not digest.startswith("sha"):
        return _page("error.html", 400, title="Bad request", message="no manifest digest given")
    manifests.delete_reference(_registry(), name, digest, _request_info())
    return redirect(url_for("ui.repository", name=name), 303)


@bp.get("/repo/<repo:name>/-/delete")
def confirm_delete_repository(name: str) -> Response:
    _viewer().require(name, "delete")
    return _page("delete_repository.html", name=name, summary=browse.summary(_registry(), name))


@bp.post("/repo/<repo:name>/-/delete")
def delete_repository(name: str) -> Response:
    _viewer().require(name, "delete")
    if request.form.get("confirm") != name:
        summary = browse.summary(_registry(), name)
        return _page("delete_repository.html", 400, name=name, summary=summary, mismatch=True)
    deleted = repository_store.delete(_registry(), name, origin=_request_info())
    return _page("deleted_repository.html", deleted=deleted)


# --- registry-wide -----------------------------------------------------------------------------


@bp.get("/gc")
def gc_preview() -> Response:
    _viewer().require_admin()
    untagged = request.args.get("untagged") == "1"
    reg = _registry()
    expiry = reg.mirror.retention  # the pull-through cache's, when an upstream has one
    report = browse.gc_preview(reg, untagged, expiry) if request.args.get("run") else None
    return _page(
        "gc.html", report=report, untagged=untagged, grace=reg.settings.gc_grace, retention=expiry
    )


@bp.get("/webhooks")
def webhooks() -> Response:
    _viewer().require_admin()
    return _page("webhooks.html", endpoints=delivery.status(_registry()))


@bp.get("/mirror")
def mirror_status() -> Response:
    _viewer().require_admin()
    return _page("mirror.html", upstreams=mirror_status_report(_registry()))


@bp.context_processor
def _mirrored() -> dict[str, bool]:
    return {"mirrored": bool(_registry().mirror)}


def init_app(app: Flask) -> None:
    filters.install(app)
    app.register_blueprint(bp)
