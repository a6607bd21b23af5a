"""Blob offload: Berth answers a blob GET with a header naming the file, and the front end
(nginx with X-Accel-Redirect, Apache with mod_xsendfile's X-Sendfile) sends the bytes.

A gunicorn thread then spends microseconds on a multi-gigabyte layer instead of minutes,
and the front end serves Range requests from the file itself. Only the filesystem driver
has files a front end can open; with any other driver Berth streams the bytes as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.registry import paths
from app.registry.context import Registry
from app.registry.references import Digest

if TYPE_CHECKING:
    from app.config import Settings

NONE, ACCEL, SENDFILE = "none", "x-accel-redirect", "x-sendfile"
MODES = (NONE, ACCEL, SENDFILE)
# The nginx sample's `internal` location; deploy/nginx/berth.conf.template aliases it.
DEFAULT_ACCEL_PREFIX = "/_berth_blobs"


def check_settings(settings: Settings) -> None:
    from app.config import ConfigError

    if settings.blob_offload not in MODES:
        raise ConfigError(
            f"blob_offload: {settings.blob_offload!r} is not one of {', '.join(MODES)}"
        )
    prefix = settings.blob_offload_prefix
    if prefix and not prefix.startswith("/"):
        raise ConfigError(f"blob_offload_prefix: {prefix!r} must be an absolute path")
    if settings.blob_offload != NONE and settings.storage_driver != "filesystem":
        raise ConfigError(
            f"blob_offload: {settings.blob_offload} needs the filesystem storage driver"
        )


def offload_headers(reg: Registry, digest: Digest) -> dict[str, str] | None:
    """The header that hands this blob's file to the front end; None: send the bytes."""
    mode = reg.settings.blob_offload
    full_path = getattr(reg.driver, "full_path", None)  # only the filesystem driver has files
    if mode == NONE or full_path is None:
        return None
    key = paths.blob_data(digest)
    prefix = reg.settings.blob_offload_prefix.rstrip("/")
    if mode == ACCEL:
        return {"X-Accel-Redirect": f"{prefix or DEFAULT_ACCEL_PREFIX}/{key}"}
    return {"X-Sendfile": f"{prefix}/{key}" if prefix else str(full_path(key))}
