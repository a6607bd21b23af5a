"""Repository names, tags and digests: parsed and validated before any use."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from app.errors import DigestInvalid, NameInvalid, TagInvalid

NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*"
NAME_MAX_LENGTH = 255
_NAME = re.compile(NAME_PATTERN)
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_HEX_LENGTHS = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"(?P<algorithm>[a-z0-9]+(?:[+._-][a-z0-9]+)*):(?P<hex>[a-zA-Z0-9=_-]+)")


def is_valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX_LENGTH and _NAME.fullmatch(name) is not None


def check_name(name: str) -> str:
    if not is_valid_name(name):
        raise NameInvalid({"name": name})
    return name


def is_tag(reference: str) -> bool:
    return _TAG.fullmatch(reference) is not None


def check_tag(tag: str) -> str:
    if not is_tag(tag):
        raise TagInvalid({"tag": tag}, message="invalid tag")
    return tag


@dataclass(frozen=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    @classmethod
    def parse(cls, text: str) -> Digest:
        """A digest of an algorithm Berth can verify, with lowercase hex of the right length."""
        match = _DIGEST.fullmatch(text or "")
        if not match:
            raise DigestInvalid({"digest": text}, message="invalid digest")
        algorithm, hex_ = match.group("algorithm"), match.group("hex")
        if algorithm not in _HEX_LENGTHS:
            raise DigestInvalid(
                {"digest": text}, message=f"unsupported digest algorithm {algorithm}"
            )
        if len(hex_) != _HEX_LENGTHS[algorithm] or not re.fullmatch(r"[0-9a-f]+", hex_):
            raise DigestInvalid({"digest": text}, message="invalid digest")
        return cls(algorithm, hex_)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def is_digest(reference: str) -> bool:
    return ":" in reference
