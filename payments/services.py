"""The payments app's service surface: what other apps, the admin, the API and the commands call
to change payments state. Each topic lives in its own module:

- `grants`: the exactly-once credit-grant outbox and its delivery to Flash;
- `worker`: nudging the `run_grants` worker, and the retry policy of both outboxes;
- `checkout`: Stripe Checkout (packs, plans) and the billing portal;
- `stripe_events` / `stripe_records`: Stripe webhooks, and what each event records (grants,
  payments, refunds, disputes);
- `apple`: App Store transactions and server notifications;
- `catalogue`: plans and packs from Stripe's products and prices (their `tp_*` metadata);
- `plans`: what each subscriber bought (grandfathered terms), plan changes (upgrade with
  proration, downgrade at period end), cancel and resume, and the plan each user holds;
- `recharge`: auto-recharge (the rule, a recharge per fall below its threshold, the off-session
  payment and its outcome).
"""

from payments.apple import apple_notification_receive, apple_transaction_verify
from payments.catalogue import catalogue_refresh, catalogue_sync
from payments.checkout import billing_portal_create, checkout_create
from payments.grants import (
    grant_create,
    grant_deliver,
    grant_manual,
    grant_resolve,
    grant_retry,
    grants_deliver_due,
)
from payments.plan_changes import plan_change, subscription_cancel, subscription_resume
from payments.plans import (
    on_user_deleted,
    plan_changes_apply_due,
    plan_sync_for_customer,
    plan_terms_for_staff,
    user_plan_set,
)
from payments.recharge import (
    recharge_emails_send_due,
    recharge_on_crossing,
    recharge_record,
    recharge_rule_set,
    recharge_rule_turn_off,
    recharges_charge_due,
)
from payments.stripe_events import (
    STRIPE_WEBHOOK_EVENTS,
    stripe_event_retry,
    stripe_events_process_due,
    stripe_webhook_receive,
)
from payments.worker import WORKER_WAKE_KEY, worker_nudge, worker_wait

__all__ = [
    "STRIPE_WEBHOOK_EVENTS",
    "WORKER_WAKE_KEY",
    "apple_notification_receive",
    "apple_transaction_verify",
    "billing_portal_create",
    "catalogue_refresh",
    "catalogue_sync",
    "checkout_create",
    "grant_create",
    "grant_deliver",
    "grant_manual",
    "grant_resolve",
    "grant_retry",
    "grants_deliver_due",
    "on_user_deleted",
    "plan_change",
    "plan_changes_apply_due",
    "plan_sync_for_customer",
    "plan_terms_for_staff",
    "recharge_emails_send_due",
    "recharge_on_crossing",
    "recharge_record",
    "recharge_rule_set",
    "recharge_rule_turn_off",
    "recharges_charge_due",
    "stripe_event_retry",
    "stripe_events_process_due",
    "stripe_webhook_receive",
    "subscription_cancel",
    "subscription_resume",
    "user_plan_set",
    "worker_nudge",
    "worker_wait",
]
