"""Signals other apps connect to, so alerts never imports them.

`balance_crossed(sender=LowBalanceCrossing, crossing=<LowBalanceCrossing>)`
    Sent once per crossing of a watch whose purpose another app owns (auto-recharge: payments),
    inside the transaction that records the crossing. A receiver records what the crossing calls
    for in that transaction (keyed by the crossing, so it is done once); one that raises rolls
    the crossing back, and the watch stays armed for the next reading. Calls with an effect
    across the network belong to the receiver's own worker, never here.

Connect receivers in the app's `AppConfig.ready()`.
"""

from __future__ import annotations

from django.dispatch import Signal

balance_crossed = Signal()
