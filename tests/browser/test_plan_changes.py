"""The portal's plan pages in a real browser against the production server, the worker and the
Stripe-compatible server delivering its webhooks: subscribe (Stripe's pay page is the local
server's), upgrade now, downgrade at period end and keep the plan after all, cancel at period end
and resume. No failed request, no console error; screenshots in test-artifacts/."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("selenium", reason="browser tests need Selenium (requirements-dev.txt)")
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as expected
from selenium.webdriver.support.ui import WebDriverWait

from payments.tests import factories as f
from tests.browser.conftest import Page
from tests.reliability.conftest import ROOT, subprocess_env, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def stripe_for_site(stripe_api: Any, catalogue: Any, settings: Any) -> Any:
    """The Stripe-compatible server with its pay page, its webhooks signed for the site."""
    settings.STRIPE_SECRET_KEY = "sk_test_51GatewayTestKey0000000000000000"
    settings.STRIPE_WEBHOOK_SECRET = f.WEBHOOK_SECRET
    stripe_api.public_url = settings.STRIPE_API_BASE
    return stripe_api


@pytest.fixture
def worker(stripe_for_site: Any, site: Any, settings: Any) -> Iterator[None]:
    stripe_for_site.deliver_to(f"{site.url}/api/v1/billing/webhooks/stripe", f.WEBHOOK_SECRET)
    process = subprocess.Popen(
        [sys.executable, "manage.py", "run_grants", "--sleep", "0.2"],
        cwd=ROOT,
        env=subprocess_env(
            DATABASE_URL=site.database_url,
            REDIS_URL="",
            SECRET_KEY=settings.SECRET_KEY,
            FLASH_URL=settings.FLASH_URL,
            FLASH_SERVICE_KEY=settings.FLASH_SERVICE_KEY,
            FLASH_ADMIN_KEY=settings.FLASH_ADMIN_KEY,
            FLASH_GATEWAY_SIGNING_SECRET=settings.FLASH_GATEWAY_SIGNING_SECRET,
            STRIPE_API_BASE=settings.STRIPE_API_BASE,
            STRIPE_SECRET_KEY=settings.STRIPE_SECRET_KEY,
            STRIPE_WEBHOOK_SECRET=f.WEBHOOK_SECRET,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield
    process.terminate()
    process.wait(10)


def _wait(driver: Any, css: str) -> Any:
    return WebDriverWait(driver, 20).until(
        expected.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def _plan_text(browser: Any) -> str:
    return str(browser.find_element(By.ID, "current-plan").text)


def test_subscribe_upgrade_downgrade_keep_cancel_and_resume_in_the_portal(
    stripe_for_site: Any,
    flash_peer: Any,
    site: Any,
    worker: None,
    browser: Any,
    page: Page,
    screenshot: Any,
) -> None:
    stripe = stripe_for_site
    page.local_sign_in("planner@example.com", "Planner")

    page.open("/portal/billing/")
    screenshot("portal-plans-offered")
    browser.find_element(By.CSS_SELECTOR, "button[data-product='plan:historian']").click()
    WebDriverWait(browser, 10).until(lambda driver: "/checkout/" in driver.current_url)
    assert "Historian" in browser.page_source  # the local server's pay page
    sessions = [o for o in stripe.objects.values() if o.get("object") == "checkout.session"]
    stripe.checkout_complete(sessions[0]["id"])  # paid on Stripe's side

    def on(plan: str) -> bool:
        page.open("/portal/billing/")
        found = browser.find_elements(By.ID, "current-plan")
        return bool(found) and f"You are on {plan}:" in found[0].text

    def balance() -> int:
        return int(browser.find_element(By.ID, "balance").text)

    # The plan at once; its 200 credits as soon as the worker has sent the grant.
    wait_for(lambda: on("Historian") and balance() == 250, timeout=30, interval=0.5)
    screenshot("portal-plan-subscribed")

    browser.find_element(By.CSS_SELECTOR, "button[data-plan='api_pro']").click()
    _wait(browser, "#current-plan")
    page.assert_clean()
    assert "You are on API Pro:" in _plan_text(browser) and "Pro API limits" in _plan_text(browser)
    wait_for(lambda: on("API Pro") and balance() > 250, timeout=30, interval=0.5)
    screenshot("portal-plan-upgraded")

    browser.find_element(By.CSS_SELECTOR, "button[data-plan='explorer']").click()
    scheduled = _wait(browser, "#scheduled-change")
    assert "you move to Explorer" in scheduled.text and "You are on API Pro:" in _plan_text(browser)
    screenshot("portal-plan-downgrade-scheduled")
    browser.find_element(By.ID, "keep-plan").click()
    _wait(browser, "#current-plan")
    assert not browser.find_elements(By.ID, "scheduled-change")

    browser.find_element(By.ID, "cancel-plan").click()
    _wait(browser, "#resume")
    assert "It ends on" in _plan_text(browser)
    screenshot("portal-plan-ending")
    browser.find_element(By.ID, "resume").click()
    _wait(browser, "#cancel-plan")
    assert "It renews on" in _plan_text(browser)
    page.assert_clean()
