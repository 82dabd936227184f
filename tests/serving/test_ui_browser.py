"""The page for people, in a real headless Chromium: pick an image, see the labels as bars, the OOD flag and
the model that answered. A screenshot is kept as a test artifact (TRANSFERLINE_TEST_ARTIFACTS or the
test's temporary folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from flows.local_server import running_server
from tests.serving import images
from tests.serving.conftest import PROJECT_ROOT, ServingModels, server_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(serving_models: ServingModels, tmp_path_factory: pytest.TempPathFactory):
    with running_server(
        PROJECT_ROOT, tmp_path_factory.mktemp("serve-ui") / "serve.log", server_env(serving_models.home)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and CHROMEDRIVER, (
        "the page test needs Debian's chromium and chromium-driver (make test installs them)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1000,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_a_person_picks_an_image_and_sees_the_answer(server, browser, serving_models: ServingModels, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "photo.png"
    photo.write_bytes(images.accepted_images()["coffee.png"])
    browser.get(f"{server.url}/ui")
    wait = WebDriverWait(browser, 30)
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "model"), serving_models.v1))
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait.until(expected_conditions.presence_of_element_located((By.ID, "answered-by")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#result .prediction")
    assert 1 <= len(rows) <= 5
    labels = [row.find_element(By.CLASS_NAME, "label").text for row in rows]
    assert set(labels) <= {"amber", "azure", "jade"}
    assert serving_models.v1 in browser.find_element(By.ID, "answered-by").text
    flag = browser.find_element(By.ID, "ood").text
    assert flag.startswith(("Out of distribution", "In distribution"))
    widths = [float(row.find_element(By.CLASS_NAME, "bar").value_of_css_property("width").rstrip("px")) for row in rows]
    assert widths == sorted(widths, reverse=True) and widths[0] > 0
    artifacts = Path(os.environ.get("TRANSFERLINE_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "ui.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000


def test_a_refused_upload_shows_the_services_message(server, browser, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not an image")
    browser.get(f"{server.url}/ui")
    browser.find_element(By.ID, "file").send_keys(str(junk))
    error = WebDriverWait(browser, 30).until(expected_conditions.presence_of_element_located((By.CLASS_NAME, "error")))
    assert error.text.startswith("refused (4")
