"""Jinja filters and helpers the UI templates use (pure formatting, nothing looked up)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from flask import Flask, request

_SHORT_TYPES = {
    "application/vnd.oci.image.manifest.v1+json": "OCI image",
    "application/vnd.oci.image.index.v1+json": "OCI index",
    "application/vnd.docker.distribution.manifest.v2+json": "Docker image",
    "application/vnd.docker.distribution.manifest.list.v2+json": "Docker list",
}


def short_digest(digest: str) -> str:
    algorithm, _, hexpart = digest.partition(":")
    return f"{algorithm}:{hexpart[:12]}" if hexpart else digest


def short_type(media_type: str) -> str:
    return _SHORT_TYPES.get(media_type, media_type)


def when(moment: datetime | str | None) -> str:
    if moment is None or moment == "":
        return ""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return str(moment)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment.tzinfo else moment.isoformat()


def size(number: int | None) -> str:
    if number is None:
        return ""
    value = float(number)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{number} B"


def query(**changes: Any) -> str:
    """This page's query string with some arguments changed (sorting and paging links)."""
    args = {k: v for k, v in request.args.items() if k not in changes}
    args.update({k: v for k, v in changes.items() if v is not None})
    return "?" + urlencode(args)


def install(app: Flask) -> None:
    app.jinja_env.filters.update(
        short_digest=short_digest, short_type=short_type, when=when, size=size
    )
    app.jinja_env.globals.update(query=query)
