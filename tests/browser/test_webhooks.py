"""The portal's webhook pages in a real browser against the production server: add an endpoint
(the secret shown once, copied), see a delivery that failed once and then landed with both
attempts, resend it, rotate the secret; every page styled, fits a phone, no failed request, no
console error. The test process plays the background worker (`deliveries_send_due`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("selenium", reason="browser tests need Selenium (requirements-dev.txt)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as expected
from selenium.webdriver.support.ui import WebDriverWait

from devpeers.webhook_receiver import WebhookReceiver, verify
from tests.browser.conftest import Page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _wait(driver: Any, css: str) -> Any:
    return WebDriverWait(driver, 10).until(
        expected.presence_of_element_located((By.CSS_SELECTOR, css))
    )


@pytest.fixture
def receiver(settings: Any) -> Iterator[WebhookReceiver]:
    settings.WEBHOOK_RETRY_BASE_SECONDS = 0
    running = WebhookReceiver().start()
    yield running
    running.stop()


def test_developer_adds_an_endpoint_sees_deliveries_resends_and_rotates(
    oidc_provider: Any,
    flash_peer: Any,
    site: Any,
    browser: Any,
    page: Page,
    screenshot: Any,
    receiver: WebhookReceiver,
) -> None:
    from accounts.models import User
    from webhooks.models import WebhookDelivery
    from webhooks.outbox import deliveries_send_due
    from webhooks.services import event_emit

    page.open("/portal/")
    browser.find_element(By.ID, "signin").click()
    _wait(browser, "#balance")
    browser.find_element(By.LINK_TEXT, "Webhooks").click()
    _wait(browser, "#create-webhook")
    page.assert_clean()
    assert page.stylesheets_applied() >= 1
    screenshot("portal-webhooks-empty")

    browser.find_element(By.ID, "id_url").send_keys(f"{receiver.url}/timepoint")
    browser.find_element(By.ID, "id_description").send_keys("staging receiver")
    browser.find_element(By.CSS_SELECTOR, "#create-webhook button[type=submit]").click()
    secret = _wait(browser, "#new-secret").get_attribute("value")
    assert secret.startswith("whsec_")
    browser.find_element(By.ID, "copy-secret").click()
    WebDriverWait(browser, 5).until(
        lambda driver: driver.find_element(By.ID, "copy-secret").text == "Copied"
    )
    screenshot("portal-webhook-secret")
    browser.find_element(By.ID, "done").click()
    _wait(browser, "#rotate-secret")
    assert secret not in browser.page_source

    # An event for this developer; the worker's first attempt gets a 500, the second lands.
    user = User.objects.get(email="dev@example.com")
    receiver.plan = [500]
    event_emit(
        user_id=user.pk,
        type="credits.granted",
        data={"reference": "manual:1", "amount": 25, "source": "manual", "balance_after": 75},
        dedupe_key="browser:1",
    )
    deliveries_send_due()
    deliveries_send_due()
    requests = receiver.wait_for(2)
    assert verify(secret, requests[-1].headers["timepoint-signature"], requests[-1].body)
    delivery = WebhookDelivery.objects.get()

    browser.refresh()
    row = _wait(browser, f"tr[data-delivery='{delivery.public_id}']")
    assert "Delivered" in row.text and "HTTP 200" in row.text
    row.find_element(By.TAG_NAME, "summary").click()
    attempts = [li.text for li in row.find_elements(By.CSS_SELECTOR, ".attempts li")]
    assert len(attempts) == 2 and "HTTP 200" in attempts[0] and "HTTP 500" in attempts[1]
    page.assert_clean()
    screenshot("portal-webhook-deliveries")

    row.find_element(By.XPATH, ".//button[text()='Resend']").click()
    _wait(browser, ".message-success")
    deliveries_send_due()
    assert receiver.wait_for(3)[-1].delivery_id == delivery.public_id

    browser.find_element(By.ID, "rotate-secret").click()
    WebDriverWait(browser, 5).until(expected.alert_is_present()).accept()
    rotated = _wait(browser, "#new-secret").get_attribute("value")
    assert rotated.startswith("whsec_") and rotated != secret
    browser.find_element(By.ID, "done").click()
    _wait(browser, "#rotate-secret")
    assert "also signs until" in browser.page_source
    page.assert_clean()

    with page.phone():
        page.open_fitting("/portal/webhooks/")
        page.open_fitting(f"/portal/webhooks/{delivery.endpoint.public_id}/")
        screenshot("portal-webhook-deliveries-phone")
