"""Local HTTP contract peers for the Flash and Clockchain upstreams, and a Stripe-compatible API
(tests, benchmarks, dev).

The gateway never imports this package. See /work/shared/upstreams.md for the contract.
"""

from devpeers.clockchain import ClockchainPeer
from devpeers.flash import FlashPeer, gateway_headers, sign_gateway_request
from devpeers.server import RunningPeer, start_peer
from devpeers.stripe_api import StripePeer

__all__ = [
    "ClockchainPeer",
    "FlashPeer",
    "RunningPeer",
    "StripePeer",
    "gateway_headers",
    "sign_gateway_request",
    "start_peer",
]
