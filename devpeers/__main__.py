"""Run the peers in the foreground (``python -m devpeers --flash-port 8101 ...``): Flash,
Clockchain and, with ``--stripe-port``, the Stripe-compatible server (the memo's plans and packs;
its Checkout pay page on that port; events delivered, signed with ``STRIPE_WEBHOOK_SECRET``, to
``STRIPE_WEBHOOK_URL`` when set).

``DEVPEERS_UNKNOWN_FIELDS=1`` makes both add fields no contract has (``owner_id``,
``internal_score``, ``private_flag``) to every object they answer, to see by hand that the
gateway lets none of them out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from types import FrameType

import uvicorn

from devpeers.clockchain import ClockchainPeer
from devpeers.flash import FlashPeer
from devpeers.server import make_config
from devpeers.stripe_api import StripePeer


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in {"1", "true", "yes", "on"}


def build_peers() -> tuple[FlashPeer, ClockchainPeer]:
    flash = FlashPeer(
        service_key=os.environ.get("FLASH_SERVICE_KEY", "flash-service-key"),
        admin_key=os.environ.get("FLASH_ADMIN_KEY", "flash-admin-key"),
        signing_secret=os.environ.get("FLASH_GATEWAY_SIGNING_SECRET", "flash-signing-secret"),
        require_signed=_env_flag("FLASH_REQUIRE_SIGNED_GATEWAY", True),
        allow_legacy_service_key=_env_flag("FLASH_ALLOW_LEGACY_SERVICE_KEY", True),
        auth_enabled=_env_flag("FLASH_AUTH_ENABLED", False),
        signup_credits=int(os.environ.get("FLASH_SIGNUP_CREDITS", "50")),
    )
    clockchain = ClockchainPeer(
        service_key=os.environ.get("CLOCKCHAIN_SERVICE_KEY", "clockchain-service-key"),
        rate_limit_public=int(os.environ.get("CLOCKCHAIN_RATE_LIMIT_PUBLIC", "60")),
    )
    # Both add fields no contract has to every object they answer (see `UNKNOWN_FIELDS`).
    flash.unknown_fields = clockchain.unknown_fields = _env_flag("DEVPEERS_UNKNOWN_FIELDS", False)
    return flash, clockchain


def build_stripe(host: str, port: int) -> StripePeer:
    stripe = StripePeer(public_url=f"http://{host}:{port}")
    webhook_url = os.environ.get("STRIPE_WEBHOOK_URL", "")
    if webhook_url:
        stripe.deliver_to(webhook_url, os.environ.get("STRIPE_WEBHOOK_SECRET", ""))
    return stripe


async def _serve(host: str, flash_port: int, clockchain_port: int, stripe_port: int) -> None:
    flash, clockchain = build_peers()
    apps: list[tuple[str, object, int]] = [
        ("flash", flash, flash_port),
        ("clockchain", clockchain, clockchain_port),
    ]
    if stripe_port:
        apps.append(("stripe", build_stripe(host, stripe_port), stripe_port))
    servers = [uvicorn.Server(make_config(app, host, port)) for _, app, port in apps]
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    while not all(s.started for s in servers):
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.01)
    if all(s.started for s in servers):
        for (label, _, _), server in zip(apps, servers, strict=True):
            port = server.servers[0].sockets[0].getsockname()[1]
            print(f"{label}: http://{host}:{port}", flush=True)

    def stop_all(signum: int, frame: FrameType | None) -> None:
        for server in servers:
            server.should_exit = True

    # Each Server.serve() installs its own SIGINT/SIGTERM handler and the last one wins,
    # so one Ctrl+C would stop only one peer; take the signals over for all.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_all)
    await asyncio.gather(*tasks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devpeers", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--flash-port", type=int, default=8101)
    parser.add_argument("--clockchain-port", type=int, default=8102)
    parser.add_argument("--stripe-port", type=int, default=0, help="0: no Stripe server")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.flash_port, args.clockchain_port, args.stripe_port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
