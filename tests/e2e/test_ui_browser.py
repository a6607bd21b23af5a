"""The web UI in a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium) against a real `berth serve` with access control on, holding content pushed by
skopeo: log in, search, open a repository, a multi-arch index and a referrer, copy the pull
command, delete two tags at once, log out.

When a step fails, a screenshot of every page visited so far and of the failing page is
written under $BERTH_TEST_ARTIFACTS (default: test-artifacts/) and named in the failure.
BERTH_UI_DOCS_SCREENSHOT=PATH also saves the repository page there (docs/ui-repository.png).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.e2e.clients import skopeo_copy
from tests.e2e.conftest import BerthServer, StartServer, add_user, skip_or_fail
from tests.e2e.ocilayout import (
    ANNOTATION_REF_NAME,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    OciImage,
    blob_path,
    build_oci_layout,
    canonical_json,
    sha256_digest,
)

ADMIN = ("root", "root-Secret-1")
RULES = [{"repository": "team/*", "users": ["root"], "actions": ["pull", "push", "delete"]}]
ARTIFACTS = Path(os.environ.get("BERTH_TEST_ARTIFACTS", "test-artifacts"))
WAIT = 15  # seconds for a page or an element
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # as root, Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",  # the machine has no outside network: ask nothing
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
]


def _chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        skip_or_fail(
            "chromium and chromedriver not installed (apt-get install chromium chromium-driver)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        skip_or_fail("selenium not installed: pip install -e '.[test]'")
    assert browser is not None and driver is not None
    return browser, driver


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}")
    # The executable is named: selenium's driver manager would try to download one.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT * 2)
    try:
        yield driver
    finally:
        driver.quit()


def _multi_arch_layout(path: Path, images: list[tuple[OciImage, str]]) -> None:
    """An OCI layout whose `multi` tag is an image index over the given (image, arch)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    children = []
    for image, arch in images:
        for digest in image.all_digests():
            target = blob_path(path, digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(blob_path(image.path, digest), target)
        children.append(
            {
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "digest": image.manifest_digest,
                "size": image.manifest_size,
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    index = canonical_json(
        {"schemaVersion": 2, "mediaType": MEDIA_TYPE_OCI_INDEX, "manifests": children}
    )
    blob_path(path, sha256_digest(index)).write_bytes(index)
    top = {
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_TYPE_OCI_INDEX,
                "digest": sha256_digest(index),
                "size": len(index),
                "annotations": {ANNOTATION_REF_NAME: "multi"},
            }
        ],
    }
    (path / "index.json").write_bytes(canonical_json(top))


def _push_referrer(server: BerthServer, repo: str, subject: OciImage) -> str:
    """A signature-like OCI 1.1 artifact whose subject is `subject`, pushed by the API."""
    http = requests.Session()
    http.auth = ADMIN
    empty, payload = b"{}", b"signature bytes for " + subject.manifest_digest.encode()
    for blob in (empty, payload):
        url = f"{server.url}/v2/{repo}/blobs/uploads/?digest={sha256_digest(blob)}"
        assert http.post(url, data=blob, timeout=30).status_code == 201
    body = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.empty.v1+json",
                "digest": sha256_digest(empty),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/octet-stream",
                    "digest": sha256_digest(payload),
                    "size": len(payload),
                }
            ],
            "subject": {
                "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                "digest": subject.manifest_digest,
                "size": subject.manifest_size,
            },
            "annotations": {"org.example.signed-by": "<b>ci</b>"},
        }
    )
    digest = sha256_digest(body)
    response = http.put(
        f"{server.url}/v2/{repo}/manifests/{digest}",
        data=body,
        headers={"Content-Type": MEDIA_TYPE_OCI_MANIFEST},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return digest


@pytest.fixture
def registry(
    berth_server_factory: StartServer, tmp_path: Path
) -> tuple[BerthServer, dict[str, OciImage]]:
    database_url = f"sqlite:///{tmp_path / 'ui.db'}"
    add_user(database_url, *ADMIN)
    env = {
        "BERTH_AUTH": "basic",
        "BERTH_AUTH_RULES": json.dumps(RULES),
        "BERTH_AUTH_ADMINS": json.dumps({"users": [ADMIN[0]]}),
    }
    server = berth_server_factory(database_url=database_url, env=env)
    amd = build_oci_layout(tmp_path / "amd", tag="img", layers=2, layer_size=4096, seed=1)
    arm = build_oci_layout(tmp_path / "arm", tag="img", layers=2, layer_size=4096, seed=2)
    for tag in ("v1.9", "v1.10", "v2", "latest"):
        skopeo_copy(amd.ref, f"docker://{server.host}/team/app:{tag}", creds=ADMIN)
    skopeo_copy(arm.ref, f"docker://{server.host}/team/other:v1", creds=ADMIN)
    _multi_arch_layout(tmp_path / "multi", [(amd, "amd64"), (arm, "arm64")])
    skopeo_copy(
        f"oci:{tmp_path / 'multi'}:multi",
        f"docker://{server.host}/team/app:multi",
        creds=ADMIN,
        extra_args=["--all"],
    )
    return server, {"amd": amd, "arm": arm}


class Steps:
    """Screenshots of each main page as the test goes; written out only when it fails."""

    def __init__(self, driver: object, name: str) -> None:
        self.driver = driver
        self.name = name
        self.shots: list[tuple[str, bytes]] = []

    def shoot(self, label: str) -> None:
        self.shots.append((label, self.driver.get_screenshot_as_png()))  # type: ignore[attr-defined]

    def save(self) -> Path:
        folder = ARTIFACTS / self.name
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            self.shoot("failure")
        for number, (label, png) in enumerate(self.shots):
            (folder / f"{number:02d}-{label}.png").write_bytes(png)
        return folder.resolve()


@contextlib.contextmanager
def screenshots_on_failure(driver: object, name: str) -> Iterator[Steps]:
    steps = Steps(driver, name)
    try:
        yield steps
    except BaseException as exc:
        folder = steps.save()
        raise AssertionError(f"{exc}\n(screenshots of each page in {folder})") from exc


def test_browse_inspect_and_delete_in_a_real_browser(browser, registry) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    server, images = registry
    driver = browser
    wait = WebDriverWait(driver, WAIT)

    def find(selector: str):
        return wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, selector)))

    with screenshots_on_failure(driver, "test_ui_browser") as steps:
        # Anonymous: sent to the login form; a wrong password is refused there.
        driver.get(f"{server.url}/ui/repo/team/app")
        find("#username").send_keys(ADMIN[0])
        find("#password").send_keys("wrong")
        find("#login-submit").click()
        assert "invalid username or password" in find("#login-error").text
        steps.shoot("login")
        find("#username").clear()
        find("#username").send_keys(ADMIN[0])
        find("#password").send_keys(ADMIN[1])
        find("#login-submit").click()
        # Back where we were going, logged in.
        wait.until(ec.text_to_be_present_in_element((By.ID, "repo-name"), "team/app"))
        assert find("#user").text == ADMIN[0]

        # The repository list, searched.
        driver.get(f"{server.url}/ui/")
        find("#search").send_keys("oth\n")
        wait.until(ec.text_to_be_present_in_element((By.ID, "repo-count"), "1 repository"))
        assert [a.text for a in driver.find_elements(By.CSS_SELECTOR, "a.repo")] == ["team/other"]
        find("#search").clear()
        find("#search").send_keys("app\n")
        wait.until(ec.text_to_be_present_in_element((By.ID, "repo-count"), "1 repository"))
        steps.shoot("repositories")
        find("a.repo").click()

        # The repository: tags number-aware, the pull command with the host we used.
        wait.until(ec.text_to_be_present_in_element((By.ID, "repo-name"), "team/app"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#tags tbody tr")
        assert [r.get_attribute("data-tag") for r in rows] == [
            "latest",
            "multi",
            "v1.9",
            "v1.10",
            "v2",
        ]
        multi = driver.find_element(By.CSS_SELECTOR, 'tr[data-tag="multi"]')
        assert "linux/amd64, linux/arm64" in multi.find_element(By.CSS_SELECTOR, ".platforms").text
        v19 = driver.find_element(By.CSS_SELECTOR, 'tr[data-tag="v1.9"]')
        assert "2000-01-01" in v19.text  # the image config's created date
        command = find("#pull-command").text
        assert command == f"docker pull {server.host}/team/app:latest"
        find("#copy-pull").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "copy-pull"), "Copied"))
        assert find("#copy-pull").get_attribute("data-copied") == command
        steps.shoot("repository")
        docs_shot = os.environ.get("BERTH_UI_DOCS_SCREENSHOT")
        if docs_shot:
            driver.save_screenshot(docs_shot)

        # The multi-arch index: a child per platform, each a link to its image.
        multi.find_element(By.CSS_SELECTOR, "a.tag").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "kind"), "index"))
        platforms = [
            td.text for td in driver.find_elements(By.CSS_SELECTOR, "#children td.platform")
        ]
        assert platforms == ["linux/amd64", "linux/arm64"]
        steps.shoot("index")
        driver.find_elements(By.CSS_SELECTOR, "#children a.child")[1].click()
        wait.until(
            ec.text_to_be_present_in_element(
                (By.ID, "manifest-digest"), images["arm"].manifest_digest
            )
        )
        assert len(driver.find_elements(By.CSS_SELECTOR, "#layers tbody tr")) == 1 + 2
        assert "berth.test.seed" in find("#labels").text

        # A referrer of v1.9's image, pushed after the page was first seen.
        signature = _push_referrer(server, "team/app", images["amd"])
        driver.get(f"{server.url}/ui/repo/team/app/-/manifest/{images['amd'].manifest_digest}")
        referrer = find("#referrers a.referrer")
        assert "cosign" in find("#referrers").text
        assert "<b>ci</b>" in find("#referrers").text  # shown as text, not markup
        steps.shoot("manifest")
        referrer.click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "manifest-digest"), signature))
        assert "cosign" in find("#artifact-type").text
        assert find("#subject").get_attribute("href").endswith(images["amd"].manifest_digest)
        steps.shoot("referrer")

        # Two tags deleted at once, confirmed in the dialog.
        driver.get(f"{server.url}/ui/repo/team/app")
        for tag in ("v1.9", "v2"):
            find(f'input[name="tag"][value="{tag}"]').click()
        find("#delete-tags").click()
        alert = wait.until(ec.alert_is_present())
        assert "v1.9, v2" in alert.text
        alert.accept()
        wait.until(ec.text_to_be_present_in_element((By.ID, "deleted-notice"), "Deleted 2 tags"))
        steps.shoot("deleted")
        listed = requests.get(f"{server.url}/v2/team/app/tags/list", auth=ADMIN, timeout=10).json()
        assert listed["tags"] == ["latest", "multi", "v1.10"]

        # Log out: the session is gone, the UI asks for a login again.
        find("#logout").click()
        find("#login-submit")
        driver.get(f"{server.url}/ui/")
        assert "/ui/login" in driver.current_url
