"""The status page in a real headless Chromium: two real backends, a key asked once, a killed backend shown down.

Debian's `chromium` + `chromium-driver` are installed here when missing (apt-get, as CI runs as root);
selenium comes from the test extras. A machine where they cannot be installed fails this test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from support.gateway_process import GatewayProcess

pytestmark = pytest.mark.slow

USER_KEY = "sk-user-team-b-0123456789"
KEY = "sk-page-test-key"


def _ensure_chromium() -> str:
    """chromedriver's path, installing Debian's chromium + chromium-driver first when missing."""
    found = shutil.which("chromedriver")
    if found and shutil.which("chromium"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
        assert done.returncode == 0, f"{' '.join(cmd)} failed: {done.stderr[-2000:]}"
    found = shutil.which("chromedriver")
    assert found, "chromium-driver installed but chromedriver is not on PATH"
    return found


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1050"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium") or ""
    driver = webdriver.Chrome(service=Service(_ensure_chromium()), options=options)
    yield driver
    driver.quit()


def _card_states(driver: WebDriver) -> dict[str, str]:
    try:
        return {card.get_attribute("data-backend"): card.find_element(By.CSS_SELECTOR, "[data-state]").text
                for card in driver.find_elements(By.CSS_SELECTOR, "article.card")}
    except StaleElementReferenceException:  # redrawn between the two reads
        return {}


def _tokens_per_s(driver: WebDriver, backend: str) -> float:
    try:
        card = driver.find_element(By.CSS_SELECTOR, f'article.card[data-backend="{backend}"]')
        terms = card.find_elements(By.TAG_NAME, "dt")
        value = next(t.find_element(By.XPATH, "following-sibling::dd[1]").text
                     for t in terms if t.text == "req/s · tok/s")
        return float(value.split("·")[1].replace(",", ""))
    except (StaleElementReferenceException, StopIteration, ValueError):
        return 0.0


def _until(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"page: {what} not seen within {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - started


def test_page_shows_the_fleet_and_a_killed_backend(llama_server, tmp_path: Path, browser: WebDriver) -> None:
    servers = [llama_server(slots=2, ctx=1024) for _ in range(2)]
    gw = GatewayProcess({"backends": [{"url": s.url, "name": f"cpu{i}"} for i, s in enumerate(servers)],
                         "gateway": {"api_keys": [{"name": "ops", "key": KEY, "admin": True},
                                                 {"name": "team-b", "key": USER_KEY}],
                                    "health": {"interval_s": 1}}},
                        tmp_path).start()
    try:
        auth = {"Authorization": f"Bearer {KEY}"}
        for i in range(6):  # some traffic, so the charts and the key table have something to show
            r = httpx.post(gw.url + "/v1/chat/completions", headers=auth, timeout=30, json={
                "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 12, "stream": i % 2 == 0})
            assert r.status_code == 200

        browser.get(gw.url + "/")
        # no key yet: the page asks for one, and shows no data
        _until(lambda: browser.find_element(By.ID, "keyform").is_displayed(), 10, "the key form")
        assert not browser.find_element(By.ID, "main").is_displayed()
        browser.find_element(By.ID, "key").send_keys(KEY)
        browser.find_element(By.CSS_SELECTOR, "#keyform button").click()
        _until(lambda: _card_states(browser) == {"cpu0": "ready", "cpu1": "ready"}, 10, "both backends ready")
        assert browser.execute_script("return sessionStorage.getItem('vlgate.apiKey')") == KEY
        assert not browser.find_element(By.ID, "keyform").is_displayed()
        keys = browser.find_element(By.ID, "keys").text
        assert "ops" in keys and KEY not in browser.page_source

        # each backend's generated tokens/s (from its own llama-server counter, next scrape) are on its card
        _until(lambda: all(_tokens_per_s(browser, name) > 0 for name in ("cpu0", "cpu1")), 10, "tokens/s per backend")

        servers[1].kill()
        took = _until(lambda: _card_states(browser) == {"cpu0": "ready", "cpu1": "down"}, 8, "cpu1 down, cpu0 ready")
        card = browser.find_element(By.CSS_SELECTOR, 'article.card[data-backend="cpu1"]')
        assert "unreachable" in card.text and "bad" in card.get_attribute("class")
        time.sleep(2.5)  # the next poll after the change: a settled page for the screenshot
        shot = tmp_path / "status-page.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if os.environ.get("VLGATE_SCREENSHOT_DIR"):  # to refresh the README's picture
            shutil.copy(shot, Path(os.environ["VLGATE_SCREENSHOT_DIR"]) / "status-page.png")
        print(f"killed backend shown down after {took:.1f}s; screenshot {shot}")

        # a reload keeps the key for the tab (sessionStorage): no second prompt
        browser.refresh()
        _until(lambda: _card_states(browser).get("cpu0") == "ready", 10, "the page after a reload")
        assert not browser.find_element(By.ID, "keyform").is_displayed()

        # a user key: its own usage, the backends' state, no address and no error text
        r = httpx.post(gw.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {USER_KEY}"}, timeout=30,
                       json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200
        browser.execute_script(f"sessionStorage.setItem('vlgate.apiKey', '{USER_KEY}')")
        browser.refresh()
        _until(lambda: browser.find_element(By.ID, "keyshead").text == "Usage of your key (team-b)", 10,
               "the user's view")
        assert _card_states(browser) == {"cpu0": "ready", "cpu1": "down"}
        keys = browser.find_element(By.ID, "keys").text
        assert "team-b" in keys and "ops" not in keys
        text = browser.find_element(By.TAG_NAME, "body").text
        assert all(s.url.split("//")[1] not in text for s in servers) and "unreachable" not in text
    finally:
        gw.stop()
