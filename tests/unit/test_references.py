"""Repository names, tags and digests as PROTOCOL.md defines them: what a client may send in
a URL, and what is refused with NAME_INVALID, TAG_INVALID or DIGEST_INVALID (never a 500,
never a storage path built from it)."""

from __future__ import annotations

import hashlib

import pytest

from app.errors import DigestInvalid, NameInvalid, TagInvalid
from app.registry.references import (
    Digest,
    check_name,
    check_tag,
    is_digest,
    is_tag,
    is_valid_name,
)

HEX256 = hashlib.sha256(b"berth").hexdigest()
HEX512 = hashlib.sha512(b"berth").hexdigest()

# --------------------------------------------------------------------------- digests


@pytest.mark.parametrize(
    ("text", "algorithm", "hex_"),
    [(f"sha256:{HEX256}", "sha256", HEX256), (f"sha512:{HEX512}", "sha512", HEX512)],
)
def test_digest_parse_accepts_sha256_and_sha512(text: str, algorithm: str, hex_: str) -> None:
    digest = Digest.parse(text)
    assert (digest.algorithm, digest.hex) == (algorithm, hex_)
    assert str(digest) == text  # what goes back out in Docker-Content-Digest


@pytest.mark.parametrize(
    "text",
    [
        "",
        HEX256,  # no algorithm
        f"sha256:{HEX256.upper()}",  # the canonical form is lowercase
        f"sha256:{HEX256[:-1]}A",
        f"SHA256:{HEX256}",
        f"sha256:{HEX256[:-1]}",  # too short
        f"sha256:{HEX256}0",  # too long
        f"sha256:{HEX512}",  # sha512's length under sha256
        f"sha512:{HEX256}",
        f"md5:{hashlib.md5(b'berth').hexdigest()}",  # an algorithm Berth cannot verify
        f"sha384:{hashlib.sha384(b'berth').hexdigest()}",
        f"sha256+b64u:{HEX256}",
        "sha256:",
        f":{HEX256}",
        f"sha256:{HEX256[:60]}zzzz",  # right length, not hex
        f"sha256:{HEX256[:62]}==",
        f"sha256:{HEX256}\n",  # a trailing newline must not slip through
        f" sha256:{HEX256}",
        f"sha256: {HEX256[1:]}",
        f"sha256:{HEX256}/../../x",
        "sha256:../../../../etc/passwd",
        "sha256:..%2F..%2F..%2Fetc%2Fpasswd",
        f"sha256:{HEX256[:32]}%2F{HEX256[35:]}",
        f"sha256:{HEX256[:32]}/{HEX256[33:]}",
        f"../sha256:{HEX256}",
        f"sha256:{HEX256}:{HEX256}",
    ],
)
def test_digest_parse_refuses(text: str) -> None:
    with pytest.raises(DigestInvalid) as info:
        Digest.parse(text)
    assert info.value.status == 400
    assert info.value.detail == {"digest": text}


def test_digest_of_hashes_content() -> None:
    assert Digest.of(b"berth") == Digest("sha256", HEX256)
    assert str(Digest.of(b"berth", "sha512")) == f"sha512:{HEX512}"
    # The digest of nothing is the well-known empty blob.
    assert str(Digest.of(b"")) == (
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_digest_of_round_trips_through_parse() -> None:
    for algorithm in ("sha256", "sha512"):
        digest = Digest.of(b"layer bytes", algorithm)
        assert Digest.parse(str(digest)) == digest


def test_digest_hasher_matches_of() -> None:
    digest = Digest.parse(f"sha512:{HEX512}")
    hasher = digest.hasher()
    hasher.update(b"berth")
    assert hasher.hexdigest() == digest.hex


def test_is_digest_tells_digests_from_tags() -> None:
    # Used to route /manifests/<reference>: tags can never hold a colon.
    assert is_digest(f"sha256:{HEX256}")
    assert is_digest("sha256:junk")  # then refused by Digest.parse, not treated as a tag
    assert not is_digest("latest")
    assert not is_digest("v1.2.3")


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "library/ubuntu",
        "a/blobs/b",  # components may be the route keywords
        "a/manifests/b/tags/c",
        "blobs",
        "my-app",
        "my--app",
        "my_app",
        "my__app",
        "my.app",
        "0",
        "a.b-c_d__e",
        "team/sub/deep/er/app",
        "a" * 255,
    ],
)
def test_valid_names(name: str) -> None:
    assert is_valid_name(name)
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "a/../b",
        "a/./b",
        "/a",
        "a/",
        "a//b",
        "-a",
        "a-",
        ".a",
        "a.",
        "_a",
        "a_",
        "a..b",
        "a___b",
        "a.-b",
        "Ubuntu",
        "library/Ubuntu",
        "a b",
        "a:b",
        "a@b",
        "a\\b",
        "a\n",
        "ümlaut",
        "a" * 256,
        "a/" * 127 + "ab",  # 256 characters of valid components
    ],
)
def test_invalid_names(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(NameInvalid) as info:
        check_name(name)
    assert info.value.detail == {"name": name}


# --------------------------------------------------------------------------- tags


@pytest.mark.parametrize(
    "tag", ["latest", "v1.2.3", "V1", "_private", "1", "a-b_c.d", "RC--1", "a" * 128]
)
def test_valid_tags(tag: str) -> None:
    assert is_tag(tag)
    assert check_tag(tag) == tag


@pytest.mark.parametrize(
    "tag",
    [
        "",
        ".hidden",
        "-rc",
        "a" * 129,
        "a:b",
        "a/b",
        "a b",
        "a@b",
        "v1\n",
        "ümlaut",
        f"sha256:{HEX256}",
    ],
)
def test_invalid_tags(tag: str) -> None:
    assert not is_tag(tag)
    with pytest.raises(TagInvalid) as info:
        check_tag(tag)
    assert info.value.status == 400
