"""GET /v2/, the /v2 routing rules, error responses and the headers every response carries."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, current_app, g, jsonify, request
from flask import Response as FlaskResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from app.auth.guard import OPEN, Access
from app.context import Registry
from app.errors import (
    NameInvalid,
    NameUnknown,
    NotFound,
    PaginationNumberInvalid,
    RegistryError,
    Unavailable,
    Unsupported,
)
from app.registry.references import NAME_MAX_LENGTH, NAME_PATTERN, is_valid_name

bp = Blueprint("base", __name__)


class Response(FlaskResponse):
    """No Content-Type unless a body has one: empty 201/202/204s carry none."""

    default_mimetype = None


log = logging.getLogger(__name__)


RETRY_AFTER = 5  # seconds a client is asked to wait while the database is away


class _Outage:
    """One log line when the database goes away (and how many requests the previous outage
    turned away), instead of a traceback per request."""

    QUIET = 30.0  # seconds without a failure that end an outage

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0.0
        self._failures = 0

    def note(self, error: DBAPIError) -> None:
        now = time.monotonic()
        with self._lock:
            starting = now - self._last > self.QUIET
            if starting and self._failures:
                log.warning("database: %d requests answered 503 in the last outage", self._failures)
                self._failures = 0
            self._last, self._failures = now, self._failures + 1
        if starting:
            reason = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            log.error("database unavailable, answering 503 until it is back: %s", reason)


_outage = _Outage()


def json_response(data: Any, status: int = 200) -> Response:
    """jsonify, typed as what it builds: init_app makes Response the app's response_class."""
    response = jsonify(data)
    assert isinstance(response, Response)
    response.status_code = status
    return response


# The shapes of every /v2 endpoint and their methods, the name matched loosely: a request
# whose name is malformed gets NAME_INVALID (missing: NAME_UNKNOWN), and a known path with
# the wrong method gets UNSUPPORTED with an Allow header.
_ENDPOINT_SHAPES = [
    (re.compile(r"(?P<name>.*)/blobs/uploads/?"), "POST"),
    (re.compile(r"(?P<name>.*)/blobs/uploads/[^/]+"), "GET, PATCH, PUT, DELETE"),
    (re.compile(r"(?P<name>.*)/blobs/[^/]+"), "GET, HEAD, DELETE"),
    (re.compile(r"(?P<name>.*)/manifests/[^/]+"), "GET, HEAD, PUT, DELETE"),
    (re.compile(r"(?P<name>.*)/tags/list"), "GET, HEAD"),
    (re.compile(r"(?P<name>.*)/referrers/[^/]+"), "GET, HEAD"),
]
_CATALOG_METHODS = "GET, HEAD"
# An endpoint with its name left out: `/v2/tags/list`, `/v2//manifests/x`.
_NAMELESS = re.compile(r"/v2/+(?:tags/list|(?:manifests|referrers|blobs)/.*)")
MAX_PAGE = 1000


class RepositoryNameConverter(BaseConverter):
    """Matches a repository name, slashes included, so `a/blobs/b` routes as a name."""

    regex = NAME_PATTERN
    part_isolating = False


def registry() -> Registry:
    reg: Registry = current_app.extensions["berth"]
    return reg


def access() -> Access:
    """What access control decided about this request (app/views/auth.py); OPEN when off."""
    decided: Access = g.get("berth_access", OPEN)
    return decided


@bp.get("/v2/")
def version_check() -> Response:
    return json_response({})


