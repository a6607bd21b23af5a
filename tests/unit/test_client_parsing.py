"""The client's pure parts: challenges, references, registry URLs, saved logins."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import click
import pytest

from app.client.auth import (
    Challenge,
    Credentials,
    remove_credentials,
    save_credentials,
    saved_credentials,
)
from app.client.cli import parse_reference
from app.client.media import Manifest, referrers_tag
from app.client.registry import _range_end, base_url


def test_bearer_challenge_parameters() -> None:
    header = (
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"'
    )
    challenge = Challenge.parse(header)
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    assert Challenge.parse('Basic realm="Berth Registry"') == Challenge(
        "basic", {"realm": "Berth Registry"}
    )
    assert Challenge.parse("") is None


def test_references() -> None:
    ref = parse_reference("127.0.0.1:5000/team/app:v1")
    assert (ref.registry, ref.repo, ref.tag, ref.digest) == (
        "127.0.0.1:5000",
        "team/app",
        "v1",
        None,
    )
    digest = "sha256:" + "a" * 64
    ref = parse_reference(f"registry.example/app@{digest}")
    assert (ref.repo, ref.reference) == ("app", digest)
    assert parse_reference("localhost/app").reference == "latest"
    assert parse_reference("http://host:1/app:v2").registry == "http://host:1"
    with pytest.raises(click.BadParameter):
        parse_reference("app:v1")  # which registry?


def test_plain_http_only_for_loopback() -> None:
    assert base_url("127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert base_url("localhost:5000") == "http://localhost:5000"
    assert base_url("[::1]:5000") == "http://[::1]:5000"
    assert base_url("registry.example") == "https://registry.example"
    assert base_url("http://registry.example:80/ignored") == "http://registry.example:80"


def test_upload_range_headers() -> None:
    assert _range_end("0-0") == -1  # an empty session, as distribution and Berth say it
    assert _range_end("0-1048575") == 1048575
    assert _range_end(None) == -1


def test_saved_logins_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"auths": {}, "credsStore": "kept"}))
    save_credentials(path, "reg:5000", Credentials("u", "p:w"))
    assert saved_credentials("reg:5000", [path]) == Credentials("u", "p:w")
    assert json.loads(path.read_text())["credsStore"] == "kept"
    docker = tmp_path / "config.json"
    entry = base64.b64encode(b"d:x").decode()
    docker.write_text(json.dumps({"auths": {"https://reg.example/v1/": {"auth": entry}}}))
    assert saved_credentials("reg.example", [path, docker]) == Credentials("d", "x")
    assert remove_credentials(path, "reg:5000")
    assert saved_credentials("reg:5000", [path]) is None


def test_manifest_descriptor_and_referrers_tag() -> None:
    body = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "artifactType": "x/sig", "config": {"mediaType": "c", "digest": "d", "size": 1},
         "layers": [], "annotations": {"a": "b"}}
    ).encode()  # fmt: skip
    manifest = Manifest.of(body)
    assert manifest.descriptor() == {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest.digest,
        "size": len(body),
        "artifactType": "x/sig",
        "annotations": {"a": "b"},
    }
    assert referrers_tag("sha256:" + "f" * 64) == "sha256-" + "f" * 64
