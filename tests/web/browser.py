"""Debian's headless Chromium driven through chromedriver, as the dashboard's user sees it."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.web.served import HEADLESS

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
T = TypeVar("T")


def available() -> str | None:
    """Why no browser test can run here, or None."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    return f"{' and '.join(missing)} missing (./scripts/setup installs them)" if missing else None


@contextmanager
def chromium(width: int = 1400, height: int = 900) -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="clan-vm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*HEADLESS, f"--user-data-dir={profile}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(what: Callable[[], T | None], timeout: float = 60, message: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = what()
        except Exception:  # the element is being redrawn: look again
            found = None
        if found:
            return found
        assert time.monotonic() < deadline, f"not within {timeout}s: {message}"
        time.sleep(0.05)


def row(driver: webdriver.Chrome, name: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'#vms tr[data-vm="{name}"]')


def state_of(driver: webdriver.Chrome, name: str) -> str:
    return str(row(driver, name).get_attribute("data-state"))


def click_action(driver: webdriver.Chrome, name: str, action: str) -> None:
    row(driver, name).find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]').click()


def note_of(driver: webdriver.Chrome, name: str) -> str:
    return str(row(driver, name).find_element(By.CSS_SELECTOR, ".note").text)


def terminal_text(driver: webdriver.Chrome) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, "#terminal .xterm-rows").text)
