"""A key's spend controls in the portal, in a real browser against the production server (issue
18): the create form with scopes, a monthly credit budget, an expiry day and a network list (bad
input comes back as errors on the form, not an error page), the key spending its budget through
the gateway (402 budget_exhausted past it), the list showing spent / budget and the expiry
reminder, and the key's page raising the budget. No failed request, no console error; a phone
fits every page. Screenshots in test-artifacts/."""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import httpx
import pytest
from django.utils import timezone

pytest.importorskip("selenium", reason="browser tests need Selenium (requirements-dev.txt)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as expected
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import Page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _wait(driver: Any, css: str) -> Any:
    return WebDriverWait(driver, 10).until(
        expected.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _type(driver: Any, element_id: str, text: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def _set_date(driver: Any, element_id: str, day: str) -> None:
    # A date input's typing order follows the browser's locale; its value is always ISO.
    driver.execute_script(
        "document.getElementById(arguments[0]).value = arguments[1]", element_id, day
    )


def _scope_box(driver: Any, scope: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f"#key-scopes input[value='{scope}']")


def _generate(site: Any, raw: str, query: str) -> httpx.Response:
    return httpx.post(
        site.url + "/api/v1/generate",
        headers={"X-API-Key": raw},
        json={"query": query},
        timeout=30,
    )


def _row_text(driver: Any, raw: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f"tr[data-key-prefix='{raw[:16]}']").text)


def test_owner_sets_scopes_budget_expiry_and_networks_and_the_gateway_holds_them(
    flash_peer: Any, site: Any, browser: Any, page: Page, screenshot: Any
) -> None:
    from apikeys.models import APIKey

    page.local_sign_in("controls@example.com", "Controls")
    page.open("/portal/keys/")
    assert page.stylesheets_applied() >= 1

    # The defaults: read, generate and publish; never `keys` or `billing` unless asked for.
    checked = [
        box.get_attribute("value")
        for box in browser.find_elements(By.CSS_SELECTOR, "#key-scopes input")
        if box.is_selected()
    ]
    assert checked == ["read", "generate", "publish"]

    # Bad input: the same page with each error next to its field (status 200, nothing failed).
    _type(browser, "id_name", "Partner server")
    _scope_box(browser, "publish").click()
    _type(browser, "id_monthly_credit_budget", "10")
    in_three_days = (timezone.now().astimezone(UTC) + timedelta(days=3)).date().isoformat()
    _set_date(browser, "id_expires_on", in_three_days)
    browser.find_element(By.CSS_SELECTOR, "#key-restrictions summary").click()
    _type(browser, "id_allowed_cidrs", "127.0.0.0/8\nthe office")
    browser.find_element(By.CSS_SELECTOR, "#create-key button[type=submit]").click()
    error = _wait(browser, "#key-restrictions .errorlist")
    assert error.text == "'the' is not an IP network (CIDR)."
    page.assert_clean()
    assert not APIKey.objects.exists()
    # What was typed is still there, the restrictions open to show the error.
    assert browser.find_element(By.ID, "id_monthly_credit_budget").get_attribute("value") == "10"
    assert not _scope_box(browser, "publish").is_selected()
    screenshot("portal-key-form-errors")

    _type(browser, "id_allowed_cidrs", "127.0.0.0/8")
    browser.find_element(By.CSS_SELECTOR, "#create-key button[type=submit]").click()
    raw = _wait(browser, "#new-key").get_attribute("value")
    assert raw.startswith("tp_live_")
    controls = browser.find_element(By.ID, "new-key-controls").text
    assert "Scopes: read, generate" in controls and "monthly budget: 10 credits" in controls
    page.assert_clean()
    key = APIKey.objects.get(prefix=raw[:16])
    assert (key.scopes, key.monthly_credit_budget, key.allowed_cidrs) == (
        ["read", "generate"],
        10,
        ["127.0.0.0/8"],
    )

    # Through the gateway (2 workers): two generations fit the budget, the third does not.
    assert _generate(site, raw, "The fall of Rome").status_code == 200
    assert _generate(site, raw, "The fall of Troy").status_code == 200
    refused = _generate(site, raw, "The fall of Babylon")
    assert (refused.status_code, refused.json()["code"]) == (402, "budget_exhausted")
    visibility = httpx.patch(
        f"{site.url}/api/v1/timepoints/{'0' * 8}-0000-4000-8000-{'0' * 12}/visibility",
        headers={"X-API-Key": raw},
        json={"visibility": "private"},
        timeout=10,
    )
    assert (visibility.status_code, visibility.json()["code"]) == (403, "scope_required")

    # The list: spent / budget for the month, used up; the key flagged as expiring soon.
    browser.find_element(By.ID, "done").click()
    _wait(browser, "#key-table")
    page.assert_clean()
    row = _row_text(browser, raw)
    assert "10 / 10" in row and "budget used" in row and "Expires" in row
    assert "Partner server" in browser.find_element(By.ID, "expiring-keys").text
    screenshot("portal-keys-spend")

    # The key's page: the month against the budget; raise the budget, and it spends again.
    browser.find_element(By.LINK_TEXT, "Partner server").click()
    _wait(browser, "#edit-key")
    page.assert_clean()
    assert "10 / 10" in browser.find_element(By.ID, "key-budget").text
    assert browser.find_element(By.ID, "id_expires_on").get_attribute("value") == in_three_days
    _type(browser, "id_monthly_credit_budget", "15")
    _type(browser, "id_allowed_origins", "app.example.com")
    browser.find_element(By.CSS_SELECTOR, "#edit-key button[type=submit]").click()
    error = _wait(browser, "#edit-key .errorlist")
    assert error.text == "'app.example.com' is not an origin like https://app.example.com."
    page.assert_clean()
    assert APIKey.objects.get(pk=key.pk).monthly_credit_budget == 10  # nothing saved
    screenshot("portal-key-edit")
    _type(browser, "id_allowed_origins", "")
    browser.find_element(By.CSS_SELECTOR, "#edit-key button[type=submit]").click()
    _wait(browser, ".message-success")
    page.assert_clean()
    assert "10 / 15" in _row_text(browser, raw)
    assert _generate(site, raw, "The fall of Babylon").status_code == 200
    page.open(f"/portal/usage/?key={key.pk}")
    assert "15 / 15" in browser.find_element(By.ID, "key-month").text

    # A phone: the key pages fit without sideways scrolling.
    with page.phone():
        page.open_fitting("/portal/keys/")
        page.open_fitting(f"/portal/keys/{key.pk}/")
        screenshot("portal-key-edit-phone")
