"""The catalogue: what can be bought is what Stripe sells, read from its products and prices.

Billing people edit products and prices in Stripe; dj-stripe mirrors them here (`product.*` and
`price.*` webhooks, `manage.py catalogue_sync`, and the worker's periodic sync), and
`catalogue_refresh` turns each mirrored price into a `CatalogueItem`: the terms its metadata gives,
or the reasons it is refused. A refused price is never sold, and staff see why in the admin.

The gateway's terms live in `tp_*` metadata, on the price or on its product (the price's value
wins, so a product can say what all its prices share):

| key | on | meaning |
|---|---|---|
| `tp_plan` | monthly price | the plan's catalogue key (`[a-z0-9_]`, up to 64; not `free`) |
| `tp_pack` | one-time price | the credit pack's catalogue key |
| `tp_monthly_credits` | plan | credits granted each paid month (1 … 1 000 000) |
| `tp_credits` | pack | credits granted once (1 … 1 000 000) |
| `tp_hd_access` | plan | `true` / `false` (default `false`) |
| `tp_key_tier` | plan | `free` / `pro`: the tier of the subscriber's API keys (default `free`) |
| `tp_order` | both | display order, smallest first (default 0) |
| `tp_visible` | both | `false` keeps the price off sale (default `true`) |

Several valid prices under one key: the newest active, visible one is sold; the others stay
known, for the subscribers and purchases made at them. A key seen for the first time works at
once: users, keys and usage name a plan by its key, so a new plan needs no migration.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import stripe
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from djstripe.models import Price, Product

from accounts.models import FREE_PLAN, Tier
from payments import stripe_client
from payments.models import CatalogueItem, CatalogueKind
from timepoint_billing.errors import ApiError

logger = logging.getLogger("timepoint.payments")

KNOWN_KEYS = frozenset(
    {
        "tp_plan",
        "tp_pack",
        "tp_monthly_credits",
        "tp_credits",
        "tp_hd_access",
        "tp_key_tier",
        "tp_order",
        "tp_visible",
    }
)
KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]{0,63}$")
MAX_CREDITS = 1_000_000
SELLABLE_TIERS = (Tier.FREE, Tier.PRO)  # enterprise is a deal staff set, never sold


@dataclass(frozen=True)
class PlanTerms:
    """What a plan gives a subscriber, as of the price it was bought at."""

    plan: str
    price_id: str
    monthly_credits: int
    hd_access: bool
    key_tier: str
    unit_amount: int | None = None
    currency: str = ""
    name: str = ""

    @classmethod
    def of_item(cls, item: CatalogueItem) -> PlanTerms:
        return cls(
            plan=item.key,
            price_id=item.stripe_price_id,
            monthly_credits=item.credits,
            hd_access=item.hd_access,
            key_tier=item.key_tier,
            unit_amount=item.unit_amount,
            currency=item.currency,
            name=item.name,
        )

    def rank(self) -> tuple[int, int]:
        """Plans compare by monthly credits, then price: more is an upgrade."""
        return self.monthly_credits, self.unit_amount or 0


FREE_TERMS = PlanTerms(
    plan=FREE_PLAN, price_id="", monthly_credits=0, hd_access=False, key_tier=Tier.FREE, name="Free"
)


def _flag(value: str, name: str, problems: list[str], default: bool) -> bool:
    if value == "":
        return default
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    problems.append(f"{name} must be true or false, not {value!r}")
    return default


def _number(value: str, name: str, problems: list[str], low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        problems.append(f"{name} must be a whole number, not {value!r}")
        return 0
    if not low <= number <= high:
        problems.append(f"{name} must be between {low} and {high}, not {number}")
        return 0
    return number


def price_read(price: dict[str, Any], product: dict[str, Any]) -> dict[str, Any]:
    """A Stripe price (and its product) as a `CatalogueItem`'s fields; `problems` lists every
    reason it cannot be sold, each a sentence staff can act on."""
    meta = {**(product.get("metadata") or {}), **(price.get("metadata") or {})}
    meta = {str(k): str(v).strip() for k, v in meta.items()}
    problems: list[str] = []
    unknown = sorted(k for k in meta if k.startswith("tp_") and k not in KNOWN_KEYS)
    if unknown:
        problems.append(f"unknown metadata {', '.join(unknown)} (a typo?)")
    plan_key, pack_key = meta.get("tp_plan", ""), meta.get("tp_pack", "")
    kind, key = "", plan_key or pack_key
    if plan_key and pack_key:
        problems.append("tp_plan and tp_pack are both set: a price is a plan or a pack")
    elif plan_key:
        kind = CatalogueKind.PLAN
    elif pack_key:
        kind = CatalogueKind.PACK
    else:
        problems.append("no tp_plan or tp_pack metadata: not part of the catalogue")
    if key and not KEY_PATTERN.match(key):
        problems.append(f"the key {key!r} must be lowercase letters, digits and _")
    if kind == CatalogueKind.PLAN and key == FREE_PLAN:
        problems.append("'free' is the plan of users without a subscription")
    recurring = price.get("recurring") or {}
    credits_name = "tp_monthly_credits" if kind == CatalogueKind.PLAN else "tp_credits"
    credits = 0
    if kind:
        if meta.get(credits_name, "") == "":
            problems.append(f"{credits_name} is missing")
        else:
            credits = _number(meta[credits_name], credits_name, problems, 1, MAX_CREDITS)
    if kind == CatalogueKind.PLAN and (
        price.get("type") != "recurring"
        or recurring.get("interval") != "month"
        or int(recurring.get("interval_count") or 1) != 1
        or recurring.get("usage_type", "licensed") != "licensed"
    ):
        problems.append("a plan must be a recurring price billed every month")
    if kind == CatalogueKind.PACK and price.get("type") != "one_time":
        problems.append("a credit pack must be a one-time price")
    unit_amount = price.get("unit_amount")
    if not isinstance(unit_amount, int) or unit_amount <= 0:
        problems.append("the price needs a fixed amount above zero")
        unit_amount = None
    key_tier = meta.get("tp_key_tier", "") or Tier.FREE
    if key_tier not in SELLABLE_TIERS:
        problems.append(f"tp_key_tier must be one of {', '.join(SELLABLE_TIERS)}, not {key_tier!r}")
        key_tier = Tier.FREE
    hd_access = _flag(meta.get("tp_hd_access", ""), "tp_hd_access", problems, False)
    if kind == CatalogueKind.PACK and ("tp_hd_access" in meta or "tp_key_tier" in meta):
        problems.append("tp_hd_access and tp_key_tier belong to plans, not packs")
    order = meta.get("tp_order", "")
    created = price.get("created")
    return {
        "stripe_product_id": str(product.get("id") or price.get("product") or ""),
        "kind": kind,
        "key": key[:64],
        "name": str(product.get("name") or price.get("nickname") or "")[:255],
        "unit_amount": unit_amount,
        "currency": str(price.get("currency") or ""),
        "credits": credits,
        "hd_access": hd_access and kind == CatalogueKind.PLAN,
        "key_tier": key_tier if kind == CatalogueKind.PLAN else Tier.FREE,
        "display_order": _number(order, "tp_order", problems, -10_000, 10_000) if order else 0,
        "visible": _flag(meta.get("tp_visible", ""), "tp_visible", problems, True),
        "active": bool(price.get("active")) and bool(product.get("active", True)),
        "problems": problems,
        "price_created": (
            datetime.fromtimestamp(created, tz=UTC) if isinstance(created, int) else None
        ),
    }


def _mirrored_prices() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(price, product) as Stripe last sent them, from dj-stripe's mirror."""
    products = {str(p.id): dict(p.stripe_data or {}) for p in Product.objects.all()}
    return [
        (dict(price.stripe_data or {}), products.get(str(price.product_id), {}))
        for price in Price.objects.all()
    ]


