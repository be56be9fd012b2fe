"""The Anthropic Messages API's POST routes, declared: every error leaves in Anthropic's shape."""

from __future__ import annotations

from vlgate.gateway.apis.anthropic.errors import ANTHROPIC
from vlgate.gateway.apis.anthropic.prepare import prepare_count, prepare_messages
from vlgate.gateway.endpoint.route import UTILITY, ApiRoute

ROUTES = (
    ApiRoute("/v1/messages", "messages", ANTHROPIC, prepare_messages, "/v1/messages"),
    ApiRoute("/v1/messages/count_tokens", "messages_count_tokens", ANTHROPIC, prepare_count,
             "/v1/messages/count_tokens", charges=UTILITY, takes_slot=False),
)
