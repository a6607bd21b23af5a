"""app.client's auth against real servers: the reference registry (docker-registry) with
htpasswd Basic auth, and `berth serve` in token mode (Docker's bearer token flow); saved
docker/podman logins; copies between them with an index and its referrers."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.client import RegistryClient, RemoteRepository, copy, errors
from app.client.media import referrers_tag
from tests.e2e.conftest import BERTH, BerthServer, StartServer
from tests.e2e.images import ReferenceRegistry, push_image, push_index, push_referrer
from tests.e2e.images import reference_registry as start_reference

USER = ("mover", "Mover-Secret-1")
READER = ("reader", "Reader-Secret-2")
RULES = [
    {"repository": "*", "users": ["*"], "actions": ["pull"]},
    {"repository": "*", "users": ["mover"], "actions": ["push", "delete"]},
]


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[ReferenceRegistry]:
    with start_reference(tmp_path / "reference", htpasswd=USER) as registry:
        yield registry


@pytest.fixture
def token_berth(tmp_path: Path, berth_server_factory: StartServer) -> BerthServer:
    database_url = f"sqlite:///{tmp_path / 'token.db'}"
    for name, password in (USER, READER):
        env = {**os.environ, "BERTH_DATABASE_URL": database_url}
        env.pop("BERTH_CONFIG", None)
        subprocess.run(
            [str(BERTH), "user", "add", name, "--password-stdin", "--cost", "4"],
            input=password + "\n", env=env, check=True, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    # Tokens live 3 s: long enough to be reused, short enough to see one renewed.
    env = {
        "BERTH_AUTH": "token",
        "BERTH_AUTH_RULES": json.dumps(RULES),
        "BERTH_AUTH_TOKEN_TTL": "3",
    }
    return berth_server_factory(database_url=database_url, env=env, name="token")


@pytest.fixture
def no_saved_logins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    for name in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    return home


def test_basic_auth_against_the_reference_registry(
    reference: ReferenceRegistry, no_saved_logins: Path
) -> None:
    with RegistryClient(reference.url) as anonymous:
        with pytest.raises(errors.Unauthorized) as caught:
            anonymous.ping()
        assert caught.value.code == "UNAUTHORIZED"
    wrong = RegistryClient(reference.url, auth=(USER[0], "wrong"))
    with wrong, pytest.raises(errors.Unauthorized):
        wrong.ping()
    with RegistryClient(reference.url, auth=USER) as client:
        assert client.ping()
        for i in range(5):
            push_image(client, f"repo{i}", "v1", seed=i)
        assert list(client.catalog(n=2)) == [f"repo{i}" for i in range(5)]


def test_saved_docker_and_podman_logins_are_used(
    reference: ReferenceRegistry, no_saved_logins: Path
) -> None:
    entry = {
        "auths": {reference.host: {"auth": base64.b64encode(":".join(USER).encode()).decode()}}
    }
    docker = no_saved_logins / ".docker" / "config.json"
    docker.parent.mkdir()
    docker.write_text(json.dumps(entry))
    with RegistryClient(reference.url) as client:
        assert client.ping()
    docker.unlink()
    podman = Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"
    podman.parent.mkdir(parents=True)
    podman.write_text(json.dumps(entry))
    with RegistryClient(reference.url) as client:
        assert client.ping()
    podman.unlink()
    with RegistryClient(reference.url) as client, pytest.raises(errors.Unauthorized):
        client.ping()


def test_token_auth_against_berth_caches_a_token_per_scope(token_berth: BerthServer) -> None:
    with RegistryClient(token_berth.url, auth=USER) as client:
        assert client.ping()
        image = push_image(client, "team/app", "v1", seed=3)
        before = token_berth.log().count("GET /auth/token")
        for _ in range(10):
            assert client.get_manifest("team/app", "v1").digest == image.manifest.digest
        assert token_berth.log().count("GET /auth/token") - before == 1
        time.sleep(3)  # expired: the next pull gets a new token first
        assert client.get_manifest("team/app", "v1").digest == image.manifest.digest
        assert token_berth.log().count("GET /auth/token") - before == 2
        assert list(client.catalog()) == ["team/app"]
    with RegistryClient(token_berth.url, auth=READER) as reader:
        assert reader.get_manifest("team/app", "v1").body == image.manifest.body
        with pytest.raises((errors.Unauthorized, errors.Denied)):
            reader.upload_blob("team/app", b"not allowed")
        with pytest.raises((errors.Unauthorized, errors.Denied)):
            reader.delete_manifest("team/app", "v1")
    # The token endpoint refuses a wrong password, and anonymous callers (no anonymous pull).
    for auth in ((READER[0], "wrong"), False):
        client = RegistryClient(token_berth.url, auth=auth)
        with client, pytest.raises(errors.AuthError):
            client.get_manifest("team/app", "v1")


def test_copy_an_index_with_referrers_berth_to_reference_and_back(
    token_berth: BerthServer, reference: ReferenceRegistry, berth_server_factory: StartServer
) -> None:
    plain = berth_server_factory(name="plain")
    with (
        RegistryClient(token_berth.url, auth=USER) as berth,
        RegistryClient(reference.url, auth=USER) as ref,
        RegistryClient(plain.url, auth=False) as back,
    ):
        index, children = push_index(berth, "multi", "v1", seed=21)
        signature = push_referrer(berth, "multi", index, "signature")
        report = copy(RemoteRepository(berth, "multi"), "v1", RemoteRepository(ref, "multi"))
        assert report.manifests == 4
        assert ref.get_manifest("multi", "v1").body == index.body
        # distribution 2.8 has no referrers API: the referrer went into the fallback tag.
        assert referrers_tag(index.digest) in list(ref.tags("multi"))
        assert [d["digest"] for d in ref.referrers("multi", index.digest)] == [signature.digest]
        again = copy(RemoteRepository(berth, "multi"), "v1", RemoteRepository(ref, "multi"))
        assert (again.blobs, again.manifests) == (0, 0)
        copy(RemoteRepository(ref, "multi"), "v1", RemoteRepository(back, "multi"))
        assert back.get_manifest("multi", "v1").body == index.body
        assert [d["digest"] for d in back.referrers("multi", index.digest)] == [signature.digest]
        layer = children[1].manifest.blobs()[1]["digest"]
        assert back.get_blob("multi", layer) == children[1].blobs[layer]
