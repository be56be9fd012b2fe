"""llama-server's unprefixed aliases, `POST /chat/completions` and `POST /responses`: the same endpoints.

Clients written against llama-server (or with `base_url` lacking `/v1`) call these; they get exactly
the `/v1` behaviour (and metrics under the same route label).
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from vlgate.gateway.endpoint.endpoint import ProxyEndpoint
from vlgate.gateway.apis.openai.chat import prepare_chat
from vlgate.gateway.apis.responses.routes import prepare_responses
from vlgate.gateway.gateway import Gateway


def routes(gw: Gateway) -> list[BaseRoute]:
    return [
        Route("/chat/completions", ProxyEndpoint(gw, "chat", "/v1/chat/completions", prepare_chat), methods=["POST"]),
        Route("/responses", ProxyEndpoint(gw, "responses", "/v1/responses", prepare_responses), methods=["POST"]),
    ]
