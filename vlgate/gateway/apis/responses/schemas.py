"""The Responses API request (`POST /v1/responses`, `/v1/responses/input_tokens`) in OpenAI's own rules.

llama-server b11434 converts a Responses request to a chat request (server-chat.cpp) and is lenient or
fails late; the gateway refuses what cannot work with a 400 naming the field: `prompt` templates,
`file_id`/`input_file` inputs, tools other than functions, and `text.format` shapes it cannot map to the
backend's `response_format`. Server-side state (`store`, `previous_response_id`, `conversation`,
`background`) is the gateway's own (state.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from vlgate.errors import APIError
from vlgate.gateway.apis import caps
from vlgate.gateway.apis.openai.schemas import _Open, validate
from vlgate.gateway.apis.responses.items import check_metadata, item_kind
from vlgate.gateway.apis.tagged import validate_tagged


class InputText(_Open):
    type: Literal["input_text", "output_text"]
    text: str


class InputImage(_Open):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None


class Refusal(_Open):
    type: Literal["refusal"]
    refusal: str


InputPart = Annotated[InputText | InputImage | Refusal, Field(discriminator="type")]


class MessageItem(_Open):
    type: Literal["message"] | None = None
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputPart]


class FunctionCallItem(_Open):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class ToolOutputText(_Open):
    type: Literal["input_text"]
    text: str


ToolOutputPart = Annotated[ToolOutputText | InputImage, Field(discriminator="type")]


class FunctionCallOutputItem(_Open):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ToolOutputPart]


class ReasoningText(_Open):
    text: str


class ReasoningItem(_Open):
    type: Literal["reasoning"]
    summary: list[dict[str, Any]]
    content: Annotated[list[ReasoningText], Field(min_length=1)]


class FunctionTool(_Open):
    type: Literal["function"]  # llama-server knows no other tool type (web search, files, MCP, ...)
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and (self.schema_ is None or not self.name):
            raise ValueError("a json_schema format needs 'name' and 'schema'")
        return self


class TextConfig(_Open):
    format: TextFormat | None = None


class ConversationRef(_Open):
    id: Annotated[str, Field(min_length=1, max_length=256)]


class ResponsesRequest(_Open):
    item_caps = caps.RESPONSES  # checked first by validate(), before any item below is validated
    model: str | None = None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: bool | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    previous_response_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    conversation: Annotated[str, Field(min_length=1, max_length=256)] | ConversationRef | None = None
    store: bool | None = None
    background: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
    metadata: dict[str, str] | None = None
    preset: str | dict[str, Any] | None = None


_ITEMS: dict[str, type[_Open]] = {"message": MessageItem, "function_call": FunctionCallItem,
                                  "function_call_output": FunctionCallOutputItem, "reasoning": ReasoningItem}


def validate_responses(body: Any) -> None:
    """A 400 in OpenAI's shape for anything llama-server would mishandle or the gateway cannot serve."""
    validate(ResponsesRequest, body)
    if body.get("prompt"):
        raise APIError(400, "'prompt' (a stored prompt template) is not supported here; send the text in 'input'.",
                       param="prompt", code="unsupported_parameter")
    check_metadata(body.get("metadata"))
    if isinstance(body["input"], list):
        validate_items(body["input"], "input")


def validate_items(items: list[Any], where: str) -> None:
    """Each input item in the shapes llama-server reads (`where`: the list's name in errors)."""
    for i, item in enumerate(items):
        kind = item_kind(item)
        model = _ITEMS.get(kind)
        if model is None:
            raise APIError(400, f"Invalid value for '{where}[{i}]': unsupported input item type {kind!r} "
                           f"(supported: {', '.join(_ITEMS)}).", param=f"{where}[{i}]", code="invalid_value")
        try:
            validate_tagged(model, item, ("input_text", "output_text", "input_image", "refusal"))
        except APIError as exc:
            param = f"{where}[{i}]" + (f".{exc.param}" if exc.param else "")
            raise APIError(400, exc.message.replace(f"'{exc.param}'", f"'{param}'"), param=param,
                           code=exc.code) from None


def responses_format(body: dict[str, Any]) -> bool:
    """Map Responses `text.format` to the chat `response_format` llama-server honours; True if body changed.

    b11434 ignores `text.format` (it copies unknown fields into the chat request, and only
    `response_format` reaches the sampler). A `response_format` the client passed itself wins.
    """
    fmt = (body.get("text") or {}).get("format")
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text") or "response_format" in body:
        return False
    if fmt["type"] == "json_object":
        body["response_format"] = {"type": "json_object"}
    else:
        schema = {k: fmt[k] for k in ("name", "schema", "description", "strict") if fmt.get(k) is not None}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    return True
