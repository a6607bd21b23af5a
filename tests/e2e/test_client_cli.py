"""The `berth` client commands as a user runs them: against a real `berth serve` and the
reference registry, exit codes included, and quiet (no progress bars) off a terminal."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

from app.client import RegistryClient
from tests.e2e.clients import require_tool
from tests.e2e.conftest import BERTH, BerthServer, StartServer
from tests.e2e.images import free_port, push_image, push_index, push_referrer, reference_registry

USER = ("cli-user", "Cli-Secret-9")


def berth(
    *args: str, stdin: str = "", home: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.pop("BERTH_CONFIG", None)
    for name in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run(
        [str(BERTH), *args], input=stdin.encode(), env=env, capture_output=True, timeout=300
    )


def test_login_ls_logout_against_the_reference_registry(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    with reference_registry(tmp_path / "ref", htpasswd=USER) as ref:
        with RegistryClient(ref.url, auth=USER) as client:
            for name in ("team/a", "team/b", "other"):
                push_image(client, name, "v1", seed=1)
        bad = berth("login", ref.host, "-u", USER[0], "--password-stdin", stdin="nope\n", home=home)
        assert bad.returncode == 4, bad.stderr
        assert berth("ls", ref.host, home=home).returncode == 4  # not logged in yet
        good = berth("login", ref.host, "-u", USER[0], "--password-stdin", stdin=USER[1] + "\n",
                     home=home)  # fmt: skip
        assert good.returncode == 0, good.stderr
        saved = home / ".docker" / "config.json"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert ref.host in json.loads(saved.read_text())["auths"]
        listed = berth("ls", f"{ref.host}/team", home=home)
        assert listed.stdout.decode().split() == ["team/a", "team/b"]
        assert berth("tags", f"{ref.host}/other", home=home).stdout.decode().split() == ["v1"]
        assert berth("logout", ref.host, home=home).returncode == 0
        assert berth("ls", ref.host, home=home).returncode == 4
        assert berth("logout", ref.host, home=home).returncode == 3


def test_inspect_cp_rm_referrers_with_exit_codes(
    berth_server: BerthServer, berth_server_factory: StartServer, tmp_path: Path
) -> None:
    host = berth_server.host
    with RegistryClient(berth_server.url, auth=False) as client:
        index, children = push_index(client, "multi", "v1", seed=5)
        signature = push_referrer(client, "multi", index, "sig")
    raw = berth("inspect", "--raw", f"{host}/multi:v1")
    assert raw.returncode == 0 and raw.stdout == index.body
    info = json.loads(berth("inspect", "--json", f"{host}/multi:v1").stdout)
    assert [p["platform"] for p in info["platforms"]] == ["linux/amd64", "linux/arm64"]
    child = json.loads(
        berth("inspect", "--json", f"{host}/multi@{children[0].manifest.digest}").stdout
    )
    assert child["platform"] == "linux/amd64" and len(child["layers"]) == 2
    text = berth("inspect", f"{host}/multi:v1").stdout.decode()
    assert index.digest in text and "linux/arm64" in text
    assert berth("inspect", f"{host}/multi:nope").returncode == 3

    listed = berth("referrers", "--json", f"{host}/multi:v1")
    assert [d["digest"] for d in json.loads(listed.stdout)] == [signature.digest]

    other = berth_server_factory(name="other")
    copied = berth("cp", "--all", f"{host}/multi:v1", f"{other.host}/copied:v1")
    assert copied.returncode == 0, copied.stderr
    assert b"4 manifests" in copied.stdout  # the index, two images, the signature
    assert copied.stderr == b""  # no progress bars when stderr is not a terminal
    again = berth("cp", "--all", f"{host}/multi:v1", f"{other.host}/copied:v1")
    assert b"0 manifests, 0 blobs" in again.stdout

    layout = tmp_path / "layout"
    out = berth("cp", "--all", f"{other.host}/copied:v1", f"oci:{layout}:v1")
    assert out.returncode == 0, out.stderr
    back = berth("cp", "--all", "-q", f"oci:{layout}:v1", f"{host}/roundtrip:v2")
    assert back.stdout.decode().strip() == index.digest
    one = berth("cp", "--platform", "linux/arm64", f"{host}/multi:v1", f"{other.host}/arm:v1")
    assert one.returncode == 0, one.stderr
    with RegistryClient(other.url, auth=False) as check:
        assert check.get_manifest("arm", "v1").digest == children[1].manifest.digest

    assert berth("rm", f"{host}/roundtrip:v2").returncode == 0
    assert berth("inspect", f"{host}/roundtrip:v2").returncode == 3
    assert berth("rm", f"{host}/roundtrip").returncode == 2  # no tag or digest: usage
    down = berth("tags", f"127.0.0.1:{free_port()}/multi")
    assert down.returncode == 5
    assert berth("tags", "noregistry").returncode == 2


def test_progress_bars_on_a_terminal(berth_server: BerthServer, tmp_path: Path) -> None:
    require_tool("script")
    with RegistryClient(berth_server.url, auth=False) as client:
        push_image(client, "tty", "v1", seed=6, layer_size=2 * 1024 * 1024)
    layout = tmp_path / "layout"
    command = f"{BERTH} cp {berth_server.host}/tty:v1 oci:{layout}:v1"
    # script(1) runs the command on a pseudo-terminal, as a person at a shell would.
    shown = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                           timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert shown.returncode == 0, shown.stdout
    assert b"%|" in shown.stdout and b"B/s" in shown.stdout  # tqdm's bars, on the terminal
    assert (layout / "index.json").is_file()
