"""The developer portal in a real browser: sign in through the OIDC provider stub, create a key
(shown once, works on a relay call), see the call on the usage chart, roll and revoke the key,
start a checkout. Screenshots go to test-artifacts/."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from django.utils import timezone

pytest.importorskip("selenium", reason="browser tests need Selenium (requirements-dev.txt)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as expected
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _wait(driver: Any, css: str) -> Any:
    return WebDriverWait(driver, 10).until(
        expected.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _accept_confirm(driver: Any) -> None:
    WebDriverWait(driver, 5).until(expected.alert_is_present()).accept()


def _balance(live_server: Any, key: str) -> httpx.Response:
    return httpx.get(
        live_server.url + "/api/v1/credits/balance",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def test_developer_signs_in_manages_a_key_sees_usage_and_checks_out(
    browser: Any,
    live_server: Any,
    oidc_provider: Any,
    flash_peer: Any,
    stripe_api: Any,
    screenshot: Any,
) -> None:
    from metering.services import flush_usage, usage_rollup

    # Sign in: /portal/ → login page → the provider → back, signed in.
    browser.get(live_server.url + "/portal/")
    assert "/portal/login/" in browser.current_url
    screenshot("portal-login")
    browser.find_element(By.ID, "signin").click()
    _wait(browser, "#balance")
    assert browser.current_url == live_server.url + "/portal/"
    assert "dev@example.com" in browser.page_source
    assert browser.find_element(By.ID, "balance").text == "50"  # Flash's signup credits
    screenshot("portal-home")

    # Create a key: shown once, with a copy button.
    browser.find_element(By.LINK_TEXT, "API keys").click()
    browser.find_element(By.ID, "id_name").send_keys("Laptop")
    browser.find_element(By.CSS_SELECTOR, "#create-key button[type=submit]").click()
    raw = _wait(browser, "#new-key").get_attribute("value")
    assert raw.startswith("tp_live_")
    browser.find_element(By.ID, "copy-key").click()
    WebDriverWait(browser, 5).until(
        lambda driver: driver.find_element(By.ID, "copy-key").text == "Copied"
    )
    screenshot("portal-key-created")
    browser.find_element(By.ID, "done").click()
    _wait(browser, "#key-table")
    assert raw not in browser.page_source  # never shown again

    # The key works on a relay call (Flash balance through the gateway).
    answer = _balance(live_server, raw)
    assert answer.status_code == 200, answer.text
    assert answer.json()["balance"] == 50

    # The call shows on the usage chart (after the flush and the daily roll-up).
    flush_usage()
    usage_rollup(days=[timezone.localdate()])
    browser.get(live_server.url + "/portal/usage/")
    label = timezone.localdate().strftime("%b %-d")
    titles = [
        element.get_attribute("textContent")
        for element in browser.find_elements(By.CSS_SELECTOR, "#usage-chart rect title")
    ]
    assert f"{label}: 1 requests" in titles
    assert browser.find_element(By.ID, "total-requests").text == "1"
    screenshot("portal-usage")
    # A phone (390 px wide, as an iPhone 14): every portal page fits without sideways scrolling.
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        for page in ("usage", "keys", "billing", ""):
            browser.get(f"{live_server.url}/portal/{page}{'/' if page else ''}")
            inner, scroll = browser.execute_script(
                "return [window.innerWidth, document.documentElement.scrollWidth]"
            )
            assert inner == 390 and scroll <= inner, (page, inner, scroll)
        browser.get(live_server.url + "/portal/usage/")
        screenshot("portal-usage-phone")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # Roll: a new key is shown; both work during the grace period.
    browser.get(live_server.url + "/portal/keys/")
    browser.find_element(By.XPATH, "//button[text()='Roll']").click()
    _accept_confirm(browser)
    rolled = _wait(browser, "#new-key").get_attribute("value")
    assert rolled != raw
    assert _balance(live_server, rolled).status_code == 200
    assert _balance(live_server, raw).status_code == 200  # grace period

    # Revoke the new key: it stops at once.
    browser.find_element(By.ID, "done").click()
    row = _wait(browser, f"tr[data-key-prefix='{rolled[:16]}']")
    row.find_element(By.XPATH, ".//button[text()='Revoke']").click()
    _accept_confirm(browser)
    _wait(browser, ".message-success")
    assert _balance(live_server, rolled).status_code == 401
    screenshot("portal-keys")

    # Buy credits: the browser is sent to the checkout URL the Stripe-compatible server made.
    browser.get(live_server.url + "/portal/billing/")
    screenshot("portal-billing")
    browser.find_element(By.CSS_SELECTOR, "button[data-product='pack:100_credits']").click()
    WebDriverWait(browser, 10).until(lambda driver: "/portal/" not in driver.current_url)
    sessions = [o for o in stripe_api.objects.values() if o.get("object") == "checkout.session"]
    assert len(sessions) == 1
    assert browser.current_url == sessions[0]["url"]


def test_docs_pages_load_nothing_from_outside(browser: Any, live_server: Any) -> None:
    """Swagger UI and Redoc render from this server alone (no CDN, no fonts, no validator).

    Redoc's footer asks for a logo on its CDN; the page's Content-Security-Policy blocks it, so
    every outside URL the browser lists must be one the policy blocked."""
    for path, ready in (("/api/docs", ".swagger-ui .info"), ("/api/redoc", "h1")):
        browser.get(live_server.url + path)
        _wait(browser, ready)
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        blocked = " ".join(
            entry["message"]
            for entry in browser.get_log("browser")
            if "Content Security Policy" in entry["message"]
        )
        outside = [url for url in loaded if not url.startswith(live_server.url)]
        assert [url for url in outside if url not in blocked] == [], f"{path} loaded {outside}"
        screenshot_name = path.strip("/").replace("/", "-")
        browser.save_screenshot(str(ARTIFACTS / f"{screenshot_name}.png"))
