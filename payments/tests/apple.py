"""A certificate chain with Apple's OIDs, made by the test, and JWS signed by its leaf
(ES256 + x5c), the way app-store-server-library's own tests build signed data."""

from __future__ import annotations

import base64
import datetime
import time
import uuid
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LEAF_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.11.1")
INTERMEDIATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.2.1")
DER_NULL = b"\x05\x00"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(
    *,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
    oid: x509.ObjectIdentifier | None,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if oid is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, DER_NULL), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


class AppleChain:
    """Root → intermediate (Apple WWDR OID) → leaf (App Store signing OID)."""

    def __init__(self, *, leaf_expired: bool = False) -> None:
        now = datetime.datetime.now(datetime.UTC)
        start, end = now - datetime.timedelta(days=30), now + datetime.timedelta(days=365)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate_key = ec.generate_private_key(ec.SECP256R1())
        self.leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert(
            subject="Test Apple Root CA",
            key=self.root_key,
            issuer="Test Apple Root CA",
            issuer_key=self.root_key,
            ca=True,
            oid=None,
            not_before=start,
            not_after=end,
        )
        self.intermediate = _cert(
            subject="Test Apple WWDR CA",
            key=self.intermediate_key,
            issuer="Test Apple Root CA",
            issuer_key=self.root_key,
            ca=True,
            oid=INTERMEDIATE_OID,
            not_before=start,
            not_after=end,
        )
        leaf_end = now - datetime.timedelta(days=1) if leaf_expired else end
        self.leaf = _cert(
            subject="Test App Store Signing",
            key=self.leaf_key,
            issuer="Test Apple WWDR CA",
            issuer_key=self.intermediate_key,
            ca=False,
            oid=LEAF_OID,
            not_before=start,
            not_after=leaf_end,
        )

    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    def sign(self, payload: dict[str, Any]) -> str:
        x5c = [
            base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
            for cert in (self.leaf, self.intermediate, self.root)
        ]
        return jwt.encode(payload, self.leaf_key, algorithm="ES256", headers={"x5c": x5c})

    def transaction(self, **overrides: Any) -> str:
        now_ms = int(time.time() * 1000)
        payload = {
            "transactionId": "2000000" + uuid.uuid4().hex[:9],
            "originalTransactionId": "2000000000000001",
            "bundleId": "com.timepointai.app",
            "productId": "com.timepointai.credits100",
            "purchaseDate": now_ms,
            "originalPurchaseDate": now_ms,
            "signedDate": now_ms,
            "quantity": 1,
            "type": "Consumable",
            "inAppOwnershipType": "PURCHASED",
            "environment": "Sandbox",
            "storefront": "USA",
            "currency": "USD",
            "price": 4990,
            "transactionReason": "PURCHASE",
        }
        payload.update(overrides)
        return self.sign(payload)

    def notification(self, kind: str, signed_transaction: str, **data: Any) -> str:
        return self.sign(
            {
                "notificationType": kind,
                "notificationUUID": str(uuid.uuid4()),
                "version": "2.0",
                "signedDate": int(time.time() * 1000),
                "data": {
                    "bundleId": "com.timepointai.app",
                    "environment": "Sandbox",
                    "signedTransactionInfo": signed_transaction,
                    **data,
                },
            }
        )
