"""The developer portal and the API docs in a real browser against the production server: sign in
through the OIDC provider stub, create a key (shown once, works on a relay call), see the call on
the usage chart, roll and revoke the key, start a checkout; Swagger UI lists the operations and
Redoc renders them. Every page styled, no failed request, no console error. Screenshots go to
test-artifacts/."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from django.utils import timezone

pytest.importorskip("selenium", reason="browser tests need Selenium (requirements-dev.txt)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as expected
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import Page
from tests.reliability.conftest import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _wait(driver: Any, css: str) -> Any:
    return WebDriverWait(driver, 10).until(
        expected.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _accept_confirm(driver: Any) -> None:
    WebDriverWait(driver, 5).until(expected.alert_is_present()).accept()


def _balance(site: Any, key: str) -> httpx.Response:
    return httpx.get(
        site.url + "/api/v1/credits/balance",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


def _wait_for_usage(count: int) -> None:
    """The server's usage flusher writes the records within a fraction of a second."""
    from metering.models import UsageRecord

    wait_for(lambda: UsageRecord.objects.count() >= count, timeout=20, interval=0.1)


def test_developer_signs_in_manages_a_key_sees_usage_and_checks_out(
    oidc_provider: Any,
    stripe_api: Any,
    catalogue: Any,
    flash_peer: Any,
    site: Any,
    browser: Any,
    page: Page,
    screenshot: Any,
) -> None:
    from metering.services import usage_rollup

    # Sign in: /portal/ → login page → the provider → back, signed in.
    page.open("/portal/")
    assert "/portal/login/" in browser.current_url
    assert page.stylesheets_applied() >= 1
    screenshot("portal-login")
    browser.find_element(By.ID, "signin").click()
    _wait(browser, "#balance")
    page.assert_clean()
    assert browser.current_url == site.url + "/portal/"
    assert page.stylesheets_applied() >= 1
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
    answer = _balance(site, raw)
    assert answer.status_code == 200, answer.text
    assert answer.json()["balance"] == 50

    # The call shows on the usage chart (after the server's flush and the daily roll-up).
    _wait_for_usage(1)
    usage_rollup(days=[timezone.localdate()])
    page.open("/portal/usage/")
    label = timezone.localdate().strftime("%b %-d")
    titles = [
        element.get_attribute("textContent")
        for element in browser.find_elements(By.CSS_SELECTOR, "#usage-chart rect title")
    ]
    assert f"{label}: 1 requests" in titles
    assert browser.find_element(By.ID, "total-requests").text == "1"
    screenshot("portal-usage")
    # A phone: every portal page fits without sideways scrolling.
    with page.phone():
        for name in ("usage", "keys", "billing", "docs", ""):
            page.open_fitting(f"/portal/{name}{'/' if name else ''}")
        page.open("/portal/usage/")
        screenshot("portal-usage-phone")

    # Roll: a new key is shown; both work during the grace period.
    page.open("/portal/keys/")
    browser.find_element(By.XPATH, "//button[text()='Roll']").click()
    _accept_confirm(browser)
    rolled = _wait(browser, "#new-key").get_attribute("value")
    assert rolled != raw
    assert _balance(site, rolled).status_code == 200
    assert _balance(site, raw).status_code == 200  # grace period

    # Revoke the new key: it stops.
    browser.find_element(By.ID, "done").click()
    row = _wait(browser, f"tr[data-key-prefix='{rolled[:16]}']")
    row.find_element(By.XPATH, ".//button[text()='Revoke']").click()
    _accept_confirm(browser)
    _wait(browser, ".message-success")
    # At once in the worker that revoked it; the other worker's cached lookup lasts seconds.
    wait_for(lambda: _balance(site, rolled).status_code == 401, timeout=20, interval=0.2)
    page.assert_clean()
    screenshot("portal-keys")

    page.open("/portal/docs/")
    screenshot("portal-docs")

    # Buy credits: the browser is sent to the checkout URL the Stripe-compatible server made.
    page.open("/portal/billing/")
    screenshot("portal-billing")
    page.assert_clean()
    browser.find_element(By.CSS_SELECTOR, "button[data-product='pack:100_credits']").click()
    WebDriverWait(browser, 10).until(lambda driver: "/portal/" not in driver.current_url)
    sessions = [o for o in stripe_api.objects.values() if o.get("object") == "checkout.session"]
    assert len(sessions) == 1
    assert browser.current_url == sessions[0]["url"]
    page.problems()  # the stand-in for Stripe's checkout page is not ours to check


def test_docs_pages_render_from_this_server_alone(
    site: Any, browser: Any, page: Page, screenshot: Any
) -> None:
    """Swagger UI lists the operations and Redoc renders them, from this server alone (no CDN, no
    fonts, no validator): every resource the page loaded is on the site, none failed."""
    page.open("/api/docs")
    WebDriverWait(browser, 20).until(
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10
    )
    summaries = " ".join(e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary"))
    assert "/api/v1/keys" in summaries and "/api/v1/generate" in summaries
    assert page.stylesheets_applied() >= 1
    page.assert_clean()
    screenshot("api-docs")

    page.open("/api/redoc")
    WebDriverWait(browser, 20).until(
        lambda driver: len(driver.find_elements(By.CSS_SELECTOR, "[data-section-id^='operation/']"))
        >= 10
    )
    assert browser.find_element(By.CSS_SELECTOR, "h1").text.startswith("TIMEPOINT API")
    page.assert_clean()
    screenshot("api-redoc")
    for path in ("/api/docs", "/api/redoc"):
        page.open(path)
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert loaded and all(url.startswith(site.url) for url in loaded), (path, loaded)