@bp.route("/v2/<path:rest>", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
def unmatched(rest: str) -> Response:
    if rest == "_catalog":
        raise _not_allowed(_CATALOG_METHODS)
    for shape, methods in _ENDPOINT_SHAPES:
        match = shape.fullmatch(rest)
        if match:
            name = match.group("name")
            if not name:
                raise NameUnknown({"name": name}, message="repository name missing")
            if not is_valid_name(name):
                raise NameInvalid({"name": name})
            raise _not_allowed(methods)
    if _NAMELESS.fullmatch(request.path):
        raise NameUnknown({"name": ""}, message="repository name missing")
    raise NotFound({"path": request.path})


def _not_allowed(methods: str) -> Unsupported:
    return Unsupported(
        {"method": request.method}, message="method not allowed here", headers={"Allow": methods}
    )


def page_args() -> tuple[int | None, str | None]:
    """n and last of a paginated listing; n is capped at MAX_PAGE."""
    raw_n, last = request.args.get("n"), request.args.get("last")
    if last is not None and "\0" in last:
        # No name or tag holds a NUL, so everything after "a\0..." is everything after "a";
        # and PostgreSQL's text cannot carry one.
        last = last.split("\0", 1)[0]
    if raw_n is None or raw_n == "":
        return None, last
    if not (raw_n.isascii() and raw_n.isdigit()):  # "²" is a digit to str.isdigit
        raise PaginationNumberInvalid({"n": raw_n})
    return min(int(raw_n), MAX_PAGE), last


def next_link(path: str, items: list[str], limit: int) -> str:
    return f'<{path}?last={quote(items[-1], safe="")}&n={limit}>; rel="next"'


def paginated(path: str, key: str, items: list[str], limit: int | None, **extra: Any) -> Response:
    """Fetch one more than asked: if it is there, the Link header points past the page."""
    more = limit is not None and len(items) > limit
    if more:
        items = items[:limit]
    response = json_response({**extra, key: items})
    if more and limit:
        response.headers["Link"] = next_link(path, items, limit)
    return response


def error_response(error: RegistryError) -> Response:
    response = json_response({"errors": error.entries()}, error.status)
    response.headers.update(error.headers)
    return response


def init_app(app: Flask) -> None:
    app.url_map.converters["repo"] = RepositoryNameConverter
    app.url_map.strict_slashes = False
    # `/v2//tags/list` names no repository: answer that, rather than redirect elsewhere.
    app.url_map.merge_slashes = False
    app.response_class = Response
    app.register_blueprint(bp)

    @app.url_value_preprocessor
    def _check_name_length(_endpoint: str | None, values: dict[str, Any] | None) -> None:
        # The converter's regex checks the grammar; the length limit is checked here.
        if values and len(values.get("name", "")) > NAME_MAX_LENGTH:
            raise NameInvalid({"name": values["name"]}, message="repository name too long")

    @app.before_request
    def _request_id() -> None:
        g.request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())

    @app.after_request
    def _common_headers(response: Response) -> Response:
        if request.path.startswith("/v2"):
            response.headers["Docker-Distribution-API-Version"] = "registry/2.0"
        response.headers.setdefault("X-Request-Id", g.get("request_id", ""))
        return response

    @app.errorhandler(RegistryError)
    def _registry_error(error: RegistryError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        if error.code == 405:
            allowed = ", ".join(getattr(error, "valid_methods", None) or ())
            headers = {"Allow": allowed} if allowed else None
            return error_response(Unsupported(message="method not allowed", headers=headers))
        if error.code == 404:
            if _NAMELESS.fullmatch(request.path):
                return error_response(NameUnknown({"name": ""}, message="repository name missing"))
            return error_response(NotFound({"path": request.path}))
        body = {"errors": [{"code": "UNKNOWN", "message": error.description or error.name}]}
        return json_response(body, error.code or 500)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_unavailable(error: DBAPIError) -> Response:
        # PostgreSQL down or restarting, SQLite locked past its busy timeout: the client may
        # retry, and the pool reconnects by itself once the database is back.
        _outage.note(error)
        unavailable = Unavailable(
            message="the metadata store is unavailable",
            headers={"Retry-After": str(RETRY_AFTER)},
        )
        return error_response(unavailable)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("request %s failed", g.get("request_id"))
        detail = {"request_id": g.get("request_id")}
        body = {"errors": [{"code": "UNKNOWN", "message": "internal error", "detail": detail}]}
        return json_response(body, 500)
