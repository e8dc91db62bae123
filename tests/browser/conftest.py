"""Browser tests: Debian's Chromium, headless, driven by Selenium against pytest-django's live
server. Skipped with a message when Chromium, chromedriver or Selenium is missing, so `make test`
passes on a machine without a browser; `.ci/run` installs Chromium and runs them.

Chromium is started with every background-networking feature off and a host-resolver rule that
answers "not found" for any name but loopback: a page that tries to load anything from outside
this machine fails visibly instead of reaching out.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

# Debian's paths; the variables exist to try the skip path on a machine that has Chromium.
CHROMIUM = Path(os.environ.get("TPB_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("TPB_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACTS = Path(django_settings.BASE_DIR) / "test-artifacts"


def _missing() -> str | None:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return (
            "browser tests need Debian's Chromium: apt-get install chromium chromium-driver "
            f"({CHROMIUM} or {CHROMEDRIVER} not found)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "browser tests need Selenium: pip install -r requirements-dev.txt"
    return None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = _missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        return  # in CI the `chrome` fixture fails them instead (see there)
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def chrome() -> Iterator[Any]:
    reason = _missing()
    if reason is not None:
        # Only reached in CI, where `.ci/run` installs Chromium: a missing browser there is a
        # failure, never a quiet skip, so a green CI run has driven the browser.
        pytest.fail(f"CI=true but {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tpb-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-default-apps",
        "--disable-extensions",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(chrome: Any, live_server: Any, settings: Any) -> Iterator[Any]:
    """A clean browser (no cookies) at desktop size, and a quiet test process."""
    ARTIFACTS.mkdir(exist_ok=True)
    chrome.get(live_server.url + "/health")
    chrome.delete_all_cookies()
    chrome.set_window_size(1280, 900)
    yield chrome


@pytest.fixture
def screenshot(chrome: Any) -> Any:
    """`screenshot("name")` saves test-artifacts/<name>.png (full page height)."""
    ARTIFACTS.mkdir(exist_ok=True)

    def take(name: str) -> Path:
        width = chrome.get_window_size()["width"]
        height = chrome.execute_script("return document.documentElement.scrollHeight")
        chrome.set_window_size(width, min(max(int(height), 600), 4000))
        path = ARTIFACTS / f"{name}.png"
        chrome.save_screenshot(str(path))
        return path

    return take
