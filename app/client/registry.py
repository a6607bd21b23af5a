"""RegistryClient: the Docker Registry HTTP API V2 / OCI Distribution API over requests.

One client per registry. Every call says which scope it needs (pull, push, delete on a
repository, or the catalog) so that token auth asks for exactly that and caches the token
per scope. Bytes stream in bounded chunks: a blob is never held in memory whole (except by
`get_blob`, for configs and other small blobs), and what is read is verified against its
digest before the caller is told it is done.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

import requests

from app.client import errors
from app.client.auth import Authenticator, Credentials, saved_credentials
from app.client.media import (
    MANIFEST_TYPES,
    OCI_INDEX,
    Manifest,
    digest_of,
    media_type_of,
    referrers_tag,
)
from app.registry.references import Digest

DEFAULT_CHUNK = 8 * 1024 * 1024
READ_CHUNK = 1024 * 1024
RESUME_ATTEMPTS = 5
USER_AGENT = "berth-client/0.1"


class Progress(Protocol):
    """What transfers report to: bytes moved (a progress bar, a counter)."""

    def update(self, n: int) -> None: ...


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


Opener = Callable[[int], Readable]  # the source's bytes from an offset on


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0].strip("[]") if not host.endswith("]") else host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def base_url(registry: str) -> str:
    """ "host:port" or a URL -> the registry's base URL. Like docker, plain HTTP is assumed
    for loopback hosts only; everything else is https unless the URL says http."""
    if "://" in registry:
        parts = urlsplit(registry)
        return f"{parts.scheme}://{parts.netloc}"
    scheme = "http" if is_loopback(registry) else "https"
    return f"{scheme}://{registry}"


@dataclass(frozen=True)
class Descriptor:
    digest: str
    size: int
    media_type: str = ""


@dataclass(frozen=True)
class Pushed:
    digest: str
    subject_recorded: bool  # the registry answered OCI-Subject: it serves the referrers API


class BlobReader:
    """A blob's bytes as a stream, hashed while read: reaching the end with the wrong digest
    or size raises DigestMismatch (so a caller that copies it never finishes on bad bytes).
    Read from an offset (a resumed copy) there is nothing to hash against; the size is
    still checked."""

    def __init__(self, response: requests.Response, digest: str, size: int | None, offset: int):
        self._response = response
        self._raw = response.raw
        self.digest, self.offset = digest, offset
        self.size = size
        self._read = 0
        self._hasher = hashlib.new(digest.split(":", 1)[0]) if offset == 0 else None
        self._done = False

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        try:
            data = self._raw.read(READ_CHUNK if n is None or n < 0 else n, decode_content=False)
        except (requests.RequestException, OSError, ValueError) as exc:
            raise errors.TransportError(f"reading blob {self.digest}: {exc}") from exc
        except Exception as exc:  # urllib3's ProtocolError and friends
            raise errors.TransportError(f"reading blob {self.digest}: {exc}") from exc
        if data:
            self._read += len(data)
            if self._hasher is not None:
                self._hasher.update(data)
            return data
        self._done = True
        self._verify()
        return b""

    def _verify(self) -> None:
        total = self.offset + self._read
        if self.size is not None and total != self.size:
            raise errors.DigestMismatch(f"{self.size} bytes", f"{total} bytes", self.digest)
        if self._hasher is not None:
            actual = f"{self.digest.split(':', 1)[0]}:{self._hasher.hexdigest()}"
            if actual != self.digest:
                raise errors.DigestMismatch(self.digest, actual, "blob")

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _Body:
    """A request body read from a stream: at most `limit` bytes, counted for progress."""

    def __init__(self, stream: Readable, limit: int | None, progress: Progress | None) -> None:
        self._stream, self._left, self._progress = stream, limit, progress
        self.sent = 0

    def read(self, n: int = -1) -> bytes:
        want = READ_CHUNK if n is None or n < 0 else n
        if self._left is not None:
            want = min(want, self._left)
            if want <= 0:
                return b""
        data = self._stream.read(want)
        if self._left is not None:
            self._left -= len(data)
        self.sent += len(data)
        if self._progress is not None and data:
            self._progress.update(len(data))
        return data

    def __len__(self) -> int:
        return self._left or 0


def repo_scope(repo: str, actions: str) -> str:
    return f"repository:{repo}:{actions}"


class RegistryClient:
    """A registry at `url` ("host:port" or "http[s]://host:port").

    auth: None looks up what docker/podman/berth login saved for the host; a
    Credentials or (user, password) uses those; False stays anonymous.
    tls: True verifies certificates, False does not, a path names a CA bundle.
    """

    def __init__(
        self,
        url: str,
        auth: Credentials | tuple[str, str] | bool | None = None,
        tls: bool | str = True,
        timeout: float = 60.0,
    ) -> None:
        self.url = base_url(url)
        self.host = urlsplit(self.url).netloc
        self.session = requests.Session()
        self.session.verify = tls
        self.session.headers["User-Agent"] = USER_AGENT
        self.timeout = timeout
        if isinstance(auth, tuple):
            credentials: Credentials | None = Credentials(*auth)
        elif isinstance(auth, Credentials):
            credentials = auth
        elif auth is None:
            credentials = saved_credentials(self.host)
        else:
            credentials = None
        self.auth = Authenticator(credentials, self.session)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- the HTTP exchange ------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return urljoin(self.url + "/", path)

    def request(
        self,
        method: str,
        path: str,
        scope: str,
        *,
        ok: tuple[int, ...] = (200,),
        headers: dict[str, str] | None = None,
        data: Any = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
        replayable: bool = True,
        allow: tuple[int, ...] = (),
    ) -> requests.Response:
        """Send one request with the auth `scope` needs; a 401 is answered once (Basic, or a
        token for the challenge's scope) when the body can be sent again. A status outside
        `ok` and `allow` raises the typed error of the registry's error code."""
        url = self._url(path)
        sent = dict(headers or {})
        authorization = self.auth.header(scope)
        if authorization:
            sent["Authorization"] = authorization
        response = self._send(method, url, sent, data, params, stream)
        if response.status_code == 401 and replayable:
            retry = self.auth.challenged(response.headers.get("WWW-Authenticate", ""), scope)
            if retry and retry != authorization:
                response.close()
                sent["Authorization"] = retry
                response = self._send(method, url, sent, data, params, stream)
        if response.status_code not in ok and response.status_code not in allow:
            try:
                raise errors.from_response(response)
            finally:
                response.close()
        return response

    def _send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        data: Any,
        params: dict[str, str] | None,
        stream: bool,
    ) -> requests.Response:
        try:
            return self.session.request(
                method,
                url,
                headers=headers,
                data=data,
                params=params,
                stream=stream,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise errors.TransportError(f"{method} {url}: {exc}") from exc

    # --- base, catalog, tags ----------------------------------------------------------------

    def ping(self) -> bool:
        """GET /v2/: True when the registry answers (and, with auth on, lets us in)."""
        self.request("GET", "/v2/", "")
        return True

    def _pages(self, path: str, key: str, scope: str, n: int | None) -> Iterator[str]:
        params = {"n": str(n)} if n is not None else None
        url: str | None = path
        while url is not None:
            response = self.request("GET", url, scope, params=params)
            try:
                body = response.json()
            except ValueError as exc:
                raise errors.ClientError(f"GET {url}: not JSON") from exc
            yield from body.get(key) or []
            url = response.links.get("next", {}).get("url")
            params = None  # the Link carries n and last

    def catalog(self, n: int | None = None) -> Iterator[str]:
        """Every repository name, following the registry's Link pages (n per page)."""
        return self._pages("/v2/_catalog", "repositories", "registry:catalog:*", n)

    def tags(self, repo: str, n: int | None = None) -> Iterator[str]:
        return self._pages(f"/v2/{repo}/tags/list", "tags", repo_scope(repo, "pull"), n)

    # --- manifests --------------------------------------------------------------------------

    def get_manifest(self, repo: str, reference: str) -> Manifest:
        """A manifest by tag or digest, its bytes checked against the digest."""
        response = self.request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            repo_scope(repo, "pull"),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        body = response.content
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES:
            media_type = media_type_of(body) or media_type
        expected = reference if ":" in reference else response.headers.get("Docker-Content-Digest")
        if expected:
            algorithm = expected.split(":", 1)[0]
            if algorithm not in ("sha256", "sha512"):
                raise errors.DigestMismatch(expected, "an unsupported algorithm", "manifest")
            actual = digest_of(body, algorithm)
            if actual != expected:
                raise errors.DigestMismatch(expected, actual, "manifest")
            if algorithm == "sha256":
                return Manifest(expected, media_type, body)
        return Manifest(digest_of(body), media_type, body)

    def head_manifest(self, repo: str, reference: str) -> Descriptor | None:
        """The manifest's digest, size and media type; None when there is no such manifest."""
        response = self.request(
            "HEAD",
            f"/v2/{repo}/manifests/{reference}",
            repo_scope(repo, "pull"),
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
            allow=(404,),
        )
        if response.status_code == 404:
            return None
        digest = response.headers.get("Docker-Content-Digest")
        if not digest:
            if ":" not in reference:
                return Descriptor(self.get_manifest(repo, reference).digest, 0)
            digest = reference
        size = int(response.headers.get("Content-Length") or 0)
        return Descriptor(digest, size, response.headers.get("Content-Type", ""))

    def put_manifest(self, repo: str, reference: str, manifest: Manifest) -> str:
        """Store the exact bytes under a tag or their digest; returns the digest."""
        return self.push_manifest(repo, reference, manifest).digest

    def push_manifest(self, repo: str, reference: str, manifest: Manifest) -> Pushed:
        """put_manifest, also telling whether the registry recorded a subject (OCI-Subject)."""
        response = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            repo_scope(repo, "pull,push"),
            ok=(201, 200, 202),
            headers={"Content-Type": manifest.media_type},
            data=manifest.body,
        )
        answered = response.headers.get("Docker-Content-Digest")
        if answered and answered.startswith("sha256:") and answered != manifest.digest:
            raise errors.DigestMismatch(manifest.digest, answered, "stored manifest")
        return Pushed(manifest.digest, "OCI-Subject" in response.headers)

    def delete_manifest(self, repo: str, reference: str) -> None:
        """By digest: the manifest (and its tags); by tag: the tag only (where supported)."""
        self.request(
            "DELETE",
            f"/v2/{repo}/manifests/{reference}",
            repo_scope(repo, "delete"),
            ok=(202, 200, 204),
        )

    # --- blobs ------------------------------------------------------------------------------

    def head_blob(self, repo: str, digest: str) -> int | None:
        """The blob's size when it is in the repository, else None."""
        response = self.request(
            "HEAD", f"/v2/{repo}/blobs/{digest}", repo_scope(repo, "pull"), allow=(404,)
        )
        if response.status_code == 404:
            return None
        return int(response.headers.get("Content-Length") or 0)

    def open_blob(
        self, repo: str, digest: str, offset: int = 0, size: int | None = None
    ) -> BlobReader:
        """A streaming reader of the blob (from `offset`), verified as it is read."""
        Digest.parse(digest)  # never a path built from a malformed digest
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        response = self.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            repo_scope(repo, "pull"),
            ok=(206,) if offset else (200,),
            headers=headers,
            stream=True,
        )
        if size is None and response.headers.get("Content-Length") and not offset:
            size = int(response.headers["Content-Length"])
        return BlobReader(response, digest, size, offset)

    def get_blob(self, repo: str, digest: str) -> bytes:
        """A small blob (a config) whole, verified."""
        parts = []
        with self.open_blob(repo, digest) as reader:
            while chunk := reader.read(READ_CHUNK):
                parts.append(chunk)
        return b"".join(parts)

    def delete_blob(self, repo: str, digest: str) -> None:
        self.request(
            "DELETE", f"/v2/{repo}/blobs/{digest}", repo_scope(repo, "delete"), ok=(202, 200, 204)
        )

    # --- uploads ----------------------------------------------------------------------------

    def mount_blob(self, repo: str, digest: str, source: str) -> bool:
        """Link a blob of repository `source` into `repo` without moving bytes; False when the
        registry would not (the session it opened instead is cancelled)."""
        response = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?" + urlencode({"mount": digest, "from": source}),
            f"{repo_scope(repo, 'pull,push')} {repo_scope(source, 'pull')}",
            ok=(201, 202),
        )
        if response.status_code == 201:
            return True
        location = response.headers.get("Location")
        if location:
            self.request("DELETE", location, repo_scope(repo, "pull,push"), ok=(204, 200, 404))
        return False

    def start_upload(self, repo: str) -> str:
        """A new upload session; returns its Location (absolute)."""
        response = self.request(
            "POST", f"/v2/{repo}/blobs/uploads/", repo_scope(repo, "pull,push"), ok=(202,)
        )
        return self._location(response)

    def _location(self, response: requests.Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise errors.ClientError(f"{response.request.method} {response.url}: no Location")
        return urljoin(response.url, location)

    def upload_status(self, repo: str, location: str) -> int:
        """How many bytes the session holds (its Range header)."""
        response = self.request("GET", location, repo_scope(repo, "pull,push"), ok=(204, 200))
        return _range_end(response.headers.get("Range")) + 1

    def upload_blob(
        self,
        repo: str,
        data: bytes | IO[bytes] | Opener,
        digest: str | None = None,
        size: int | None = None,
        *,
        chunk_size: int | None = None,
        progress: Progress | None = None,
        mount_from: str | None = None,
    ) -> str:
        """Upload a blob; returns its digest.

        `data` is bytes, a stream, or an opener (offset -> stream) that lets a chunked upload
        resume after a dropped connection from where the registry says it stands (a seekable
        stream does too). Without chunk_size the blob goes in one PUT (monolithic); with it,
        in PATCHes of that size. With `mount_from`, a cross-repository mount is tried first.
        """
        if isinstance(data, bytes):
            digest = digest or digest_of(data)
            size = len(data)
        if digest is None:
            raise ValueError("upload_blob needs the digest of a streamed blob")
        Digest.parse(digest)
        if mount_from and mount_from != repo and self.mount_blob(repo, digest, mount_from):
            if progress is not None and size:
                progress.update(size)
            return digest
        opener = _opener(data)
        location = self.start_upload(repo)
        if chunk_size is None:
            self._put_whole(repo, location, digest, size, opener, progress)
        else:
            self._put_chunks(repo, location, digest, size, opener, chunk_size, progress)
        return digest

    def _put_whole(
        self,
        repo: str,
        location: str,
        digest: str,
        size: int | None,
        opener: Opener,
        progress: Progress | None,
    ) -> None:
        stream = opener(0)
        try:
            body = _Body(stream, size, progress)
            headers = {"Content-Type": "application/octet-stream"}
            if size is not None:
                headers["Content-Length"] = str(size)
            self.request(
                "PUT",
                _with_digest(location, digest),
                repo_scope(repo, "pull,push"),
                ok=(201, 204),
                headers=headers,
                data=body if size else b"",
                replayable=False,
            )
        finally:
            stream.close()

    def _put_chunks(
        self,
        repo: str,
        location: str,
        digest: str,
        size: int | None,
        opener: Opener,
        chunk_size: int,
        progress: Progress | None,
    ) -> None:
        scope = repo_scope(repo, "pull,push")
        offset, failures = 0, 0
        stream = opener(0)
        try:
            while size is None or offset < size:
                chunk = stream.read(chunk_size if size is None else min(chunk_size, size - offset))
                if not chunk:
                    break
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    "Content-Length": str(len(chunk)),
                }
                try:
                    response = self.request(
                        "PATCH", location, scope, ok=(202, 204), headers=headers, data=chunk
                    )
                except (errors.TransportError, errors.RangeInvalid, errors.BlobUploadInvalid):
                    # Dropped or refused: ask the registry where the upload stands, go on there.
                    failures += 1
                    if failures > RESUME_ATTEMPTS:
                        raise
                    time.sleep(min(0.2 * 2**failures, 5))
                    held = self.upload_status(repo, location)
                    stream.close()
                    stream = opener(held)
                    offset = held
                    continue
                location = self._location(response)
                offset += len(chunk)
                if progress is not None:
                    progress.update(len(chunk))
        finally:
            stream.close()
        self.request(
            "PUT",
            _with_digest(location, digest),
            scope,
            ok=(201, 204),
            headers={"Content-Length": "0"},
            data=b"",
        )

    # --- referrers --------------------------------------------------------------------------

    def referrers(
        self, repo: str, digest: str, artifact_type: str | None = None
    ) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose subject is `digest`: the referrers API, or on a
        registry without it, the OCI 1.1 fallback tag (sha256-<hex>)."""
        params = {"artifactType": artifact_type} if artifact_type else None
        response = self.request(
            "GET",
            f"/v2/{repo}/referrers/{digest}",
            repo_scope(repo, "pull"),
            params=params,
            allow=(404, 405, 400),
        )
        found: list[dict[str, Any]]
        if response.status_code == 200 and _is_index(response):
            found = list(response.json().get("manifests") or [])
        else:
            response.close()
            found = self._fallback_referrers(repo, digest)
        if artifact_type:
            found = [d for d in found if d.get("artifactType") == artifact_type]
        return found

    def _fallback_referrers(self, repo: str, digest: str) -> list[dict[str, Any]]:
        try:
            index = self.get_manifest(repo, referrers_tag(digest))
        except (errors.ManifestUnknown, errors.NotFound, errors.NameUnknown):
            return []
        return index.children()

    def has_referrers_api(self, repo: str, digest: str) -> bool:
        response = self.request(
            "GET",
            f"/v2/{repo}/referrers/{digest}",
            repo_scope(repo, "pull"),
            allow=(404, 405, 400),
        )
        response.close()
        return response.status_code == 200 and _is_index(response)

    def add_to_referrers_tag(self, repo: str, subject: str, descriptor: dict[str, Any]) -> None:
        """For a registry without the referrers API: record a referrer in the fallback tag's
        index, as OCI 1.1 asks of clients."""
        tag = referrers_tag(subject)
        try:
            current = self.get_manifest(repo, tag).json()
        except (errors.ManifestUnknown, errors.NotFound, errors.NameUnknown):
            current = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        entries = [m for m in current.get("manifests") or [] if m.get("digest")]
        if any(m["digest"] == descriptor["digest"] for m in entries):
            return
        current["manifests"] = [*entries, descriptor]
        body = json.dumps(current, separators=(",", ":")).encode()
        self.put_manifest(repo, tag, Manifest.of(body, OCI_INDEX))


def _is_index(response: requests.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("manifests"), list)


def _range_end(header: str | None) -> int:
    """The last byte offset of a `Range: 0-N` header (-1 when the upload is empty). Registries
    answer `0-0` for an empty session (distribution and Berth alike): read as empty, since
    one byte too few is re-sent, where one too many would be a gap."""
    if not header:
        return -1
    try:
        _, _, end = header.removeprefix("bytes=").partition("-")
        return int(end) if int(end) > 0 else -1
    except ValueError:
        return -1


def _with_digest(location: str, digest: str) -> str:
    return location + ("&" if "?" in location else "?") + urlencode({"digest": digest})


def _opener(data: bytes | IO[bytes] | Opener) -> Opener:
    if isinstance(data, bytes):
        import io

        return lambda offset: io.BytesIO(data[offset:])
    if callable(data):
        return data
    stream = data
    start = stream.tell() if stream.seekable() else 0

    opened = [False]

    def reopen(offset: int) -> Readable:
        if stream.seekable():
            stream.seek(start + offset)
        elif opened[0]:
            raise errors.ClientError("cannot resume an upload from a stream that cannot seek")
        opened[0] = True
        return _Unclosed(stream)

    return reopen


class _Unclosed:
    """The caller's stream, which the upload must not close."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)

    def close(self) -> None:
        pass
