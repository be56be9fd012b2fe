"""(being built: issue 21) routes answered from the store."""

from __future__ import annotations

from starlette.routing import BaseRoute

from vlgate.gateway.gateway import Gateway


def routes(gw: Gateway) -> list[BaseRoute]:
    return []
