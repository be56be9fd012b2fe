"""The OpenAI API's POST routes, declared: what each speaks, forwards to, and what applies to it."""

from __future__ import annotations

from vlgate.gateway.apis.openai.chat import prepare_chat
from vlgate.gateway.apis.openai.completions import prepare_completion
from vlgate.gateway.apis.openai.embeddings import prepare_embedding
from vlgate.gateway.apis.openai.errors import OPENAI
from vlgate.gateway.apis.openai.tokens import prepare_chat_count, prepare_detokenize, prepare_tokenize
from vlgate.gateway.endpoint.route import UTILITY, ApiRoute

ROUTES = (
    # `/chat/completions`: llama-server's unprefixed alias (clients whose base_url lacks /v1)
    ApiRoute("/v1/chat/completions", "chat", OPENAI, prepare_chat, "/v1/chat/completions",
             aliases=("/chat/completions",)),
    ApiRoute("/v1/completions", "completions", OPENAI, prepare_completion, "/v1/completions"),
    ApiRoute("/v1/embeddings", "embeddings", OPENAI, prepare_embedding, "/v1/embeddings"),
    # llama-server tokenizes and applies templates in its HTTP handler, without a slot
    ApiRoute("/v1/chat/completions/input_tokens", "chat_input_tokens", OPENAI, prepare_chat_count,
             "/v1/chat/completions/input_tokens", charges=UTILITY, takes_slot=False),
    ApiRoute("/apply-template", "apply_template", OPENAI, prepare_chat_count, "/apply-template",
             charges=UTILITY, takes_slot=False),
    ApiRoute("/tokenize", "tokenize", OPENAI, prepare_tokenize, "/tokenize", charges=UTILITY, takes_slot=False),
    ApiRoute("/detokenize", "detokenize", OPENAI, prepare_detokenize, "/detokenize", charges=UTILITY,
             takes_slot=False),
)
