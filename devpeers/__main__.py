"""Run both peers in the foreground (``python -m devpeers --flash-port 8101 ...``).

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


async def _serve(host: str, flash_port: int, clockchain_port: int) -> None:
    flash, clockchain = build_peers()
    servers = [
        uvicorn.Server(make_config(flash, host, flash_port)),
        uvicorn.Server(make_config(clockchain, host, clockchain_port)),
    ]
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    while not all(s.started for s in servers):
        if any(t.done() for t in tasks):
            break
        await asyncio.sleep(0.01)
    if all(s.started for s in servers):
        for label, server in zip(("flash", "clockchain"), servers, strict=True):
            port = server.servers[0].sockets[0].getsockname()[1]
            print(f"{label}: http://{host}:{port}", flush=True)

    def stop_all(signum: int, frame: FrameType | None) -> None:
        for server in servers:
            server.should_exit = True

    # Each Server.serve() installs its own SIGINT/SIGTERM handler and the last one wins,
    # so one Ctrl+C would stop only one peer; take the signals over for both.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop_all)
    await asyncio.gather(*tasks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m devpeers", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--flash-port", type=int, default=8101)
    parser.add_argument("--clockchain-port", type=int, default=8102)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.host, args.flash_port, args.clockchain_port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
