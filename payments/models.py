"""Payments: the credit-grant outbox, the Stripe webhook inbox, payments and Apple notifications.
(Past 400 lines: tables and their constraints only; each is one topic's, kept in Django's one
models module per app.)

dj-stripe mirrors Stripe's own objects (customers, subscriptions, invoices, events); these tables
hold what the gateway itself must remember to grant credits exactly once.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from alerts.models import EmailOutbox, EmailState


class GrantState(models.TextChoices):
    PENDING = "pending", "Pending"  # committed, not yet sent
    SENDING = "sending", "Sending"  # claimed by one worker
    SENT = "sent", "Sent"  # Flash applied it (answered, or found in its ledger)
    FAILED = "failed", "Failed"  # the last attempt failed; retried at next_attempt_at
    NEEDS_ATTENTION = "needs_attention", "Needs attention"  # no automatic retry; staff decide
    # Staff settled it by hand (confirmed in Flash, or no credits owed); it is never sent.
    RESOLVED = "resolved", "Resolved by staff"


class GrantSource(models.TextChoices):
    STRIPE = "stripe", "Stripe"
    APPLE = "apple", "Apple"
    MANUAL = "manual", "Manual"
    REFUND = "refund", "Refund of a failed generation"


class CreditGrant(models.Model):
    """One credit grant into Flash, committed before Flash is called (an outbox row).

    `key` is the idempotency key (`stripe:<invoice or payment>`, `apple:<transactionId>`,
    `manual:<uuid>`); it is also written into the Flash ledger description, which is how a send
    whose answer was lost is reconciled instead of resent.
    """

    key = models.CharField(max_length=255, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="credit_grants"
    )
    flash_user_id = models.CharField(max_length=64)
    amount = models.PositiveIntegerField()
    transaction_type = models.CharField(max_length=32)
    description = models.CharField(max_length=255)
    source = models.CharField(max_length=16, choices=GrantSource.choices)
    state = models.CharField(
        max_length=16, choices=GrantState.choices, default=GrantState.PENDING, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    # The last send may have reached Flash without us learning the result: reconcile first.
    outcome_unknown = models.BooleanField(default=False)
    last_error = models.TextField(blank=True, default="")
    sent_at = models.DateTimeField(null=True, blank=True)
    flash_balance_after = models.IntegerField(null=True, blank=True)
    stripe_event_id = models.CharField(max_length=255, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]
        constraints = [
            models.CheckConstraint(condition=models.Q(amount__gt=0), name="grant_amount_positive")
        ]

    def __str__(self) -> str:
        return f"{self.key} ({self.amount} cr, {self.state})"

    @property
    def ledger_marker(self) -> str:
        """The text that identifies this grant in Flash's ledger descriptions."""
        return f"[grant:{self.key}]"


class EventState(models.TextChoices):
    RECEIVED = "received", "Received"  # stored; mirror/plan work not done yet
    PROCESSED = "processed", "Processed"
    NEEDS_ATTENTION = "needs_attention", "Needs attention"


class StripeWebhookEvent(models.Model):
    """The verified body of one Stripe event, stored once (the inbox).

    Stored in the same transaction as the grants it implies; the dj-stripe mirror and plan changes
    run afterwards and are retried from this row, so a Stripe API outage never loses an event.
    """

    stripe_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=128, db_index=True)
    livemode = models.BooleanField(default=False)
    payload = models.JSONField()
    state = models.CharField(
        max_length=16, choices=EventState.choices, default=EventState.RECEIVED, db_index=True
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True, default="")
    # False while what the event means (its grant) waits for the catalogue to know its price.
    recorded = models.BooleanField(default=True)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_id}"


class PaymentProvider(models.TextChoices):
    STRIPE = "stripe", "Stripe"
    APPLE = "apple", "Apple"


