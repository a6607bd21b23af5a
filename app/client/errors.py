"""What can go wrong talking to a registry, as exceptions a caller can catch by kind.

A registry's error body (`{"errors": [{"code", "message", "detail"}]}`) becomes a
RegistryAPIError subclass chosen by its first OCI error code (the codes are app/errors.py's),
so `except ManifestUnknown` works the same against Berth, the reference registry or any other.
"""

from __future__ import annotations

from typing import Any, ClassVar

import requests


class ClientError(Exception):
    """Anything the client library raises."""


class TransportError(ClientError):
    """The registry could not be reached, or the connection broke."""


class DigestMismatch(ClientError):
    """Bytes read from a registry do not hash to the digest asked for (or are not its size)."""

    def __init__(self, expected: str, actual: str, what: str = "content") -> None:
        super().__init__(f"{what}: expected {expected}, got {actual}")
        self.expected, self.actual = expected, actual


class AuthError(ClientError):
    """Credentials or a token could not be had (bad challenge, token endpoint refused)."""


class RegistryAPIError(ClientError):
    """An error answer of the registry API; `code` is the OCI error code."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(
        self, status: int, message: str, errors: list[dict[str, Any]], method: str, url: str
    ) -> None:
        super().__init__(f"{method} {url}: {status} {self.code}: {message}")
        self.status = status
        self.message = message
        self.errors = errors  # every entry of the body, for MANIFEST_BLOB_UNKNOWN's list
        self.method, self.url = method, url

    @property
    def detail(self) -> Any:
        return self.errors[0].get("detail") if self.errors else None


class BlobUnknown(RegistryAPIError):
    code = "BLOB_UNKNOWN"


class BlobUploadInvalid(RegistryAPIError):
    code = "BLOB_UPLOAD_INVALID"


class BlobUploadUnknown(RegistryAPIError):
    code = "BLOB_UPLOAD_UNKNOWN"


class DigestInvalid(RegistryAPIError):
    code = "DIGEST_INVALID"


class ManifestBlobUnknown(RegistryAPIError):
    code = "MANIFEST_BLOB_UNKNOWN"


class ManifestInvalid(RegistryAPIError):
    code = "MANIFEST_INVALID"


class ManifestUnknown(RegistryAPIError):
    code = "MANIFEST_UNKNOWN"


class NameInvalid(RegistryAPIError):
    code = "NAME_INVALID"


class NameUnknown(RegistryAPIError):
    code = "NAME_UNKNOWN"


class SizeInvalid(RegistryAPIError):
    code = "SIZE_INVALID"


class TagInvalid(RegistryAPIError):
    code = "TAG_INVALID"


class Unauthorized(RegistryAPIError):
    code = "UNAUTHORIZED"


class Denied(RegistryAPIError):
    code = "DENIED"


class Unsupported(RegistryAPIError):
    code = "UNSUPPORTED"


class RangeInvalid(RegistryAPIError):
    code = "RANGE_INVALID"


class TooManyRequests(RegistryAPIError):
    code = "TOOMANYREQUESTS"


class NotFound(RegistryAPIError):
    code = "NOT_FOUND"


class UnknownError(RegistryAPIError):
    code = "UNKNOWN"


_BY_CODE = {
    cls.code: cls
    for cls in (
        BlobUnknown, BlobUploadInvalid, BlobUploadUnknown, DigestInvalid, ManifestBlobUnknown,
        ManifestInvalid, ManifestUnknown, NameInvalid, NameUnknown, SizeInvalid, TagInvalid,
        Unauthorized, Denied, Unsupported, RangeInvalid, TooManyRequests, NotFound, UnknownError,
    )
}  # fmt: skip
# A body without a code (a proxy's HTML page, a HEAD): the status says what it was.
_BY_STATUS = {401: Unauthorized, 403: Denied, 404: NotFound, 405: Unsupported, 416: RangeInvalid,
              429: TooManyRequests}  # fmt: skip


def from_response(response: requests.Response) -> RegistryAPIError:
    errors: list[dict[str, Any]] = []
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("errors"), list):
            errors = [e for e in body["errors"] if isinstance(e, dict)]
    except ValueError:
        pass
    code = str(errors[0].get("code", "")) if errors else ""
    cls = _BY_CODE.get(code) or _BY_STATUS.get(response.status_code, UnknownError)
    message = str(errors[0].get("message", "")) if errors else (response.reason or "")
    method = response.request.method or "" if response.request is not None else ""
    return cls(response.status_code, message, errors, method, response.url)
