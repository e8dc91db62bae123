"""Apple in-app purchases: verify App Store signed transactions (a grant once per transaction, to
its buyer: `apple_tokens`) and store App Store Server Notifications (refunds for staff)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from payments.apple_tokens import apple_token_check
from payments.grants import grant_create
from payments.models import AppleNotification, CreditGrant, GrantSource, Payment, PaymentProvider
from timepoint_billing.errors import BadRequest, Conflict, ServiceUnavailable
from timepoint_billing.metrics import WEBHOOK_LAG
from webhooks import services as webhooks

logger = logging.getLogger("timepoint.payments")

# Apple's library is imported where a purchase is verified, not at the top: it loads pyOpenSSL,
# cryptography's native library and cattrs (~8 MB together in every gateway worker), and this
# module is loaded at startup (payments.services) while only the two Apple routes use it (issue 17).


def apple_verifier() -> Any:
    """Apple's SignedDataVerifier for our app. The Xcode and LocalTesting environments skip
    signature checks, so they are refused outright."""
    from appstoreserverlibrary.models.Environment import Environment
    from appstoreserverlibrary.signed_data_verifier import SignedDataVerifier

    # A configuration mistake: 503 for every caller until a deploy fixes it, never a 500.
    unconfigured = ServiceUnavailable(
        "In-app purchases are not configured.", code="apple_unconfigured", retry_after=3600
    )
    allowed = {"Production": Environment.PRODUCTION, "Sandbox": Environment.SANDBOX}
    environment = allowed.get(settings.APPLE_ENVIRONMENT)
    if environment is None:
        logger.error({"event": "apple_environment_refused", "env": settings.APPLE_ENVIRONMENT})
        raise unconfigured
    try:
        roots = [Path(path).read_bytes() for path in settings.APPLE_ROOT_CERT_PATHS]
    except OSError as exc:
        logger.error({"event": "apple_root_unreadable", "error": str(exc)})
        raise unconfigured from exc
    if not roots:
        raise unconfigured
    try:
        return SignedDataVerifier(
            roots,
            settings.APPLE_ENABLE_ONLINE_CHECKS,
            environment,
            settings.APPLE_BUNDLE_ID,
            settings.APPLE_APP_APPLE_ID or None,
        )
    except ValueError as exc:
        # Production without APPLE_APP_APPLE_ID, for one.
        logger.error({"event": "apple_verifier_refused", "error": str(exc)})
        raise unconfigured from exc


def _apple_decode(decode: Callable[[str], Any], signed: str) -> Any:
    from appstoreserverlibrary.signed_data_verifier import VerificationException

    try:
        return decode(signed)
    except VerificationException as exc:
        raise BadRequest(
            f"The signed data did not verify ({exc.status.name.lower()}).",
            code="invalid_apple_signature",
        )


def apple_transaction_verify(*, user: User, signed_transaction: str) -> CreditGrant:
    """Verify an App Store signed transaction and grant its product's credits once, to the
    account its `appAccountToken` names, or without one to the first user who presents it
    (another user → 409; `payments.apple_tokens`)."""
    verifier = apple_verifier()
    transaction_info = _apple_decode(
        verifier.verify_and_decode_signed_transaction, signed_transaction
    )
    transaction_id = str(transaction_info.transactionId or "")
    product_id = str(transaction_info.productId or "")
    if not transaction_id:
        raise BadRequest("The transaction has no id.", code="invalid_apple_transaction")
    if transaction_info.revocationDate:
        raise BadRequest("This purchase was refunded or revoked.", code="apple_revoked")
    apple_token_check(
        user=user,
        app_account_token=transaction_info.appAccountToken,
        transaction_id=transaction_id,
    )
    credits = settings.APPLE_PRODUCT_CREDITS.get(product_id)
    if not credits:
        raise BadRequest(f"Unknown product {product_id!r}.", code="unknown_product")
    key = f"apple:{transaction_id}"
    with transaction.atomic():
        payment, _ = Payment.objects.get_or_create(
            reference=key,
            defaults={
                "provider": PaymentProvider.APPLE,
                "user": user,
                "product": product_id,
                "amount_cents": int((transaction_info.price or 0) // 10),  # milliunits → cents
                "currency": str(transaction_info.currency or ""),
            },
        )
        if payment.user_id != user.pk:
            raise Conflict(
                "This purchase belongs to another account.", code="transaction_already_claimed"
            )
        grant, _ = grant_create(
            key=key,
            user=user,
            amount=credits,
            transaction_type="apple_iap",
            label=f"App Store {product_id}",
            source=GrantSource.APPLE,
        )
        if payment.grant_id is None:
            Payment.objects.filter(pk=payment.pk).update(grant=grant)
    return grant


def apple_notification_receive(*, signed_payload: str) -> bool:
    """Store an App Store Server Notification v2 once; refunds are recorded for staff.
    Returns True when it was new."""
    verifier = apple_verifier()
    notification = _apple_decode(verifier.verify_and_decode_notification, signed_payload)
    transaction_id = ""
    signed_info = getattr(notification.data, "signedTransactionInfo", None)
    if signed_info:
        info = _apple_decode(verifier.verify_and_decode_signed_transaction, signed_info)
        transaction_id = str(info.transactionId or "")
    kind = str(notification.rawNotificationType or notification.notificationType or "")
    with transaction.atomic():
        _, created = AppleNotification.objects.get_or_create(
            notification_uuid=str(notification.notificationUUID),
            defaults={
                "type": kind,
                "subtype": str(notification.rawSubtype or ""),
                "transaction_id": transaction_id,
                "payload": {"signedPayload": signed_payload},
            },
        )
        signed_ms = getattr(notification, "signedDate", None)
        if created and isinstance(signed_ms, int | float):
            WEBHOOK_LAG.labels("apple", "received").observe(
                max(0.0, time.time() - float(signed_ms) / 1000)
            )
        # REFUND: Apple refunded the buyer; REVOKE: Family Sharing access was taken back.
        if created and kind in ("REFUND", "REVOKE") and transaction_id:
            payment = Payment.objects.filter(reference=f"apple:{transaction_id}").first()
            if payment is not None:
                payment.amount_refunded_cents = payment.amount_cents
                payment.refunded_at = timezone.now()
                payment.needs_review = True
                payment.save(
                    update_fields=[
                        "amount_refunded_cents",
                        "refunded_at",
                        "needs_review",
                        "updated_at",
                    ]
                )
                webhooks.payment_refunded(payment=payment)
    return created
