"""OCI error codes as exceptions: one class per code, each knowing its HTTP status.

Services raise these; the single handler in app.views.base turns them into
``{"errors": [{"code", "message", "detail"}]}`` responses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class RegistryError(Exception):
    code: ClassVar[str] = "UNKNOWN"
    status: ClassVar[int] = 500
    message: ClassVar[str] = "unknown error"

    def __init__(
        self,
        detail: Any = None,
        *,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
        also: Sequence[RegistryError] | None = None,
    ) -> None:
        super().__init__(message or self.message)
        self.detail = detail
        # Further errors reported in the same response (one per missing blob, say).
        self.also = list(also or ())
        self.headers = headers or {}
        if message is not None:
            self.message = message  # type: ignore[misc]
        if status is not None:
            self.status = status  # type: ignore[misc]

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            body["detail"] = self.detail
        return body

    def entries(self) -> list[dict[str, Any]]:
        return [self.to_dict()] + [error.to_dict() for error in self.also]


class BlobUnknown(RegistryError):
    code, status, message = "BLOB_UNKNOWN", 404, "blob unknown to registry"


class BlobUploadInvalid(RegistryError):
    code, status, message = "BLOB_UPLOAD_INVALID", 400, "blob upload invalid"


class BlobUploadUnknown(RegistryError):
    code, status, message = "BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry"


class DigestInvalid(RegistryError):
    code, status, message = "DIGEST_INVALID", 400, "provided digest did not match uploaded content"


class ManifestBlobUnknown(RegistryError):
    code, status, message = (
        "MANIFEST_BLOB_UNKNOWN",
        400,
        "manifest references a blob unknown to registry",
    )


class ManifestInvalid(RegistryError):
    code, status, message = "MANIFEST_INVALID", 400, "manifest invalid"


class ManifestUnknown(RegistryError):
    code, status, message = "MANIFEST_UNKNOWN", 404, "manifest unknown"


class NameInvalid(RegistryError):
    code, status, message = "NAME_INVALID", 400, "invalid repository name"


class NameUnknown(RegistryError):
    code, status, message = "NAME_UNKNOWN", 404, "repository name not known to registry"


class SizeInvalid(RegistryError):
    code, status, message = "SIZE_INVALID", 400, "provided length did not match content length"


class TagInvalid(RegistryError):
    code, status, message = "TAG_INVALID", 400, "manifest tag did not match URI"


class Unauthorized(RegistryError):
    code, status, message = "UNAUTHORIZED", 401, "authentication required"


class Denied(RegistryError):
    code, status, message = "DENIED", 403, "requested access to the resource is denied"


class Unsupported(RegistryError):
    code, status, message = "UNSUPPORTED", 405, "the operation is unsupported"


class RangeInvalid(RegistryError):
    code, status, message = "RANGE_INVALID", 416, "invalid content range"


class TooManyRequests(RegistryError):
    code, status, message = "TOOMANYREQUESTS", 429, "too many requests"


class PayloadTooLarge(RegistryError):
    # The spec names no code for an oversized manifest; SIZE_INVALID with 413 is what
    # distribution-compatible clients understand.
    code, status, message = "SIZE_INVALID", 413, "payload too large"


class PaginationNumberInvalid(RegistryError):
    # distribution's code for a bad `n` on tags/list and _catalog.
    code, status, message = "PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested"


class NotFound(RegistryError):
    # A path under /v2/ that names no endpoint at all.
    code, status, message = "NOT_FOUND", 404, "no such endpoint"


class Unavailable(RegistryError):
    # distribution's code for a service that cannot answer now: the metadata store (the
    # database is away), or an upstream registry of the pull-through cache that is down,
    # too slow, or answering 5xx. The client may retry.
    code, status, message = "UNAVAILABLE", 503, "service unavailable"


class InsufficientStorage(RegistryError):
    # The server's disk is full: not the client's mistake, and not a bug either.
    code, status, message = "UNAVAILABLE", 507, "the registry's storage is full"
