"""Binding App Store purchases to the account that made them (`appAccountToken`).

Apple lets the app attach a UUID of its choosing to a purchase (`appAccountToken`), and signs it
into the transaction. The gateway gives each user one stable UUID (`GET
/api/v1/billing/apple/account-token`); the app sets it on every purchase. Then:

- a transaction carrying this user's token is credited to this user;
- a transaction carrying another user's token is refused (409 `apple_account_mismatch`) and logged
  for staff, whoever presents it first: a leaked or shared signed transaction cannot be redeemed
  by another account;
- a transaction carrying no token (an app version that does not set it, or a purchase made
  before the binding existed) keeps the first-come rule: the first account that presents it is
  credited, any other gets 409 `transaction_already_claimed`.
"""

from __future__ import annotations

import logging
import uuid

from accounts.models import User
from payments.models import AppleAccountToken
from timepoint_billing.errors import Conflict

logger = logging.getLogger("timepoint.payments")


def apple_account_token(*, user: User) -> uuid.UUID:
    """This user's `appAccountToken`, made on first use and never changed."""
    record, _ = AppleAccountToken.objects.get_or_create(user=user)
    return record.token


def apple_token_check(*, user: User, app_account_token: str | None, transaction_id: str) -> None:
    """Refuse a transaction bound to another account (409, logged for staff)."""
    if not app_account_token:
        return  # first-come rule (module docstring)
    try:
        token = uuid.UUID(str(app_account_token))
    except ValueError:
        token = None
    if token is not None and token == apple_account_token(user=user):
        return
    owner = (
        AppleAccountToken.objects.filter(token=token).values_list("user_id", flat=True).first()
        if token is not None
        else None
    )
    logger.warning(
        {
            "event": "apple_transaction_wrong_account",
            "transaction": transaction_id,
            "presented_by": user.pk,
            "token_owner": owner,
            "staff": "review: a purchase bound to another account was presented",
        }
    )
    raise Conflict("This purchase was made by another account.", code="apple_account_mismatch")
