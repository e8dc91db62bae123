"""What can be bought: plans and credit packs. Credits and HD access come only from here; prices
come from Stripe (`STRIPE_PRICE_<NAME>` price ids). The client never supplies an amount."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from accounts.models import Plan, Tier


@dataclass(frozen=True)
class PlanOffer:
    name: str  # accounts.models.Plan value
    label: str
    monthly_credits: int
    price_cents: int  # the list price shown to clients; Stripe's price is what is charged
    hd_access: bool
    key_tier: str  # the developer-key tier this plan gives

    @property
    def stripe_price_id(self) -> str:
        return settings.STRIPE_PRICE_IDS.get(self.name, "")


@dataclass(frozen=True)
class CreditPack:
    name: str
    label: str
    credits: int
    price_cents: int

    @property
    def stripe_price_id(self) -> str:
        return settings.STRIPE_PRICE_IDS.get(self.name, "")


PLANS: dict[str, PlanOffer] = {
    offer.name: offer
    for offer in (
        PlanOffer(Plan.FREE, "Free", 0, 0, False, Tier.FREE),
        PlanOffer(Plan.EXPLORER, "Explorer", 50, 499, False, Tier.FREE),
        PlanOffer(Plan.HISTORIAN, "Historian", 200, 1499, True, Tier.FREE),
        PlanOffer(Plan.API_PRO, "API Pro", 1000, 4999, True, Tier.PRO),
    )
}
# Ordered from least to most: when a customer holds several live subscriptions the best one wins.
PLAN_RANK = {name: rank for rank, name in enumerate(PLANS)}

PACKS: dict[str, CreditPack] = {
    pack.name: pack
    for pack in (
        CreditPack("100_credits", "100 credits", 100, 499),
        CreditPack("500_credits", "500 credits", 500, 1999),
        CreditPack("1000_credits", "1 000 credits", 1000, 3499),
    )
}


def plan_for_price(price_id: str) -> PlanOffer | None:
    for offer in PLANS.values():
        if offer.stripe_price_id and offer.stripe_price_id == price_id:
            return offer
    return None


def pack_for_price(price_id: str) -> CreditPack | None:
    for pack in PACKS.values():
        if pack.stripe_price_id and pack.stripe_price_id == price_id:
            return pack
    return None
