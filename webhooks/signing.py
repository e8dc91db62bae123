"""Signing secrets and signatures, the way Stripe signs its webhooks.

Each delivery carries `Timepoint-Signature: t=<unix seconds>,v1=<hex>`, where the hex is
HMAC-SHA256(secret, "<t>.<raw body>"). While a rotated-out secret is still in its overlap, a
second `v1=` signed with it follows the first, so a receiver that still has the old secret keeps
verifying (any one matching `v1` is enough). A receiver checks the signature over the exact bytes
it received and refuses a `t` too far from its clock (Stripe's libraries use 5 minutes).

Secrets are kept encrypted at rest with Fernet (the `cryptography` library), under a key derived
from WEBHOOK_SECRET_KEY (default SECRET_KEY): a copy of the database alone signs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from functools import lru_cache
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

# cryptography is imported where a secret is encrypted or decrypted, not here: its native library
# is ~9 MB in every gateway worker, and this module is loaded at startup (webhooks.services) while
# only the endpoint routes and the delivery worker touch a secret (issue 17).

SECRET_PREFIX = "whsec_"
SIGNATURE_HEADER = "Timepoint-Signature"
SCHEME = "v1"


class SecretUnreadable(Exception):
    """The stored secret does not decrypt: WEBHOOK_SECRET_KEY changed since it was made."""


def secret_generate() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_display_prefix(secret: str) -> str:
    """`whsec_AbCd` — enough to tell two secrets apart in a list, useless for signing."""
    return secret[: len(SECRET_PREFIX) + 4]


@lru_cache(maxsize=4)
def _fernet(key_material: str) -> Fernet:
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"timepoint-billing webhook signing secrets",
    ).derive(key_material.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def secret_encrypt(secret: str) -> str:
    return _fernet(settings.WEBHOOK_SECRET_KEY).encrypt(secret.encode()).decode()


def secret_decrypt(token: str) -> str:
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(settings.WEBHOOK_SECRET_KEY).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable("The endpoint's signing secret cannot be decrypted.")


def signature(secret: str, timestamp: int, body: bytes) -> str:
    signed = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secrets_: list[str], timestamp: int, body: bytes) -> str:
    """`t=<timestamp>,v1=<sig>[,v1=<sig>…]`, one `v1` per secret (the current one first)."""
    parts = [f"t={timestamp}"]
    parts += [f"{SCHEME}={signature(secret, timestamp, body)}" for secret in secrets_]
    return ",".join(parts)
