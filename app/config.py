"""Settings: defaults, then the TOML file named by $BERTH_CONFIG, then BERTH_* variables.

Validated once at start-up; a bad value stops the process with one clear message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "BERTH_"
_DURATION = re.compile(r"^(\d+)(s|m|h|d)?$")
_UNITS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
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


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///var/berth.db"
    storage_driver: str = "filesystem"
    storage_root: str = "var/storage"
    delete_enabled: bool = True
    # Upload sessions untouched for this long are forgotten and their bytes purged.
    upload_max_age: int = 24 * 3600
    upload_purge_interval: int = 3600
    max_manifest_size: int = 4 * 1024 * 1024
    log_level: str = "info"
    # One line per request on stdout (gunicorn's access log); off saves ~10% CPU on small GETs.
    access_log: bool = True
    # Access control (app/registry/access.py): "none" keeps the registry open, as before.
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
    auth_token_ttl: int = 300
    auth_cache_ttl: int = 60
    auth_max_failures: int = 10
    auth_failure_window: int = 60
    # Webhook endpoints (app/registry/endpoints.py), distribution's notifications.endpoints.
    notifications: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # Deliver from a thread in each server worker; false leaves it to `berth notify`.
    notifications_in_server: bool = True
    # Delivered events are kept this long (for `berth notify status`), then purged.
    notifications_retention: int = 7 * 86400
    # Blob GETs answered with a header that makes the front end send the file itself
    # (app/registry/offload.py): "none", "x-accel-redirect" (nginx) or "x-sendfile" (Apache).
    blob_offload: str = "none"
    # x-accel-redirect: the nginx `internal` location aliased to storage_root (default
    # /_berth_blobs); x-sendfile: storage_root as the front end sees it (default: as Berth does).
    blob_offload_prefix: str = ""
    # `berth gc` leaves alone what was pushed, mounted or created this recently (its --grace).
    gc_grace: int = 24 * 3600
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
    s3_part_size: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", self.database_url):
            raise ConfigError(
                f"database_url: {self.database_url!r} is not a sqlite:// or postgresql:// URL"
            )
        if self.storage_driver not in ("filesystem", "inmemory", "s3"):
            raise ConfigError(
                f"storage_driver: {self.storage_driver!r} is not one of filesystem, inmemory, s3"
            )
        if self.storage_driver == "s3" and not self.s3_bucket:
            raise ConfigError("s3_bucket: must be set for the s3 driver")
        if self.s3_part_size < 5 * 1024 * 1024:
            raise ConfigError("s3_part_size: S3 needs parts of at least 5 MiB")
        if self.storage_driver == "filesystem" and not self.storage_root:
            raise ConfigError("storage_root: must be set for the filesystem driver")
        for name in ("upload_max_age", "upload_purge_interval", "max_manifest_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be positive")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError(
                f"log_level: {self.log_level!r} is not one of debug, info, warning, error, critical"
            )
        if self.max_manifest_size < 4 * 1024 * 1024:
            raise ConfigError("max_manifest_size: the spec requires at least 4 MiB")
        from app.registry.access import check_settings  # the auth_* settings' own grammar

        check_settings(self)
        from app.registry.endpoints import parse_endpoints

        try:
            parse_endpoints(self.notifications)
        except ValueError as exc:
            raise ConfigError(f"notifications: {exc}") from exc
        if self.notifications_retention <= 0:
            raise ConfigError("notifications_retention: must be positive")
        from app.registry.offload import check_settings as check_offload

        check_offload(self)


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
    default = field.default
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: {raw!r} is not a boolean (true/false)")
    if isinstance(default, int):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if name.endswith("_size"):
            match = _SIZE.match(str(raw).strip())
            if not match:
                raise ConfigError(f"{name}: {raw!r} is not a size (bytes, or 512k, 8m, 1g)")
            return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower() or None]
        match = _DURATION.match(str(raw).strip())
        if not match:
            raise ConfigError(f"{name}: {raw!r} is not a number (seconds, or 30m, 24h, 7d)")
        return int(match.group(1)) * _UNITS[match.group(2)]
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
