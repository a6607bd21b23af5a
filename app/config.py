"""Settings: defaults, then the TOML file named by $BERTH_CONFIG, then BERTH_* variables.

Every setting Berth reads is a field here, checked once at start-up: a bad value stops the
process with one line naming it. This module imports nothing else of app: each feature's
structured settings (auth_rules, notifications, ...) are parsed by that feature, once, when
app/context.py builds it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "BERTH_"
# Go's durations (time.ParseDuration), plus `d` for days: "500ms", "1h30m", "7d".
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_PLAIN_SECONDS = re.compile(r"\d+(?:\.\d+)?")
_SIZE = re.compile(r"^(\d+)(k|kib|m|mib|g|gib)?$", re.IGNORECASE)
_SIZE_UNITS = {
    None: 1,
    "k": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gib": 1024**3,
}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
STORAGE_DRIVERS = ("filesystem", "inmemory", "s3")
AUTH_MODES = ("none", "basic", "token")
OFFLOAD_MODES = ("none", "x-accel-redirect", "x-sendfile")
UI_MODES = ("on", "read-only", "off")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


def parse_duration(raw: Any, where: str) -> float:
    """Seconds from a duration: a number of seconds, or Go's syntax plus days ("1h30m", "7d").

    The one grammar for every duration Berth reads, top-level settings and webhook endpoint
    keys alike. Raises ConfigError naming `where`."""
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: {raw!r} is not a duration")
    if isinstance(raw, int | float):
        seconds = float(raw)
    elif isinstance(raw, str) and raw.strip():
        text = raw.strip()
        if _PLAIN_SECONDS.fullmatch(text):
            seconds = float(text)
        else:
            parts = _DURATION_PART.findall(text)
            if "".join(n + u for n, u in parts) != text:
                raise ConfigError(
                    f"{where}: {raw!r} is not a duration (seconds, or like 500ms, 90s, 1h30m, 7d)"
                )
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    else:
        raise ConfigError(
            f"{where}: {raw!r} is not a duration (seconds, or like 500ms, 90s, 1h30m, 7d)"
        )
    if not math.isfinite(seconds):
        raise ConfigError(f"{where}: {raw!r} is not a finite duration")
    if seconds < 0:
        raise ConfigError(f"{where}: must not be negative")
    return seconds


def _whole_seconds(raw: Any, where: str) -> int:
    seconds = parse_duration(raw, where)
    if seconds != int(seconds):
        raise ConfigError(f"{where}: {raw!r} is not a whole number of seconds")
    return int(seconds)


def _size(raw: Any, where: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    match = _SIZE.match(str(raw).strip())
    if not match:
        raise ConfigError(f"{where}: {raw!r} is not a size (bytes, or 512k, 8m, 1g)")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower() or None]


def _count(raw: Any, where: str) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{where}: {raw!r} is not a whole number")
    return int(text)


# How a scalar field's text is read, by the `kind` in its metadata (default: by its type).
_READERS = {"duration": _whole_seconds, "size": _size, "count": _count}


def _duration(default: int) -> Any:
    return dataclasses.field(default=default, metadata={"kind": "duration"})


def _sized(default: int) -> Any:
    return dataclasses.field(default=default, metadata={"kind": "size"})


def _number(default: int) -> Any:
    return dataclasses.field(default=default, metadata={"kind": "count"})


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/berth.db"
    # How long a SQLite writer waits for another's lock before the request is answered 503.
    sqlite_busy_timeout: int = _duration(30)
    storage_driver: str = "filesystem"
    storage_root: str = "var/storage"
    delete_enabled: bool = True
    # Upload sessions untouched for this long are forgotten and their bytes purged.
    upload_max_age: int = _duration(24 * 3600)
    upload_purge_interval: int = _duration(3600)
    max_manifest_size: int = _sized(4 * 1024 * 1024)
    log_level: str = "info"
    # One line per request on stdout (gunicorn's access log); off saves ~10% CPU on small GETs.
    access_log: bool = True
    # gunicorn (app/gunicorn_conf.py): gthread balanced across workers; `sync` or `gthread`
    # are there to measure against (docs/performance.md).
    worker_class: str = "app.gunicorn_worker.BalancedThreadWorker"
    # Threads per worker that may be running a request at once. A thread waiting for the
    # next bytes of a slow request body does not count (app/gunicorn_worker.py).
    threads: int = _number(8)
    # A request head (request line and headers) must arrive whole within this; until it
    # has, the connection waits in the poller, holding no thread (app/gunicorn_worker.py).
    request_head_timeout: int = _duration(30)
    # A request body that sends nothing for this long is given up (nginx's
    # client_body_timeout); a slow body that keeps sending is served however long it takes.
    request_body_timeout: int = _duration(60)
    # Peers whose X-Forwarded-* headers are believed (gunicorn's forwarded_allow_ips, and
    # the failed-login limiter's idea of the client address); "*" trusts everyone. None by
    # default: trusting loopback let any local client invent its address for every guess.
    forwarded_allow_ips: str = ""
    # Access control (app/auth/): "none" keeps the registry open.
    auth: str = "none"
    auth_realm: str = "Berth Registry"
    auth_htpasswd: str = ""
    auth_anonymous_pull: bool = False
    auth_rules: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    auth_groups: dict[str, Any] = dataclasses.field(default_factory=dict)
    auth_admins: dict[str, Any] = dataclasses.field(default_factory=dict)
    auth_token_realm: str = ""
    auth_token_service: str = "berth"
    auth_token_issuer: str = "berth"
    auth_token_key: str = ""
    auth_token_ttl: int = _duration(300)
    auth_cache_ttl: int = _duration(60)
    auth_max_failures: int = _number(10)
    auth_failure_window: int = _duration(60)
    # Webhook endpoints (app/notifications/endpoints.py), distribution's notifications.endpoints.
    notifications: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Deliver from a thread in each server worker; false leaves it to `berth notify`.
    notifications_in_server: bool = True
    # Delivered events are kept this long (for `berth notify status`), then purged.
    notifications_retention: int = _duration(7 * 86400)
    # Blob GETs answered with a header that makes the front end send the file itself
    # (app/registry/offload.py): "none", "x-accel-redirect" (nginx) or "x-sendfile" (Apache).
    blob_offload: str = "none"
    # x-accel-redirect: the nginx `internal` location aliased to storage_root (default
    # /_berth_blobs); x-sendfile: storage_root as the front end sees it (default: as Berth does).
    blob_offload_prefix: str = ""
    # `berth gc` leaves alone what was pushed, mounted or created this recently (its --grace).
    gc_grace: int = _duration(24 * 3600)
    # storage_driver = "s3": an S3-compatible object store (AWS S3, MinIO, Ceph RGW).
    s3_bucket: str = ""
    s3_endpoint_url: str = ""  # empty: AWS itself; e.g. http://minio.internal:9000
    s3_region: str = ""  # empty: us-east-1
    # Empty: boto3 finds credentials itself (AWS_* variables, ~/.aws, an instance role).
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_prefix: str = ""  # every key starts with this, so one bucket can hold several registries
    # Answer blob GETs with a 307 to a presigned URL: the bytes skip Berth.
    s3_redirect: bool = False
    # Chunked uploads go up in parts of this size; at most one part per writer is in memory.
    s3_part_size: int = _sized(8 * 1024 * 1024)
    # Pull-through cache (app/mirror/): `[[mirror_upstreams]]` tables with at least `prefix`
    # and `url`; parsed and checked by app/mirror/upstreams.py, each key named on error.
    mirror_upstreams: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # The web UI at /ui/ (app/ui/): "on", "read-only" (browse only, no delete forms) or "off".
    ui: str = "on"
    # A UI login lasts this long (a server-side session, app/auth/sessions.py).
    ui_session_ttl: int = _duration(12 * 3600)

    def __post_init__(self) -> None:
        self._check_storage()
        positive = (
            "upload_max_age",
            "upload_purge_interval",
            "max_manifest_size",
            "threads",
            "request_head_timeout",
            "request_body_timeout",
            "sqlite_busy_timeout",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive")
        if self.log_level.lower() not in LOG_LEVELS:
            levels = ", ".join(LOG_LEVELS)
            raise ConfigError(f"log_level: {self.log_level!r} is not one of {levels}")
        if self.max_manifest_size < 4 * 1024 * 1024:
            raise ConfigError("max_manifest_size: the spec requires at least 4 MiB")
        self._check_auth()
        if self.notifications_retention <= 0:
            raise ConfigError("notifications_retention: must be positive")
        self._check_offload()
        if self.ui not in UI_MODES:
            raise ConfigError(f"ui: {self.ui!r} is not one of {', '.join(UI_MODES)}")
        if self.ui_session_ttl <= 0:
            raise ConfigError("ui_session_ttl: must be positive")

    def _check_storage(self) -> None:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", self.database_url):
            raise ConfigError(
                f"database_url: {self.database_url!r} is not a sqlite:// or postgresql:// URL"
            )
        if self.storage_driver not in STORAGE_DRIVERS:
            drivers = ", ".join(STORAGE_DRIVERS)
            raise ConfigError(f"storage_driver: {self.storage_driver!r} is not one of {drivers}")
        if self.storage_driver == "s3" and not self.s3_bucket:
            raise ConfigError("s3_bucket: must be set for the s3 driver")
        if self.s3_part_size < 5 * 1024 * 1024:
            raise ConfigError("s3_part_size: S3 needs parts of at least 5 MiB")
        if self.storage_driver == "filesystem" and not self.storage_root:
            raise ConfigError("storage_root: must be set for the filesystem driver")

    def _check_auth(self) -> None:
        if self.auth not in AUTH_MODES:
            raise ConfigError(f"auth: {self.auth!r} is not one of {', '.join(AUTH_MODES)}")
        for name in ("auth_token_ttl", "auth_max_failures", "auth_failure_window"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive")
        if self.auth_cache_ttl < 0:
            raise ConfigError("auth_cache_ttl: must not be negative (0 turns the cache off)")
        if not re.fullmatch(r"[^\"\\\x00-\x1f]+", self.auth_realm):
            raise ConfigError("auth_realm: must be non-empty, without quotes or backslashes")

    def _check_offload(self) -> None:
        if self.blob_offload not in OFFLOAD_MODES:
            raise ConfigError(
                f"blob_offload: {self.blob_offload!r} is not one of {', '.join(OFFLOAD_MODES)}"
            )
        prefix = self.blob_offload_prefix
        if prefix and not prefix.startswith("/"):
            raise ConfigError(f"blob_offload_prefix: {prefix!r} must be an absolute path")
        if self.blob_offload != "none" and self.storage_driver != "filesystem":
            raise ConfigError(
                f"blob_offload: {self.blob_offload} needs the filesystem storage driver"
            )

    def trusted_proxies(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.forwarded_allow_ips.split(",") if p.strip())


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, raw: Any) -> Any:
    field = _FIELDS[name]
    if field.default_factory is not dataclasses.MISSING:
        # Structured settings (lists of tables in TOML): JSON when given in the environment.
        expected = type(field.default_factory())
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{name}: not valid JSON: {exc}") from exc
        if not isinstance(raw, expected):
            raise ConfigError(f"{name}: expected a {expected.__name__}, got {raw!r}")
        return raw
    kind = field.metadata.get("kind")
    if kind is not None:
        return _READERS[kind](raw, name)
    if isinstance(field.default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: {raw!r} is not a boolean (true/false)")
    if not isinstance(raw, str):
        raise ConfigError(f"{name}: {raw!r} is not a string")
    return raw


def load_settings(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Merge defaults, the TOML file, the environment and explicit overrides, in that order."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise ConfigError(f"BERTH_CONFIG: cannot read {config_file}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"BERTH_CONFIG: {config_file} is not valid TOML: {exc}") from exc
        for key, raw in data.items():
            if key not in _FIELDS:
                raise ConfigError(f"{config_file}: unknown setting {key!r}")
            values[key] = _coerce(key, raw)
    for key in _FIELDS:
        env_name = ENV_PREFIX + key.upper()
        if env_name in environ:
            values[key] = _coerce(key, environ[env_name])
    for key, raw in (overrides or {}).items():
        if key not in _FIELDS:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = _coerce(key, raw)
    return Settings(**values)
