"""The billing admin in a real browser against the production server: staff sign in with a
password, the dashboard shows the business, a change list is styled, a stuck grant is retried, and
a manual grant reaches Flash exactly once. No failed request, no console error on any page."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

pytest.importorskip("selenium", reason="browser tests need Selenium (requirements-dev.txt)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.browser.conftest import Page

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "staff-browser-test-pw"


def _seed_business(user: Any) -> Any:
    from apikeys.services import key_create
    from metering import services as metering
    from payments.models import CreditGrant, Payment

    Payment.objects.create(
        provider="stripe",
        reference="stripe:in_browser",
        user=user,
        amount_cents=4999,
        currency="usd",
    )
    Payment.objects.create(
        provider="apple",
        reference="apple:2000000123",
        user=user,
        amount_cents=499,
        currency="usd",
        amount_refunded_cents=499,
        needs_review=True,
    )
    CreditGrant.objects.create(
        key="stripe:in_browser",
        user=user,
        flash_user_id=user.flash_user_id,
        amount=1000,
        transaction_type="subscription_grant",
        description="[grant:stripe:in_browser] 1000 credits",
        source="stripe",
        state="sent",
        sent_at=timezone.now(),
    )
    stuck = CreditGrant.objects.create(
        key="apple:2000000777",
        user=user,
        flash_user_id=user.flash_user_id,
        amount=40,
        transaction_type="apple_iap",
        description="[grant:apple:2000000777] 40 credits",
        source="apple",
        state="needs_attention",
        last_error="Flash answered 500 three times",
    )
    key, _ = key_create(user=user, name="Production server", mode="live")
    for index in range(12):
        metering.record_usage(
            request_id=f"browser-admin-{index}",
            user_id=user.pk,
            api_key_id=key.pk,
            endpoint="/api/v1/generate",
            method="POST",
            status=200 if index % 4 else 502,
            credits_spent=5 if index % 4 else 0,
            response_time_ms=20.0,
        )
    metering.flush_usage()
    metering.usage_rollup(days=[timezone.localdate()])
    return stuck


def test_staff_run_billing_from_the_admin(
    user: Any, flash_peer: Any, site: Any, browser: Any, page: Page, screenshot: Any
) -> None:
    from accounts.models import User
    from payments.models import CreditGrant
    from payments.services import grants_deliver_due

    staff = User.objects.create_user(
        username="billing-lead", email="lead@example.com", password=PASSWORD, is_staff=True
    )
    staff.groups.add(Group.objects.get(name="billing"))
    stuck = _seed_business(user)

    # Staff login (username and password; Auth0 staff come in through the same OIDC backend).
    page.open("/admin/")
    assert page.stylesheets_applied() >= 2  # the admin's base and login styles
    screenshot("admin-login")
    browser.find_element(By.ID, "id_username").send_keys("billing-lead")
    browser.find_element(By.ID, "id_password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    page.assert_clean()
    screenshot("admin-index")
    browser.find_element(By.CSS_SELECTOR, "#billing-dashboard-link a").click()
    page.assert_clean()
    assert page.stylesheets_applied() >= 2

    # The dashboard renders with data.
    assert browser.find_element(By.ID, "revenue-total").text == "$49.99"  # 49.99 + 4.99 - 4.99
    assert browser.find_element(By.ID, "attention-count").text == "1"
    assert "Production server" in browser.find_element(By.ID, "top-keys").text
    assert "apple:2000000123" in browser.find_element(By.ID, "payments-review").text
    screenshot("admin-dashboard")

    # Retry the stuck grant from the grants list (filtered to what needs attention).
    page.open("/admin/payments/creditgrant/?state__exact=needs_attention")
    assert page.stylesheets_applied() >= 2
    screenshot("admin-changelist")
    checkbox = f"input[name=_selected_action][value='{stuck.pk}']"
    browser.find_element(By.CSS_SELECTOR, checkbox).click()
    Select(browser.find_element(By.NAME, "action")).select_by_value("retry")
    browser.find_element(By.NAME, "index").click()
    # The action posts and redirects back: wait for the page it loads (a click does not wait
    # for the navigation it starts; CI once looked at the old page, which has no message list).
    messages = WebDriverWait(browser, 10).until(
        lambda driver: driver.find_elements(By.CSS_SELECTOR, ".messagelist")
    )
    assert "1 grant(s) queued again" in messages[0].text
    grants_deliver_due()  # what the run_grants worker does
    stuck.refresh_from_db()
    assert stuck.state == "sent"
    assert flash_peer.user_balance(user.flash_user_id) == 90

    # A manual grant: submitted twice (a double click, a resend), recorded and sent once.
    page.open("/admin/payments/creditgrant/")
    browser.find_element(By.ID, "manual-grant-link").click()
    browser.find_element(By.ID, "id_user").send_keys(user.email)
    browser.find_element(By.ID, "id_amount").send_keys("25")
    browser.find_element(By.ID, "id_reason").send_keys("Goodwill after the outage")
    screenshot("admin-manual-grant")
    form_url = browser.current_url
    request_key = browser.find_element(By.ID, "id_request_key").get_attribute("value")
    browser.find_element(By.ID, "grant-submit").click()
    WebDriverWait(browser, 10).until(lambda driver: driver.current_url != form_url)
    assert "recorded" in browser.find_element(By.CSS_SELECTOR, ".messagelist").text
    page.assert_clean()
    browser.get(form_url)  # the same form again, with the same request key
    browser.execute_script(
        "document.getElementById('id_request_key').value = arguments[0]", request_key
    )
    browser.find_element(By.ID, "id_user").send_keys(user.email)
    browser.find_element(By.ID, "id_amount").send_keys("25")
    browser.find_element(By.ID, "id_reason").send_keys("Goodwill after the outage")
    browser.find_element(By.ID, "grant-submit").click()
    WebDriverWait(browser, 10).until(lambda driver: driver.current_url != form_url)
    grants_deliver_due()
    grants_deliver_due()
    assert CreditGrant.objects.filter(source="manual").count() == 1
    assert flash_peer.user_balance(user.flash_user_id) == 115  # 50 + 40 + 25, each once
    screenshot("admin-grant")
