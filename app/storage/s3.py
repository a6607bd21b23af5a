"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW) through boto3.

An object never changes in place: it is replaced whole, and the replacement becomes visible
atomically. So a writer leaves the object alone until commit(): bytes go up as the parts of
a multipart upload (at most one part buffered in memory) and completing that upload swaps
the new object in; cancel() aborts it and the old object is untouched. Appending starts the
multipart upload with a server-side copy of what is there (UploadPartCopy), so a chunked
blob upload never downloads its own prefix - except a prefix below S3's 5 MiB minimum part
size, which is small enough to read back and upload again.

Directories do not exist in S3: a "directory" is a key prefix that some object has.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Iterator
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.storage.base import (
    FileInfo,
    FileWriter,
    InvalidOffset,
    PathNotFound,
    StorageDriver,
    StorageError,
    check_path,
)

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_PART = 5 * MiB  # S3: every part but the last of a multipart upload is at least this
MAX_COPY = 5 * GiB  # S3: the most one CopyObject or one UploadPartCopy may copy
MAX_PARTS = 10_000  # S3: parts per multipart upload
DEFAULT_PART_SIZE = 8 * MiB
REDIRECT_TTL = 20 * 60  # seconds a presigned blob URL stays valid
_NOT_FOUND = {"NoSuchKey", "NotFound", "404"}


_session_lock = threading.Lock()


