"""`berth import registry URL`: every repository under a prefix of a running reference
registry (htpasswd auth) copied into Berth's storage through app.client, in parallel;
interrupted and finished by running again; then served back byte for byte."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from app.client import RegistryClient
from tests.e2e.conftest import BERTH, StartServer
from tests.e2e.images import push_image, push_index, push_referrer, reference_registry

USER = ("importer", "Import-Secret-3")


def _import(env: dict[str, str], url: str, *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    full.pop("BERTH_CONFIG", None)
    argv = [str(BERTH), "import", "registry", url, "-u", USER[0], "--password-stdin", *args]
    return subprocess.run(
        argv, env=full, input=USER[1] + "\n", capture_output=True, text=True, timeout=300
    )


def test_import_registry_under_a_prefix_resumes_and_serves_byte_for_byte(
    tmp_path: Path, berth_server_factory: StartServer
) -> None:
    db, storage = tmp_path / "berth.db", tmp_path / "storage"
    env = {"BERTH_DATABASE_URL": f"sqlite:///{db}", "BERTH_STORAGE_ROOT": str(storage)}
    with reference_registry(tmp_path / "ref", htpasswd=USER) as ref:
        with RegistryClient(ref.url, auth=USER) as client:
            index, children = push_index(client, "team/multi", "v1", seed=70)
            signature = push_referrer(client, "team/multi", index, "sig")
            images = {
                f"t{i}": push_image(client, "team/app", f"t{i}", seed=71 + i) for i in range(6)
            }
            push_image(client, "elsewhere/app", "v1", seed=80)
        first = _import(env, ref.url, "--prefix", "team/app", "--workers", "3")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "imported 1 repositories, 6 tags" in first.stdout
        full = _import(env, ref.url, "--prefix", "team", "--workers", "3")
        assert full.returncode == 0, full.stdout + full.stderr
        # team/app was done: its six tags only find everything there. (team/multi has two
        # tags: v1, and the fallback tag naming v1's referrer, which Berth keeps as a tag.)
        assert "2 repositories, 8 tags" in full.stdout and "0 problems" in full.stdout
        present = int(full.stdout.split("already in Berth: ")[1].split(" manifests")[0])
        assert present >= 6
        again = _import(env, ref.url, "--prefix", "team")
        assert "0 manifests and 0 blobs (0 bytes) copied" in again.stdout, again.stdout
        wrong = subprocess.run(
            [str(BERTH), "import", "registry", ref.url, "-u", USER[0], "--password-stdin"],
            env={**os.environ, **env}, input="bad\n", capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert wrong.returncode != 0 and "UNAUTHORIZED" in wrong.stderr

    server = berth_server_factory(database_url=f"sqlite:///{db}", storage_root=storage)
    with RegistryClient(server.url, auth=False) as berth:
        assert sorted(berth.catalog()) == ["team/app", "team/multi"]
        assert berth.get_manifest("team/multi", "v1").body == index.body
        assert [d["digest"] for d in berth.referrers("team/multi", index.digest)] == [
            signature.digest
        ]
        for child in children:
            for digest, data in child.blobs.items():
                assert berth.get_blob("team/multi", digest) == data
        for tag, image in images.items():
            assert berth.get_manifest("team/app", tag).body == image.manifest.body
