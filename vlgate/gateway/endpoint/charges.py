"""What a request costs its API key: declared per route (`route.py`), counted by `frontdoor/keylimits.py`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Charges:
    """What one request of a route costs its API key's limits (`frontdoor/keylimits.py`).

    `requests`: counts against `requests_per_minute`, once per backend call (a pipeline preset's steps
    each count). `tokens`: the tokens the backends reported, or for a stream the client left, the ones
    generated so far, count against `tokens_per_minute`. `concurrency`: each backend call in flight holds
    one of the key's `concurrency` places.
    """

    requests: bool = True
    tokens: bool = True
    concurrency: bool = True


GENERATION = Charges()
UTILITY = Charges(tokens=False)  # token counting, templates: a backend call, no generation