class Payment(models.Model):
    """A confirmed payment, with refunds and disputes recorded for staff (never auto-clawed)."""

    provider = models.CharField(max_length=16, choices=PaymentProvider.choices)
    reference = models.CharField(max_length=255, unique=True)  # same value as the grant key
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="payments",
    )
    product = models.CharField(max_length=128, blank=True, default="")
    amount_cents = models.IntegerField(default=0)
    currency = models.CharField(max_length=8, blank=True, default="")
    stripe_payment_intent = models.CharField(max_length=255, blank=True, default="", db_index=True)
    stripe_invoice = models.CharField(max_length=255, blank=True, default="", db_index=True)
    stripe_charge = models.CharField(max_length=255, blank=True, default="", db_index=True)
    grant = models.ForeignKey(
        CreditGrant, on_delete=models.SET_NULL, null=True, blank=True, related_name="payments"
    )
    # Stripe reports the cumulative refunded amount; we keep the largest seen (events may reorder).
    amount_refunded_cents = models.IntegerField(default=0)
    refunded_at = models.DateTimeField(null=True, blank=True)
    disputed = models.BooleanField(default=False)
    dispute_reason = models.CharField(max_length=128, blank=True, default="")
    needs_review = models.BooleanField(default=False, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.reference

    @property
    def status(self) -> str:
        if self.disputed:
            return "disputed"
        if self.amount_refunded_cents and self.amount_refunded_cents >= self.amount_cents:
            return "refunded"
        if self.amount_refunded_cents:
            return "partially_refunded"
        return "paid"


class AppleNotification(models.Model):
    """One App Store Server Notification v2, stored once by its notificationUUID."""

    notification_uuid = models.CharField(max_length=64, unique=True)
    type = models.CharField(max_length=64)
    subtype = models.CharField(max_length=64, blank=True, default="")
    transaction_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    payload = models.JSONField(default=dict)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-received_at"]

    def __str__(self) -> str:
        return f"{self.type} {self.notification_uuid}"


class AppleAccountToken(models.Model):
    """The UUID the app sets as `appAccountToken` on each purchase this user makes: a
    transaction carrying it can only be credited to this user (`payments.apple_tokens`)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="apple_account_token"
    )
    token = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.user_id}: {self.token}"


# --- The catalogue (from Stripe's products and prices) and what subscribers bought


class CatalogueKind(models.TextChoices):
    PLAN = "plan", "Plan (monthly)"
    PACK = "pack", "Credit pack"


class CatalogueItem(models.Model):
    """One Stripe price as the gateway reads it: the terms its `tp_*` metadata gives, or why it
    is refused (`problems`). Rebuilt from dj-stripe's mirror by `payments.catalogue`, never
    edited here: billing people change prices in Stripe."""

    stripe_price_id = models.CharField(max_length=255, unique=True)
    stripe_product_id = models.CharField(max_length=255, blank=True, default="")
    kind = models.CharField(max_length=8, choices=CatalogueKind.choices, blank=True, default="")
    key = models.CharField(max_length=64, blank=True, default="", db_index=True)
    name = models.CharField(max_length=255, blank=True, default="")
    unit_amount = models.IntegerField(null=True, blank=True)  # cents
    currency = models.CharField(max_length=8, blank=True, default="")
    credits = models.PositiveIntegerField(default=0)  # a plan's monthly credits, a pack's credits
    hd_access = models.BooleanField(default=False)
    key_tier = models.CharField(max_length=16, blank=True, default="free")
    display_order = models.IntegerField(default=0)
    visible = models.BooleanField(default=True)
    active = models.BooleanField(default=False)  # the price and its product are active in Stripe
    # The price sold under its key now (the newest valid, active, visible one); older ones stay
    # here for the subscribers and purchases made at them.
    current = models.BooleanField(default=False)
    problems = models.JSONField(default=list, blank=True)  # empty: valid
    price_created = models.DateTimeField(null=True, blank=True)
    refreshed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["kind", "display_order", "unit_amount", "stripe_price_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "key"],
                condition=models.Q(current=True),
                name="catalogue_one_current_price_per_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind or '?'} {self.key or '?'} ({self.stripe_price_id})"

    @property
    def on_sale(self) -> bool:
        return not self.problems and self.active and self.visible and self.current


class PlanSubscription(models.Model):
    """What a subscriber bought, one row per Stripe subscription: the plan, price and terms in
    force (monthly credits, HD access, key tier). The terms are copied when the plan takes effect
    and kept until the subscriber changes plan, whatever the catalogue says later
    (grandfathering)."""

    stripe_subscription_id = models.CharField(max_length=255, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="plan_subscriptions"
    )
    plan = models.CharField(max_length=64, db_index=True)
    stripe_price_id = models.CharField(max_length=255, db_index=True)
    monthly_credits = models.PositiveIntegerField(default=0)
    hd_access = models.BooleanField(default=False)
    key_tier = models.CharField(max_length=16, default="free")
    unit_amount = models.IntegerField(null=True, blank=True)
    currency = models.CharField(max_length=8, blank=True, default="")
    status = models.CharField(max_length=32, blank=True, default="")  # Stripe's
    cancel_at_period_end = models.BooleanField(default=False)
    current_period_end = models.DateTimeField(null=True, blank=True)
    terms_since = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.stripe_subscription_id} ({self.plan} at {self.stripe_price_id})"


class PlanChangeKind(models.TextChoices):
    UPGRADE = "upgrade", "Upgrade (now, prorated)"
    DOWNGRADE = "downgrade", "Downgrade (at period end)"


class PlanChangeState(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    APPLIED = "applied", "Applied"
    CANCELLED = "cancelled", "Cancelled"


class PlanChange(models.Model):
    """One change of a subscription's plan and the terms on both sides, recorded before Stripe
    is asked for it: an upgrade's prorated credits are granted from these terms when its invoice
    is paid; a downgrade waits here until the period it was asked in has ended."""

    subscription = models.ForeignKey(
        PlanSubscription, on_delete=models.CASCADE, related_name="changes"
    )
    kind = models.CharField(max_length=16, choices=PlanChangeKind.choices)
    state = models.CharField(
        max_length=16, choices=PlanChangeState.choices, default=PlanChangeState.SCHEDULED
    )
    from_plan = models.CharField(max_length=64)
    from_price = models.CharField(max_length=255)
    from_monthly_credits = models.PositiveIntegerField()
    to_plan = models.CharField(max_length=64)
    to_price = models.CharField(max_length=255)
    to_monthly_credits = models.PositiveIntegerField()
    to_hd_access = models.BooleanField(default=False)
    to_key_tier = models.CharField(max_length=16, default="free")
    to_unit_amount = models.IntegerField(null=True, blank=True)
    to_currency = models.CharField(max_length=8, blank=True, default="")
    effective_at = models.DateTimeField()
    applied_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["subscription"],
                condition=models.Q(state="scheduled"),
                name="plan_change_one_scheduled_per_subscription",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.from_plan} → {self.to_plan} ({self.state})"


# --- Auto-recharge: buy a credit pack with the saved card when the balance falls low


class AutoRecharge(models.Model):
    """A user's auto-recharge rule: when their Flash balance falls below `threshold`, buy `pack`
    with the card saved on their Stripe customer, at most `daily_cap` times in 24 hours.

    The gateway turns it off when a recharge is declined or needs the customer to authenticate
    (`failure_*` say why, until the user turns it on again)."""

    MAX_THRESHOLD = 10_000_000
    MAX_DAILY_CAP = 10

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="auto_recharge"
    )
    enabled = models.BooleanField(default=False)
    threshold = models.PositiveIntegerField(help_text="Credits.")
    pack = models.CharField(max_length=64, help_text="The credit pack bought (its catalogue key).")
    daily_cap = models.PositiveSmallIntegerField(default=2, help_text="Recharges per 24 hours.")
    # The card recharges are charged to, as Stripe last described it (shown in the portal).
    card_brand = models.CharField(max_length=32, blank=True, default="")
    card_last4 = models.CharField(max_length=4, blank=True, default="")
    failure_code = models.CharField(max_length=64, blank=True, default="")
    failure_message = models.CharField(max_length=255, blank=True, default="")
    failed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "auto-recharge"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(threshold__gt=0, daily_cap__gt=0),
                name="auto_recharge_positive",
            )
        ]

    def __str__(self) -> str:
        state = "on" if self.enabled else "off"
        return f"{self.user_id}: {self.pack} below {self.threshold} ({state})"


class RechargeState(models.TextChoices):
    PENDING = "pending", "Pending"  # recorded with the fall that caused it; not charged yet
    CHARGING = "charging", "Charging"  # claimed by one worker, which is asking Stripe
    RETRYING = "retrying", "Retrying"  # Stripe gave no usable answer: asked again (same key)
    PAID = "paid", "Paid"  # Stripe took the payment; the credits come with its webhook
    SUCCEEDED = "succeeded", "Succeeded"  # payment_intent.succeeded: the grant is recorded
    FAILED = "failed", "Failed"  # declined, or authentication required: auto-recharge turned off
    SKIPPED = "skipped", "Skipped"  # the daily cap was reached: nothing charged
    NEEDS_ATTENTION = "needs_attention", "Needs attention"  # no answer in time: staff decide


# Recharges that count against the daily cap: charged, or on their way to it.
RECHARGE_COUNTED_STATES = (
    RechargeState.PENDING,
    RechargeState.CHARGING,
    RechargeState.RETRYING,
    RechargeState.PAID,
    RechargeState.SUCCEEDED,
    RechargeState.NEEDS_ATTENTION,
)


class Recharge(EmailOutbox):
    """One automatic recharge, recorded (keyed by the balance crossing that caused it) before
    Stripe is called. Its PaymentIntent is created with the idempotency key `idempotency_key`,
    made from this row, with the amount and card stored here first: two workers, or a retry after
    a lost answer, send the same request and Stripe makes one charge. The credits are granted
    from `payment_intent.succeeded` through the grant outbox, keyed `stripe:<payment intent>`.
    A failed one owes its user an email (the outbox fields, `alerts.models.EmailOutbox`)."""

    key = models.CharField(max_length=128, unique=True)
    public_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="recharges"
    )
    pack = models.CharField(max_length=64)
    credits = models.PositiveIntegerField()
    threshold = models.PositiveIntegerField()
    balance = models.IntegerField(help_text="The balance that fell below the threshold.")
    state = models.CharField(
        max_length=16, choices=RechargeState.choices, default=RechargeState.PENDING, db_index=True
    )
    # What the PaymentIntent is created with, stored before the first call (retries repeat it):
    # the pack's price as the catalogue sold it when the balance fell, and the card.
    stripe_price_id = models.CharField(max_length=255, blank=True, default="")
    amount_cents = models.PositiveIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=8, blank=True, default="")
    stripe_customer = models.CharField(max_length=255, blank=True, default="")
    payment_method = models.CharField(max_length=255, blank=True, default="")
    stripe_payment_intent = models.CharField(max_length=255, blank=True, default="", db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_at = models.DateTimeField(null=True, blank=True)
    failure_code = models.CharField(max_length=64, blank=True, default="")
    failure_message = models.CharField(max_length=255, blank=True, default="")
    last_error = models.TextField(blank=True, default="")
    grant = models.ForeignKey(
        CreditGrant, on_delete=models.SET_NULL, null=True, blank=True, related_name="recharges"
    )
    # Only a failed recharge emails (`recharge_failed` queues it).
    email_state = models.CharField(
        max_length=16, choices=EmailState.choices, default=EmailState.NONE, db_index=True
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.key} ({self.pack}, {self.state})"

    @property
    def message_id(self) -> str:
        return f"<recharge-{self.public_id}@timepoint-billing>"

    @property
    def idempotency_key(self) -> str:
        """Stripe's Idempotency-Key for this recharge's PaymentIntent. A UUID, so two databases
        (staging, a restore) sharing a Stripe account never collide within Stripe's 24 hours."""
        return f"tp-recharge-{self.public_id}"
