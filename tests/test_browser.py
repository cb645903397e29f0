"""The public client in a real browser: headless Chromium signs in with PKCE on the example
app's page, which calls the API; the page shows the XSUAA client id that the exchange
added to ``aud``.

Chromium and its driver come from Debian's ``chromium`` and ``chromium-driver`` packages
(``.ci/run`` installs them); Selenium is given both paths, so nothing is downloaded at run
time. Without them the test fails, it does not skip: a browser test that silently does not
run proves nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from example_app.browser import BrowserDemo, browser_demo

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Set to a path (docs/browser-demo.png) to refresh the documentation's screenshot.
SCREENSHOT = os.environ.get("BROWSER_DEMO_SCREENSHOT")


@pytest.fixture
def demo() -> Iterator[BrowserDemo]:
    with browser_demo() as running:
        yield running


@pytest.fixture
def chromium(demo: BrowserDemo, tmp_path: Path) -> Iterator[WebDriver]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    assert not missing, (
        f"{' and '.join(missing)} missing: install Debian's chromium and chromium-driver "
        "(sudo apt-get install chromium chromium-driver; .ci/run does)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1100,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
        # Trust the emulator's own server certificate, and nothing else.
        f"--ignore-certificate-errors-spki-list={demo.spki_hash}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for_state(driver: WebDriver, *states: str) -> str:
    def reached(d: WebDriver) -> str | bool:
        state = d.find_element(By.TAG_NAME, "body").get_attribute("data-state") or ""
        return state if state in (*states, "error") else False

    # The page navigates (to IAS and back): an element found just before may go stale.
    waiting = WebDriverWait(
        driver, 60, ignored_exceptions=(StaleElementReferenceException, NoSuchElementException)
    )
    state: str = waiting.until(reached)
    assert state != "error", driver.find_element(By.ID, "error").text
    return state


def test_sign_in_with_pkce_in_chromium(demo: BrowserDemo, chromium: WebDriver) -> None:
    emulator = demo.emulator
    chromium.get(demo.page_url)
    _wait_for_state(chromium, "signed-out")

    chromium.find_element(By.ID, "sign-in").click()
    # IAS's login page: pick the user.
    WebDriverWait(chromium, 60).until(lambda d: d.current_url.startswith(emulator.url))
    assert "Sign in" in chromium.title
    chromium.find_element(By.CSS_SELECTOR, 'button[value="alice@example.com"]').click()
    _wait_for_state(chromium, "done")

    assert chromium.current_url == demo.page_url  # code and state left the address bar
    text = {
        name: chromium.find_element(By.ID, name).text
        for name in ("user", "public-aud", "exchanged-aud", "added-aud")
    }
    assert text["user"] == "alice@example.com"
    assert emulator.xsuaa_client_id in text["exchanged-aud"].split(", ")
    assert emulator.xsuaa_client_id not in text["public-aud"].split(", ")
    assert emulator.xsuaa_client_id in text["added-aud"]
    calls = [
        row.get_attribute("data-served-by")
        for row in chromium.find_elements(By.CSS_SELECTOR, "#calls tr")
    ]
    assert calls == ["exchange", "cache", "refused: invalid_token"]
    # The browser did the PKCE flow itself: the code grant with a verifier, over CORS.
    code_grants = [
        call
        for call in emulator.calls
        if call.path == "/oauth2/token" and call.params.get("grant_type") == "authorization_code"
    ]
    assert len(code_grants) == 1
    assert code_grants[0].headers["origin"] == demo.page_url.rstrip("/").rsplit("/app", 1)[0]
    assert len(code_grants[0].params["code_verifier"]) >= 43
    assert len(emulator.exchanges) == 1  # one exchange, then the cache; the tampered one never
    if SCREENSHOT:
        chromium.save_screenshot(SCREENSHOT)

    chromium.find_element(By.ID, "sign-out").click()
    _wait_for_state(chromium, "signed-out")
    assert not chromium.find_element(By.ID, "result").is_displayed()
    assert chromium.execute_script("return sessionStorage.length") == 0
    chromium.refresh()
    assert _wait_for_state(chromium, "signed-out") == "signed-out"
