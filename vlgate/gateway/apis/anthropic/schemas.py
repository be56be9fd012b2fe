"""The Anthropic Messages request (`POST /v1/messages`, `/v1/messages/count_tokens`) in Anthropic's rules.

llama-server b11434 answers a missing `messages` with a 500 and accepts empty `messages`, unknown block
types and a missing `max_tokens` (it silently uses 4096); Anthropic's API refuses all of these with a
400, and so does the gateway. Server tools (web search, code execution, ...), documents and file
sources cannot be served by a local model: a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from vlgate.gateway.apis import caps
from vlgate.gateway.apis.openai.schemas import _Open
from vlgate.gateway.apis.tagged import validate_tagged


class TextBlock(_Open):
    type: Literal["text"]
    text: str


class ImageSource(_Open):
    type: Literal["base64", "url"]  # no "file": there is no Files API here
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(_Open):
    type: Literal["image"]
    source: ImageSource


class ToolUseBlock(_Open):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Open):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock, Field(discriminator="type")]] | None = None
    is_error: bool | None = None


class ThinkingBlock(_Open):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(_Open):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
                  Field(discriminator="type")]


class Message(_Open):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class Tool(_Open):
    type: Literal["custom"] | None = None  # server tools (web_search_..., bash_..., ...) need Anthropic's servers
    name: Annotated[str, Field(min_length=1, max_length=128)]
    description: str | None = None
    input_schema: dict[str, Any]


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(_Open):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=0)] | None = None


class _Common(_Open):
    item_caps = caps.ANTHROPIC  # checked by validate() (through validate_tagged) before pydantic runs
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class CountTokensRequest(_Common):
    pass


class MessagesRequest(_Common):
    max_tokens: Annotated[int, Field(ge=1)]
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    metadata: dict[str, Any] | None = None


_TAGS = ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking")


def validate_messages(body: Any) -> None:
    validate_tagged(MessagesRequest, body, _TAGS)


def validate_count(body: Any) -> None:
    validate_tagged(CountTokensRequest, body, _TAGS)
