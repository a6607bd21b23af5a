"""An OCI image layout directory (oci-layout, index.json, blobs/<alg>/<hex>) as a Store.

Tags are index.json entries annotated org.opencontainers.image.ref.name, as skopeo and
podman write them (`oci:DIR:TAG`). Blobs are written to a temporary name, verified, then
renamed into place, so an interrupted copy never leaves a wrong blob behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from app.client import errors
from app.client.media import OCI_INDEX, REF_NAME, Manifest, media_type_of
from app.client.registry import READ_CHUNK, Opener, Progress, Readable
from app.registry.references import Digest


class _VerifiedFile:
    def __init__(self, path: Path, digest: str, size: int, offset: int) -> None:
        self._file = path.open("rb")
        self._file.seek(offset)
        self._hasher = hashlib.new(digest.split(":", 1)[0]) if offset == 0 else None
        self._digest, self._size, self._seen = digest, size, offset

    def read(self, n: int = -1) -> bytes:
        data = self._file.read(READ_CHUNK if n is None or n < 0 else n)
        self._seen += len(data)
        if data and self._hasher is not None:
            self._hasher.update(data)
        if not data:
            if self._seen != self._size:
                raise errors.DigestMismatch(f"{self._size} bytes", f"{self._seen}", self._digest)
            if self._hasher is not None:
                actual = f"{self._digest.split(':', 1)[0]}:{self._hasher.hexdigest()}"
                if actual != self._digest:
                    raise errors.DigestMismatch(self._digest, actual, "layout blob")
        return data

    def close(self) -> None:
        self._file.close()


class OciLayout:
    """A layout directory; created (empty) when written to and missing."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.label = f"oci:{self.path}"

    def _blob(self, digest: str) -> Path:
        parsed = Digest.parse(digest)  # never a path from a malformed digest
        return self.path / "blobs" / parsed.algorithm / parsed.hex

    def _index(self) -> dict[str, Any]:
        try:
            index = json.loads((self.path / "index.json").read_text())
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        except ValueError as exc:
            raise errors.ClientError(f"{self.path}/index.json is not JSON: {exc}") from exc
        return index if isinstance(index, dict) else {"schemaVersion": 2, "manifests": []}

    def _write_index(self, index: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        layout = self.path / "oci-layout"
        if not layout.exists():
            layout.write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        temp = self.path / f".index.json.{os.getpid()}"
        temp.write_text(json.dumps(index, indent=2))
        os.replace(temp, self.path / "index.json")

    def tags(self) -> list[str]:
        return [
            str(entry["annotations"][REF_NAME])
            for entry in self._index().get("manifests") or []
            if REF_NAME in (entry.get("annotations") or {})
        ]

    def manifest(self, reference: str) -> Manifest:
        digest, media_type = reference, None
        if ":" not in reference:
            entries = [
                entry
                for entry in self._index().get("manifests") or []
                if (entry.get("annotations") or {}).get(REF_NAME) == reference
            ]
            if not entries:
                raise errors.ManifestUnknown(404, f"no tag {reference}", [], "READ", self.label)
            digest, media_type = str(entries[-1]["digest"]), entries[-1].get("mediaType")
        try:
            body = self._blob(digest).read_bytes()
        except FileNotFoundError:
            raise errors.ManifestUnknown(404, f"no {digest}", [], "READ", self.label) from None
        manifest = Manifest.of(body, media_type_of(body) or media_type)
        if manifest.digest != digest and digest.startswith("sha256:"):
            raise errors.DigestMismatch(digest, manifest.digest, "layout manifest")
        return manifest

    def has_manifest(self, digest: str) -> bool:
        return self._blob(digest).is_file()

    def put_manifest(self, reference: str, manifest: Manifest) -> None:
        path = self._blob(manifest.digest)
        if not path.is_file():
            self._write_file(path, manifest.body)
        if ":" in reference and not manifest.subject():
            return  # a child of an index: reachable through its parent
        index = self._index()
        entry = manifest.descriptor()
        entries = list(index.get("manifests") or [])
        if ":" in reference:  # a referrer: listed, so that referrers() finds it
            if any(e.get("digest") == manifest.digest for e in entries):
                return
        else:
            entry["annotations"] = {**(entry.get("annotations") or {}), REF_NAME: reference}
            entries = [
                e for e in entries if (e.get("annotations") or {}).get(REF_NAME) != reference
            ]
        index["manifests"] = [*entries, entry]
        self._write_index(index)

    def _write_file(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        temp.write_bytes(data)
        os.replace(temp, path)

    def blob_size(self, digest: str) -> int | None:
        try:
            return self._blob(digest).stat().st_size
        except FileNotFoundError:
            return None

    def open_blob(self, digest: str, size: int, offset: int = 0) -> Readable:
        try:
            return _VerifiedFile(self._blob(digest), digest, size, offset)
        except FileNotFoundError:
            raise errors.BlobUnknown(404, f"no {digest}", [], "READ", self.label) from None

    def put_blob(
        self, digest: str, size: int, opener: Opener, progress: Progress | None, source: object
    ) -> None:
        path = self._blob(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        hasher = hashlib.new(digest.split(":", 1)[0])
        stream = opener(0)
        try:
            with temp.open("wb") as out:
                while data := stream.read(READ_CHUNK):
                    hasher.update(data)
                    out.write(data)
                    if progress is not None:
                        progress.update(len(data))
                out.flush()
                os.fsync(out.fileno())
            actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
            if actual != digest:
                raise errors.DigestMismatch(digest, actual, "blob")
            os.replace(temp, path)
        finally:
            stream.close()
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def referrers(self, digest: str) -> list[dict[str, Any]]:
        found = []
        for entry in self._index().get("manifests") or []:
            try:
                manifest = self.manifest(str(entry["digest"]))
            except (errors.ManifestUnknown, KeyError):
                continue
            if manifest.subject() == digest:
                found.append(manifest.descriptor())
        return found
