"""The README quickstart in a real browser against the production server (development settings):
the login page's "Local sign-in (development)", a key made in the portal, a Clockchain read and a
generation with it, the charge on the billing page. No Auth0 anywhere. Screenshots in
test-artifacts/."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

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


def test_newcomer_signs_in_locally_makes_a_key_and_relays_a_generation(
    flash_peer: Any, site: Any, browser: Any, page: Page, screenshot: Any
) -> None:
    from accounts.models import User

    page.open("/portal/")
    assert "/portal/login/" in browser.current_url
    browser.find_element(By.ID, "id_email").send_keys("newcomer@example.com")
    browser.find_element(By.ID, "id_name").send_keys("Newcomer")
    screenshot("portal-local-signin")
    browser.find_element(By.ID, "local-signin-submit").click()
    _wait(browser, "#balance")
    page.assert_clean()
    assert browser.current_url == site.url + "/portal/"
    assert page.stylesheets_applied() >= 1
    assert browser.find_element(By.ID, "balance").text == "50"  # resolved in Flash: signup credits
    user = User.objects.get(auth0_sub="local|newcomer@example.com")
    assert user.flash_user_id in flash_peer.users

    browser.find_element(By.LINK_TEXT, "API keys").click()
    browser.find_element(By.ID, "id_name").send_keys("Quickstart")
    browser.find_element(By.CSS_SELECTOR, "#create-key button[type=submit]").click()
    raw = _wait(browser, "#new-key").get_attribute("value")
    assert raw.startswith("tp_live_")
    page.assert_clean()

    headers = {"X-API-Key": raw}
    moments = httpx.get(site.url + "/api/v1/moments", headers=headers, timeout=20)
    assert moments.status_code == 200, moments.text
    assert moments.json()["items"]
    generated = httpx.post(
        site.url + "/api/v1/generate",
        headers=headers,
        json={"query": "The signing of the Magna Carta, 1215"},
        timeout=30,
    )
    assert generated.status_code == 200, generated.text
    assert generated.json()["status"] == "completed"

    page.open("/portal/billing/")
    assert "The signing of the Magna Carta, 1215" in browser.page_source
    assert browser.find_element(By.ID, "balance").text == "45"
    screenshot("portal-local-signin-billing")
