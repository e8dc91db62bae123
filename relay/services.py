"""The relay's service surface: what its views, the async generation routes, the internal API
and the worker call. Each topic lives in its own module:

- `pricing`: Flash's presets and cost table;
- `credit_holds`: a generation's credit reservation and busy mark (`upstreams.flash_credit_lock`);
- `generations`: validate, price, admit, record and run a generation (sync, async start);
- `streams`: streamed generations (Flash's server-sent events passed on, settled however they end);
- `calls`: one relayed request's JSON body and usage record;
- `refunds`: the records of forwarded generations and the refunds of failed ones.
"""

from relay.calls import RelayCall, bad_json
from relay.credit_holds import release, reservation_total, reserve
from relay.generations import (
    Generation,
    flash_user_ensure,
    generation_admit,
    generation_forward,
    generation_lost,
    generation_prepare,
    generation_release,
    generation_run_sync,
    simulated_timepoint,
)
from relay.pricing import flash_costs
from relay.streams import generation_open_stream, generation_stream, simulated_stream, stream_guard

__all__ = [
    "Generation",
    "RelayCall",
    "bad_json",
    "flash_costs",
    "flash_user_ensure",
    "generation_admit",
    "generation_forward",
    "generation_lost",
    "generation_open_stream",
    "generation_prepare",
    "generation_release",
    "generation_run_sync",
    "generation_stream",
    "release",
    "reservation_total",
    "reserve",
    "simulated_stream",
    "simulated_timepoint",
    "stream_guard",
]