def catalogue_refresh() -> int:
    """Rebuild the catalogue from the mirror: every price's terms or problems, and which price is
    sold under each key. Returns how many prices are valid. Safe to run from several processes:
    each runs in one transaction and writes the same answer."""
    seen = _mirrored_prices()
    for attempt in range(2):  # two first refreshes racing: the loser finds the rows and updates
        try:
            with transaction.atomic():
                return _catalogue_write(seen)
        except IntegrityError:
            if attempt:
                raise
    return 0  # pragma: no cover - the loop returns or raises


def _catalogue_write(seen: list[tuple[dict[str, Any], dict[str, Any]]]) -> int:
    now = timezone.now()
    ids = []
    for price, product in seen:
        fields = price_read(price, product)
        price_id = str(price.get("id") or "")
        ids.append(price_id)
        item = CatalogueItem.objects.select_for_update().filter(stripe_price_id=price_id).first()
        if item is None:
            CatalogueItem.objects.create(stripe_price_id=price_id, refreshed_at=now, **fields)
        elif any(getattr(item, name) != value for name, value in fields.items()):
            for name, value in fields.items():
                setattr(item, name, value)
            item.refreshed_at = now
            item.save()
            if fields["problems"]:
                logger.error(
                    {
                        "event": "catalogue_price_refused",
                        "price": price_id,
                        "why": fields["problems"],
                    }
                )
    # A price Stripe deleted (legacy plans can be) is no longer sold, but stays known.
    CatalogueItem.objects.exclude(stripe_price_id__in=ids).update(active=False, current=False)
    # Which price is sold under each key: the newest valid, active, visible one.
    valid = CatalogueItem.objects.filter(problems=[], active=True, visible=True).order_by(
        "-price_created", "-stripe_price_id"
    )
    chosen: dict[tuple[str, str], int] = {}
    for item in valid:
        chosen.setdefault((item.kind, item.key), item.pk)
    CatalogueItem.objects.exclude(pk__in=chosen.values()).filter(current=True).update(current=False)
    CatalogueItem.objects.filter(pk__in=chosen.values()).update(current=True)
    return CatalogueItem.objects.filter(problems=[]).count()


def catalogue_sync() -> int:
    """Fetch every product and price from Stripe into the mirror, then refresh the catalogue
    (the sync command, the worker's periodic pass). Returns how many prices are valid."""
    for product in stripe_client.products_list():
        Product.sync_from_stripe_data(product)
    for price in stripe_client.prices_list():
        Price.sync_from_stripe_data(price)
    valid = catalogue_refresh()
    logger.info({"event": "catalogue_synced", "valid_prices": valid})
    return valid


def catalogue_sync_in_worker() -> int | None:
    """The worker's periodic sync, a safety net for a missed webhook: skipped while Stripe is
    not configured; a Stripe failure is logged and retried at the next period, never fatal."""
    if not settings.STRIPE_SECRET_KEY:
        return None
    try:
        return catalogue_sync()
    except (ApiError, stripe.StripeError) as exc:
        logger.warning({"event": "catalogue_sync_failed", "error": str(exc)})
        return None
