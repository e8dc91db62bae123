"""Browser tests: Debian's Chromium, headless, driven by Selenium against the production server
(`site`: gunicorn + the project's uvicorn worker, 2 workers, DEBUG off, the collected and hashed
static files served by WhiteNoise: what `make run` and the Dockerfile start), sharing the test's
database. Every page load is checked: no failed request, no console error (`page`). Skipped with a
message when Chromium, chromedriver or Selenium is missing, so `make test` passes on a machine
without a browser; `.ci/run` installs Chromium and runs them.

Chromium is started with every background-networking feature off and a host-resolver rule that
answers "not found" for any name but loopback: a page that tries to load anything from outside
this machine fails visibly instead of reaching out.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from tests.reliability.conftest import ProductionGateway, live_database_url

# Debian's paths; the variables exist to try the skip path on a machine that has Chromium.
CHROMIUM = Path(os.environ.get("TPB_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("TPB_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACTS = Path(django_settings.BASE_DIR) / "test-artifacts"
PHONE_WIDTH = 390  # CSS pixels, as an iPhone 14


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
    # Console messages and network events, read after every page (`page`).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# Settings the test's fixtures point at loopback peers (Flash, Clockchain, the OIDC provider,
# the Stripe-compatible server): handed to the server as its environment.
PASSED_SETTINGS = (
    "OIDC_RP_CLIENT_ID",
    "OIDC_RP_CLIENT_SECRET",
    "OIDC_OP_AUTHORIZATION_ENDPOINT",
    "OIDC_OP_TOKEN_ENDPOINT",
    "OIDC_OP_USER_ENDPOINT",
    "AUTH0_CLIENT_ID",
    "AUTH0_CLIENT_SECRET",
    "AUTH0_DOMAIN",
    "AUTH0_ISSUER",
    "AUTH0_AUDIENCE",
    "AUTH0_JWKS_URL",
    "AUTH0_USERINFO_URL",
    "STRIPE_API_BASE",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
)


@pytest.fixture
def site(
    request: Any,
    transactional_db: Any,
    flash_peer: Any,
    clockchain_peer: Any,
    collected_static: Path,
    tmp_path: Path,
) -> Iterator[ProductionGateway]:
    """The production server on a loopback port, on the test's own database (committed rows are
    seen both ways), pointed at the peers the test's fixtures started."""
    # Their settings (and the synced catalogue) must exist before the start.
    for fixture in ("oidc_provider", "stripe_api", "catalogue", "stripe_for_site"):
        if fixture in request.fixturenames:
            request.getfixturevalue(fixture)
    env = {
        name: str(getattr(django_settings, name))
        for name in PASSED_SETTINGS
        if getattr(django_settings, name, "")
    }
    env.update(
        {
            "STATIC_ROOT": str(collected_static),
            "METERING_FLUSH_INTERVAL_SECONDS": "0.2",
            "LOG_LEVEL": "WARNING",
        }
    )
    server = ProductionGateway(tmp_path, env, database_url=live_database_url())
    yield server
    server.stop()


class Page:
    """The browser, with every page load checked for failed requests and console errors."""

    def __init__(self, driver: Any, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def problems(self) -> list[str]:
        """Console errors and failed requests since the last call (reading clears the logs)."""
        found = [
            f"console: {entry['message']}"
            for entry in self.driver.get_log("browser")
            if entry["level"] == "SEVERE"
        ]
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.loadingFailed" and not params.get("canceled"):
                found.append(f"request failed: {params.get('errorText')} ({params.get('type')})")
            elif message["method"] == "Network.responseReceived":
                response = params["response"]
                if response["status"] >= 400:
                    found.append(f"HTTP {response['status']}: {response['url']}")
        return found

    def assert_clean(self, what: str = "") -> None:
        problems = self.problems()
        assert problems == [], f"{what or self.driver.current_url}: {problems}"

    def open(self, path: str) -> None:
        """Load a page of the site and check it (and whatever the previous steps did)."""
        self.assert_clean("before " + path)
        self.driver.get(self.base_url + path)
        self.assert_clean(path)

    @contextmanager
    def phone(self) -> Iterator[None]:
        """The browser with a phone's screen (as an iPhone 14) until the end."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": PHONE_WIDTH, "height": 844, "deviceScaleFactor": 1, "mobile": True},
        )
        try:
            yield
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def open_fitting(self, path: str) -> None:
        """Inside `phone()`: `open` the page and check it fits the phone's width (no sideways
        scrolling)."""
        self.open(path)
        inner, scroll = self.driver.execute_script(
            "return [window.innerWidth, document.documentElement.scrollWidth]"
        )
        assert inner == PHONE_WIDTH and scroll <= inner, (path, inner, scroll)

    def local_sign_in(self, email: str, name: str) -> None:
        """Sign in with the development sign-in on the login page; waits for the portal."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as expected
        from selenium.webdriver.support.ui import WebDriverWait

        self.open("/portal/login/")
        self.driver.find_element(By.ID, "id_email").send_keys(email)
        self.driver.find_element(By.ID, "id_name").send_keys(name)
        self.driver.find_element(By.ID, "local-signin-submit").click()
        WebDriverWait(self.driver, 10).until(
            expected.presence_of_element_located((By.CSS_SELECTOR, "#balance"))
        )

    def stylesheets_applied(self) -> int:
        """How many stylesheets the page loaded that hold rules (a 404 or an empty one has none)."""
        return int(
            self.driver.execute_script(
                "return [...document.styleSheets].filter(s => {"
                " try { return s.cssRules.length > 0 } catch (e) { return false } }).length"
            )
        )


@pytest.fixture
def browser(chrome: Any, site: ProductionGateway) -> Iterator[Any]:
    """A clean browser (no cookies) at desktop size, on the production server."""
    ARTIFACTS.mkdir(exist_ok=True)
    chrome.get(site.url + "/health")
    chrome.delete_all_cookies()
    chrome.set_window_size(1280, 900)
    chrome.get_log("browser")  # what earlier tests left in the logs is theirs
    chrome.get_log("performance")
    yield chrome


@pytest.fixture
def page(browser: Any, site: ProductionGateway) -> Iterator[Page]:
    checked = Page(browser, site.url)
    yield checked
    checked.assert_clean("at the end of the test")


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
