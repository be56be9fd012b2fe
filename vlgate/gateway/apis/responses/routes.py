"""The OpenAI Responses API's POST routes, declared (its errors are OpenAI's)."""

from __future__ import annotations

from vlgate.gateway.apis.openai.errors import OPENAI
from vlgate.gateway.apis.responses.prepare import prepare_responses, prepare_responses_count
from vlgate.gateway.endpoint.route import UTILITY, ApiRoute

ROUTES = (
    ApiRoute("/v1/responses", "responses", OPENAI, prepare_responses, "/v1/responses", aliases=("/responses",)),
    ApiRoute("/v1/responses/input_tokens", "responses_input_tokens", OPENAI, prepare_responses_count,
             "/v1/responses/input_tokens", charges=UTILITY, takes_slot=False),
)
