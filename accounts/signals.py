"""Signals other apps connect to, so accounts never imports them.

`user_deleted(sender=User, user=<User>)`
    Sent by `accounts.services.account_delete` inside its transaction, after the user's sessions
    are revoked and the row is anonymised (auth0_sub, username, email and name cleared; pk and
    flash_user_id stay). Receivers revoke what they own (API keys, subscriptions). A receiver that
    raises rolls the whole deletion back and the client sees the error, so nothing is
    half-deleted; network calls with an effect belong in `transaction.on_commit`.

`user_export(sender=User, user=<User>)` → each receiver returns `{"section_name": data}`
    Collected by `accounts.selectors.user_export` into `GET /api/v1/users/me/export`. Data must be
    JSON-serialisable (ISO strings for datetimes) and must never include secrets or digests.

`plan_terms(sender=User, plan=<catalogue key>)` → a receiver returns `{"hd_access": bool,
    "key_tier": str}` for a plan it knows, else None. The users admin asks it when staff set a
    plan by hand, so the plan's HD access and key tier come with it (payments answers from the
    catalogue; accounts never imports payments).

Connect receivers in the app's `AppConfig.ready()`, e.g.
`user_deleted.connect(on_user_deleted, dispatch_uid="apikeys.user_deleted")`.
"""

from __future__ import annotations

from django.dispatch import Signal

user_deleted = Signal()
user_export = Signal()
plan_terms = Signal()
