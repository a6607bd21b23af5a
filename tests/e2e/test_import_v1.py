"""`berth import v1` on a v1 registry store that the test writes itself in that layout
(images/<id>/{json,layer,ancestry}, repositories/<ns>/<repo>/tag_<name>): each tag served
back as a Docker schema 2 image whose layers, diff_ids and history match the v1 chain."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

from app.client import RegistryClient
from tests.e2e.clients import require_tool, skopeo_inspect
from tests.e2e.conftest import BERTH, StartServer


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 946684800
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _image(root: Path, image_id: str, parent: str | None, layer: bytes | None, cmd: str,
           ancestry: list[str]) -> None:  # fmt: skip
    directory = root / "images" / image_id
    directory.mkdir(parents=True)
    doc = {
        "id": image_id,
        "created": f"2014-0{len(ancestry)}-01T00:00:00Z",
        "container_config": {"Cmd": ["/bin/sh", "-c", cmd]},
        "config": {"Env": ["PATH=/usr/bin"], "Cmd": ["/bin/sh"]},
        "architecture": "amd64",
        "os": "linux",
        "docker_version": "1.3.0",
        **({"parent": parent} if parent else {}),
    }
    (directory / "json").write_text(json.dumps(doc))
    (directory / "ancestry").write_text(json.dumps(ancestry))
    if layer is not None:
        (directory / "layer").write_bytes(layer)


def _v1_store(root: Path) -> dict[str, str]:
    ids = [hashlib.sha256(f"image{i}".encode()).hexdigest() for i in range(3)]
    base_tar = _tar({"etc/os-release": b"NAME=v1\n" * 200, "bin/sh": os.urandom(4000)})
    # The base layer was stored gzipped (kept as is); the next one as a plain tar (gzipped
    # on import); the top one changed only metadata (an empty tar: an empty_layer entry).
    _image(root, ids[0], None, gzip.compress(base_tar, mtime=0), "#(nop) ADD file", [ids[0]])
    _image(root, ids[1], ids[0], _tar({"app/run": os.urandom(3000)}), "apt-get install app",
           [ids[1], ids[0]])  # fmt: skip
    _image(root, ids[2], ids[1], b"\0" * 1024, "#(nop) CMD [/app/run]", [ids[2], ids[1], ids[0]])
    tags = {"library/app:latest": ids[2], "library/app:base": ids[0], "team/tool:1.0": ids[1]}
    for ref, image_id in tags.items():
        repo, tag = ref.split(":")
        directory = root / "repositories" / repo
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"tag_{tag}").write_text(image_id)
    return tags


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    full.pop("BERTH_CONFIG", None)
    return subprocess.run([str(BERTH), *args], env=full, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def test_import_v1_tags_become_schema2_images(
    tmp_path: Path, berth_server_factory: StartServer
) -> None:
    store = tmp_path / "v1"
    _v1_store(store)
    db, storage = tmp_path / "berth.db", tmp_path / "storage"
    env = {"BERTH_DATABASE_URL": f"sqlite:///{db}", "BERTH_STORAGE_ROOT": str(storage)}
    dry = _run(env, "import", "v1", str(store), "--dry-run")
    assert dry.returncode == 0 and "would import 3 tags of 2 repositories" in dry.stdout, dry
    done = _run(env, "import", "v1", str(store))
    assert done.returncode == 0, done.stdout + done.stderr
    # The two layers are stored once: team/tool only links them.
    assert "imported 3 tags of 2 repositories (2 blobs" in done.stdout
    again = _run(env, "import", "v1", str(store))
    assert "imported 0 tags" in again.stdout and "3 tags already in Berth" in again.stdout

    server = berth_server_factory(database_url=f"sqlite:///{db}", storage_root=storage)
    with RegistryClient(server.url, auth=False) as client:
        latest = client.get_manifest("library/app", "latest")
        assert latest.media_type == "application/vnd.docker.distribution.manifest.v2+json"
        doc = latest.json()
        config = json.loads(client.get_blob("library/app", doc["config"]["digest"]))
        assert config["config"]["Cmd"] == ["/bin/sh"] and config["docker_version"] == "1.3.0"
        history = config["history"]
        assert [h.get("created_by") for h in history] == [
            "/bin/sh -c #(nop) ADD file",
            "/bin/sh -c apt-get install app",
            "/bin/sh -c #(nop) CMD [/app/run]",
        ]
        assert [h.get("empty_layer", False) for h in history] == [False, False, True]
        layers = doc["layers"]
        assert len(layers) == 2
        diff_ids = []
        for layer in layers:
            blob = client.get_blob("library/app", layer["digest"])
            diff_ids.append("sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest())
        assert config["rootfs"]["diff_ids"] == diff_ids
        base_layer = (store / "images").glob("*/layer")
        kept = [p.read_bytes() for p in base_layer if p.read_bytes()[:2] == b"\x1f\x8b"]
        assert client.get_blob("library/app", layers[0]["digest"]) == kept[0]  # not recompressed
        tool = client.get_manifest("team/tool", "1.0").json()
        assert [la["digest"] for la in tool["layers"]] == [la["digest"] for la in layers]
    require_tool("skopeo")
    inspected = skopeo_inspect(f"docker://{server.host}/library/app:latest")
    assert inspected["Architecture"] == "amd64" and len(inspected["Layers"]) == 2
