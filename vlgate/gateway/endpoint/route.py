"""A route as declared data: what applies to it is said where it is declared, and applied in one place.

The endpoint (`endpoint.py`) reads these fields and nothing else: no policy is attached by matching
path prefixes or by wrapping endpoints. A new route is one `ApiRoute` in its API's `routes.py`; an alias
is the same route at a second path (same label, same policies, same metrics).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlgate.gateway.apis.dialect import Dialect
from vlgate.gateway.endpoint.charges import GENERATION, UTILITY, Charges

__all__ = ["GENERATION", "UTILITY", "ApiRoute", "Charges", "Prepare"]

if TYPE_CHECKING:
    from vlgate.gateway.endpoint.context import RequestContext
    from vlgate.gateway.gateway import Gateway

Prepare = Callable[["Gateway", "RequestContext", dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """A POST API route: where it is, what it speaks, and which policies apply to it."""

    path: str
    label: str  # the route's name in metrics, usage and the access log (aliases share it)
    dialect: Dialect  # error bodies and stream error events (apis/<api>/errors.py)
    prepare: Prepare  # validate, resolve the model, presets and images, set affinity (apis/<api>/)
    upstream: str  # the backend path it forwards to
    aliases: tuple[str, ...] = ()  # more paths for the same route (llama-server's unprefixed ones)
    drains: bool = True  # refused with 503 `draining` once SIGTERM came; counted while in flight
    # waits for a free backend slot in the balancer's queue; False: work llama-server does in its HTTP handler
    # without a slot (tokenizing, templates, token counts) goes to the least loaded backend at once
    takes_slot: bool = True
    charges: Charges = field(default=GENERATION)

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.path, *self.aliases)
