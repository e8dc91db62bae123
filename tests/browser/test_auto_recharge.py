"""Auto-recharge in a real browser against the production server: turn it on from the billing
page (the card saved on the Stripe customer is named), then a fall below the threshold whose
recharge the card's bank declines: the banner on every page, the failed recharge in the list, the
rule shown off; styled, fits a phone, no failed request, no console error. The test process plays
the background worker (the balance check and the charge)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("selenium", reason="browser tests need Selenium (requirements-dev.txt)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as expected
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser.conftest import Page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def _wait(driver: Any, css: str) -> Any:
    return WebDriverWait(driver, 10).until(
        expected.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def test_developer_turns_auto_recharge_on_and_sees_it_turned_off_by_a_decline(
    oidc_provider: Any,
    stripe_api: Any,
    catalogue: Any,
    flash_peer: Any,
    site: Any,
    browser: Any,
    page: Page,
    screenshot: Any,
) -> None:
    from accounts.models import User
    from alerts.services import generation_charged, low_balance_checks_due
    from payments import stripe_client
    from payments.models import Recharge, RechargeState
    from payments.services import recharges_charge_due

    page.open("/portal/")
    browser.find_element(By.ID, "signin").click()
    _wait(browser, "#balance")
    # The developer once paid at Checkout with a card Stripe keeps; its bank will decline the
    # next charge (Stripe's pm_card_chargeCustomerFail).
    user = User.objects.get(email="dev@example.com")
    customer = stripe_client.customer_for_user(user)
    stripe_api.api(
        "POST", "/v1/payment_methods/pm_card_chargeCustomerFail/attach", customer=customer
    )

    page.open("/portal/billing/#auto-recharge")
    form = _wait(browser, "#auto-recharge-form")
    assert "buy a pack once to save it" in browser.page_source
    form.find_element(By.ID, "auto-recharge-enabled").click()
    form.find_element(By.ID, "auto-recharge-threshold").send_keys("40")
    Select(form.find_element(By.ID, "auto-recharge-pack")).select_by_value("100_credits")
    cap = form.find_element(By.ID, "auto-recharge-cap")
    cap.clear()
    cap.send_keys("2")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    message = _wait(browser, ".message-success").text
    assert "below 40 credits, 100 credits is bought with your Visa card ending 0341" in message
    page.assert_clean()
    assert page.stylesheets_applied() >= 1
    screenshot("portal-auto-recharge-on")

    # Generations take the balance from 50 to 30; the worker checks it and charges the card.
    flash_peer.set_balance(user.flash_user_id, 30)
    generation_charged(user_id=user.pk)
    low_balance_checks_due()
    recharges_charge_due()
    assert Recharge.objects.get().state == RechargeState.FAILED

    page.open("/portal/keys/")
    banner = _wait(browser, "#auto-recharge-off-banner").text
    assert "Auto-recharge was turned off" in banner and "Your card was declined." in banner
    browser.find_element(By.CSS_SELECTOR, "#auto-recharge-off-banner a").click()
    row = _wait(browser, "#recharges tbody tr")
    assert "Failed" in row.text and "$4.99" in row.text and "declined" in row.text
    assert not browser.find_element(By.ID, "auto-recharge-enabled").is_selected()
    page.assert_clean()
    screenshot("portal-auto-recharge-declined")

    with page.phone():
        page.open_fitting("/portal/billing/#auto-recharge")
        screenshot("portal-auto-recharge-phone")
