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

    def __post_init__(self) -> None:
        if not re.match(r"^(sqlite|postgresql)(\+\w+)?://", self.database_url):
            raise ConfigError(
                f"database_url: {self.database_url!r} is not a sqlite:// or postgresql:// URL"
            )
        if self.storage_driver not in ("filesystem", "inmemory"):
            raise ConfigError(
                f"storage_driver: {self.storage_driver!r} is not one of filesystem, inmemory"
            )
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