@functools.cache
def _session() -> boto3.session.Session:
    # Loading the S3 service model takes most of a second: do it once per process.
    return boto3.session.Session()


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _copy_ranges(size: int) -> Iterator[tuple[int, int]]:
    """Inclusive byte ranges covering [0, size) for UploadPartCopy: as few as the 5 GiB
    limit allows, of equal length, so every one is at least 5 MiB when size is."""
    count = -(-size // MAX_COPY)
    step = -(-size // count)
    for start in range(0, size, step):
        yield start, min(start + step, size) - 1


class _ObjectStream(io.RawIOBase):
    """The body of one GET, read as it arrives: nothing is held beyond the caller's read."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class _MultipartWriter(FileWriter):
    def __init__(self, driver: S3Driver, path: str, append: bool) -> None:
        self._driver, self._path = driver, path
        self._key = driver.key(path)
        self._base: tuple[int, str] | None = None  # (size, ETag) of the object to append to
        if append:
            try:
                head = driver.head(path)
                self._base = (int(head["ContentLength"]), str(head["ETag"]))
            except PathNotFound:
                pass
        self._start = self._base[0] if self._base else 0
        self._size = self._start
        self._reset()

    def _reset(self) -> None:
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._prepared = False

    @property
    def size(self) -> int:
        return self._size

    def _prepare(self) -> None:
        """First write: put what is being appended to at the head of the new object."""
        self._prepared = True
        if not self._base or not self._base[0]:
            return
        size, etag = self._base
        if size >= MIN_PART:
            self._begin()
            for start, end in _copy_ranges(size):
                self._copy_part(start, end, etag)
        else:
            with self._driver.reader(self._path, 0, if_match=etag) as stream:
                self._buffer += stream.read()
            if len(self._buffer) != size:
                raise StorageError(f"{self._path}: changed while appending")

    def _begin(self) -> None:
        created = self._driver.client.create_multipart_upload(
            Bucket=self._driver.bucket, Key=self._key
        )
        self._upload_id = created["UploadId"]

    def _next_part_number(self) -> int:
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise StorageError(f"{self._path}: more than {MAX_PARTS} parts; raise s3_part_size")
        return number

    def _copy_part(self, start: int, end: int, etag: str) -> None:
        number = self._next_part_number()
        try:
            copied = self._driver.client.upload_part_copy(
                Bucket=self._driver.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                CopySource={"Bucket": self._driver.bucket, "Key": self._key},
                CopySourceRange=f"bytes={start}-{end}",
                CopySourceIfMatch=etag,
            )
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", *_NOT_FOUND):
                raise StorageError(f"{self._path}: changed while appending") from exc
            raise
        self._parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})

    def _upload_part(self, data: bytes | bytearray) -> None:
        if self._upload_id is None:
            self._begin()
        number = self._next_part_number()
        uploaded = self._driver.client.upload_part(
            Bucket=self._driver.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        self._parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})

    def write(self, data: bytes) -> int:
        if not self._prepared:
            self._prepare()
        self._buffer += data
        self._size += len(data)
        part_size = self._driver.part_size
        while len(self._buffer) >= part_size:
            # Hand the buffer itself over as the part: no second copy of it in memory.
            part, self._buffer = self._buffer, self._buffer[part_size:]
            del part[part_size:]
            self._upload_part(part)
        return len(data)

    def commit(self) -> None:
        client, bucket = self._driver.client, self._driver.bucket
        if not self._prepared and self._base is not None:
            return  # appended nothing: the object stays as it is
        # An append replaces the object it started from, or nothing: of two writers that
        # appended to the same object at once, the second to commit fails instead of
        # silently replacing the first one's bytes (conditional writes: AWS, MinIO).
        condition: dict[str, str] = {}
        if self._base is not None:
            condition["IfMatch"] = self._base[1]
        try:
            if self._upload_id is None:
                result = client.put_object(
                    Bucket=bucket, Key=self._key, Body=bytes(self._buffer), **condition
                )
            else:
                if self._buffer:
                    self._upload_part(self._buffer)  # the last part may be short
                result = client.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                    **condition,
                )
        except ClientError as exc:
            if _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise StorageError(f"{self._path}: changed while appending") from exc
            raise
        # Further writes append to what was just committed.
        self._base = (self._size, str(result["ETag"]))
        self._start = self._size
        self._reset()

    def cancel(self) -> None:
        self._abort()
        self._size = self._start
        self._reset()

    def close(self) -> None:
        # Nothing is durable before commit(): an open multipart upload is abandoned.
        self._abort()
        self._buffer = bytearray()

    def _abort(self) -> None:
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._driver.client.abort_multipart_upload(
                Bucket=self._driver.bucket, Key=self._key, UploadId=upload_id
            )
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":
                raise


class S3Driver(StorageDriver):
    name = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str = "",
        region: str = "",
        access_key: str = "",
        secret_key: str = "",
        prefix: str = "",
        redirect: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if not bucket:
            raise ValueError("the s3 driver needs a bucket")
        if part_size < MIN_PART:
            raise ValueError(f"s3 part size must be at least {MIN_PART} bytes")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.redirect = redirect
        self.part_size = part_size
        config = Config(
            # gthread workers: one connection per thread, with room to spare.
            max_pool_connections=32,
            retries={"mode": "standard", "max_attempts": 4},
            # MinIO, Ceph RGW and test servers on an IP address want path-style URLs.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            signature_version="s3v4",
            # Checksums only where S3 requires them: several S3-compatible stores reject
            # the newer aws-chunked trailing checksums.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        with _session_lock:
            self.client = _session().client(
                "s3",
                endpoint_url=endpoint_url or None,
                region_name=region or "us-east-1",
                aws_access_key_id=access_key or None,
                aws_secret_access_key=secret_key or None,
                config=config,
            )

    # ------------------------------------------------------------------ helpers

    def key(self, path: str) -> str:
        return self.prefix + check_path(path)

    def _dir_prefix(self, path: str) -> str:
        return self.prefix if path in ("", "/") else self.key(path) + "/"

    def head(self, path: str) -> dict[str, Any]:
        try:
            found: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=self.key(path))
            return found
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND:
                raise PathNotFound(path) from exc
            raise

    def _keys_under(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield from page.get("Contents", [])

    def _first_under(self, prefix: str) -> dict[str, Any] | None:
        page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        contents = page.get("Contents", [])
        return contents[0] if contents else None

    def _copy(self, src: str, dst: str, size: int) -> None:
        """Server-side copy: one CopyObject up to 5 GiB, a multipart copy beyond."""
        source = {"Bucket": self.bucket, "Key": self.key(src)}
        if size <= MAX_COPY:
            self.client.copy_object(Bucket=self.bucket, Key=self.key(dst), CopySource=source)
            return
        self._copy_prefix(source, dst, size)

    def _copy_prefix(self, source: dict[str, str], dst: str, size: int) -> None:
        """Make dst the first size bytes of source (at least 5 MiB) without moving bytes."""
        key = self.key(dst)
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            parts = []
            for number, (start, end) in enumerate(_copy_ranges(size), start=1):
                copied = self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": copied["CopyPartResult"]["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    # ------------------------------------------------------------------ contract

    def get_content(self, path: str) -> bytes:
        with self.reader(path) as stream:
            return stream.read()

    def put_content(self, path: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key(path), Body=bytes(data))

    def reader(self, path: str, offset: int = 0, *, if_match: str | None = None) -> BinaryIO:
        """A ranged GET from offset, streamed; if_match pins the object version (ETag)."""
        key = self.key(path)
        if offset < 0:
            raise InvalidOffset(f"{path}@{offset}")
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if offset:
            request["Range"] = f"bytes={offset}-"
        if if_match:
            request["IfMatch"] = if_match
        try:
            response = self.client.get_object(**request)
        except ClientError as exc:
            code = _code(exc)
            if code in _NOT_FOUND:
                raise PathNotFound(path) from exc
            if code == "PreconditionFailed":
                raise StorageError(f"{path}: changed while reading") from exc
            if code != "InvalidRange":
                raise
            # A range starting at the end is empty, not an error; past the end it is.
            if offset == int(self.head(path)["ContentLength"]):
                return io.BytesIO(b"")
            raise InvalidOffset(f"{path}@{offset}") from exc
        return io.BufferedReader(_ObjectStream(response["Body"]), buffer_size=256 * 1024)

    def writer(self, path: str, append: bool = False) -> FileWriter:
        return _MultipartWriter(self, check_path(path), append)

    def stat(self, path: str) -> FileInfo:
        try:
            head = self.head(path)
        except PathNotFound:
            first = self._first_under(self._dir_prefix(path))
            if first is None:
                raise
            return FileInfo(path, 0, first["LastModified"].timestamp(), True)
        return FileInfo(path, int(head["ContentLength"]), head["LastModified"].timestamp(), False)

    def list(self, path: str) -> list[str]:
        prefix = self._dir_prefix(path)
        children: set[str] = set()
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            children.update(entry["Prefix"].rstrip("/") for entry in page.get("CommonPrefixes", []))
            children.update(entry["Key"] for entry in page.get("Contents", []))
        if not children and path not in ("", "/"):
            raise PathNotFound(path)
        strip = len(self.prefix)
        return sorted(child[strip:] for child in children)

    def move(self, src: str, dst: str) -> None:
        check_path(src), check_path(dst)
        size = int(self.head(src)["ContentLength"])
        if src == dst:
            return
        self._copy(src, dst, size)
        self.client.delete_object(Bucket=self.bucket, Key=self.key(src))

    def delete(self, path: str) -> None:
        keys = [entry["Key"] for entry in self._keys_under(self.key(path) + "/")]
        try:
            self.head(path)
            keys.append(self.key(path))
        except PathNotFound:
            if not keys:
                raise
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at a time
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            result = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if result.get("Errors"):
                raise StorageError(f"{path}: delete failed: {result['Errors'][:3]}")

    def truncate(self, path: str, size: int) -> None:
        current = int(self.head(path)["ContentLength"])
        if size < 0 or size > current:
            raise InvalidOffset(f"{path}@{size}")
        if size == current:
            return
        if size >= MIN_PART:
            self._copy_prefix({"Bucket": self.bucket, "Key": self.key(path)}, path, size)
            return
        data = b""
        if size:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.key(path), Range=f"bytes=0-{size - 1}"
            )
            with response["Body"] as body:
                data = body.read()
        self.put_content(path, data)

    def redirect_url(self, path: str, method: str = "GET") -> str | None:
        key = self.key(path)
        if not self.redirect or method not in ("GET", "HEAD"):
            return None
        operation = "get_object" if method == "GET" else "head_object"
        url: str = self.client.generate_presigned_url(
            operation, Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=REDIRECT_TTL
        )
        return url
