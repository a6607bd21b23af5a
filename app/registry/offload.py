"""Blob offload: Berth answers a blob GET with a header naming the file, and the front end
(nginx with X-Accel-Redirect, Apache with mod_xsendfile's X-Sendfile) sends the bytes.

A gunicorn thread then spends microseconds on a multi-gigabyte layer instead of minutes,
and the front end serves Range requests from the file itself. Only a driver whose blobs are
files on this host (StorageDriver.local_path) can offload; with any other driver Berth
streams the bytes as before. app/config.py checks the settings.
"""

from __future__ import annotations

from app.registry import paths
from app.registry.context import Context
from app.registry.references import Digest

ACCEL = "x-accel-redirect"
# The nginx sample's `internal` location; deploy/nginx/berth.conf.template aliases it.
DEFAULT_ACCEL_PREFIX = "/_berth_blobs"


def headers(reg: Context, digest: Digest) -> dict[str, str] | None:
    """The header that hands this blob's file to the front end; None: send the bytes."""
    mode = reg.settings.blob_offload
    key = paths.blob_data(digest)
    local = reg.driver.local_path(key)
    if mode == "none" or local is None:
        return None
    prefix = reg.settings.blob_offload_prefix.rstrip("/")
    if mode == ACCEL:
        return {"X-Accel-Redirect": f"{prefix or DEFAULT_ACCEL_PREFIX}/{key}"}
    return {"X-Sendfile": f"{prefix}/{key}" if prefix else local}
