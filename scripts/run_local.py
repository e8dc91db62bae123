"""`make run`: the gateway on embedded defaults, with the background worker (grants, usage
roll-ups) and the Flash and Clockchain contract peers started alongside so the relay answers
locally, and (without Stripe keys in the environment) the Stripe-compatible server selling the
memo's plans and packs. Ctrl-C stops everything.

The gateway is the production server (gunicorn with the project's uvicorn worker, configured by
gunicorn.conf.py, as the Dockerfile starts it) serving the collected, hashed static files; one
worker by default (`WEB_CONCURRENCY`), since the in-process limiter is per process."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--flash-port", type=int, default=8101)
    parser.add_argument("--clockchain-port", type=int, default=8102)
    parser.add_argument("--stripe-port", type=int, default=8103)
    args = parser.parse_args()

    env = dict(os.environ)
    # Hashed, compressed static files for WhiteNoise (seconds; skipped when nothing changed).
    subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "manage.py", "collectstatic_if_changed"], cwd=ROOT, env=env, check=True
    )
    env.setdefault("FLASH_URL", f"http://127.0.0.1:{args.flash_port}")
    env.setdefault("CLOCKCHAIN_URL", f"http://127.0.0.1:{args.clockchain_port}")
    # Without Stripe keys of your own, the local Stripe-compatible server sells the memo's plans
    # and packs: Checkout's pay page is on its port and its webhooks come back here.
    local_stripe = not env.get("STRIPE_SECRET_KEY") and not env.get("STRIPE_API_BASE")
    if local_stripe:
        gateway = f"http://{args.host}:{args.port}"
        env.update(
            STRIPE_API_BASE=f"http://127.0.0.1:{args.stripe_port}",
            STRIPE_SECRET_KEY="sk_test_51LocalStripeCompatibleServer0000000",
            STRIPE_WEBHOOK_SECRET="whsec_local_development",
            STRIPE_WEBHOOK_URL=f"{gateway}/api/v1/billing/webhooks/stripe",
            CHECKOUT_SUCCESS_URL=f"{gateway}/portal/billing/",
            CHECKOUT_CANCEL_URL=f"{gateway}/portal/billing/",
            BILLING_PORTAL_RETURN_URL=f"{gateway}/portal/billing/",
        )
    peers = subprocess.Popen(  # noqa: S603 - fixed argv
        [
            sys.executable,
            "-m",
            "devpeers",
            "--flash-port",
            str(args.flash_port),
            "--clockchain-port",
            str(args.clockchain_port),
            "--stripe-port",
            str(args.stripe_port if local_stripe else 0),
        ],
        cwd=ROOT,
        env=env,
    )
    worker = subprocess.Popen(  # noqa: S603 - fixed argv
        [sys.executable, "manage.py", "run_grants"], cwd=ROOT, env=env
    )
    try:
        return subprocess.call(  # noqa: S603 - fixed argv
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "gunicorn.conf.py",
                "--bind",
                f"{args.host}:{args.port}",
                "--workers",
                env.get("WEB_CONCURRENCY", "1"),
            ],
            cwd=ROOT,
            env=env,
        )
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (worker, peers):
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
