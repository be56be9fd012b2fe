"""Request validation at the boundary (pydantic): wrong types are a 400 naming the field, never a backend's problem.

Only the fields the gateway or llama-server rely on are typed; unknown fields pass through
(llama-server accepts many extensions, and OpenAI adds fields often).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vlgate.errors import APIError
from vlgate.gateway.apis import caps


class _Open(BaseModel):
    # strict: "yes" is not a bool and "5" is not an int; a wrong type is a 400, not a guess
    model_config = ConfigDict(extra="allow", strict=True)
    item_caps: ClassVar[caps.Table] = ()  # a request's lists and objects, capped before validation (caps.py)


class ImageURL(_Open):
    url: str


class ContentPart(_Open):
    type: Literal["text", "image_url"]  # a vision-language model: no audio or file parts
    text: str | None = None
    image_url: ImageURL | str | None = None

    @model_validator(mode="after")
    def _has_payload(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a text part needs 'text'")
        if self.type == "image_url" and self.image_url is None:
            raise ValueError("an image_url part needs 'image_url'")
        return self


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Open):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]  # llama-server knows no other tool type
    function: FunctionDef


class StreamOptions(_Open):
    include_usage: bool | None = None


# llama-server reads counts into int32 and the seed into uint32: larger values wrap silently
# (max_tokens 2**63 becomes 1 token), so they are refused here, naming the field
INT32_MAX = 2**31 - 1
Count = Annotated[int, Field(ge=1, le=INT32_MAX)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


# pydantic tries a union's branches in turn and, by default, names every item a wrong branch fails: 2**17
# token ids cost 83 ms of list[str] errors before list[int] matched; with fail_fast, 3 ms
_FAST = Field(fail_fast=True)
Tokens = str | Annotated[list[str], _FAST] | Annotated[list[int], _FAST] | Annotated[list[list[int]], _FAST]


class _Sampling(_Open):
    model: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: Count | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    seed: Annotated[int, Field(ge=-1, le=2**32 - 1)] | None = None
    stop: str | list[str] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | list[Any] | None = None
    user: str | None = None
    # llama-server's own sampling extensions (same int32 rule)
    n_predict: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    top_k: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    typical_p: Annotated[float, Field(ge=0, le=1)] | None = None
    repeat_penalty: Annotated[float, Field(ge=0, le=100)] | None = None
    repeat_last_n: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    n_probs: Annotated[int, Field(ge=0, le=100)] | None = None
    n_keep: Annotated[int, Field(ge=-1, le=INT32_MAX)] | None = None
    n_indent: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    t_max_predict_ms: Annotated[int, Field(ge=0, le=INT32_MAX)] | None = None
    dry_multiplier: Finite | None = None
    id_slot: Annotated[int, Field(ge=-1, le=-1)] | None = None  # the gateway, not the client, places requests


class ChatCompletionRequest(_Sampling):
    item_caps = caps.CHAT
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Count | None = None
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    preset: str | dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    item_caps = caps.COMPLETIONS
    prompt: Tokens


class EmbeddingRequest(_Open):
    item_caps = caps.EMBEDDINGS
    model: str | None = None
    input: Tokens
    encoding_format: Literal["float", "base64"] | None = None


def validate(model: type[BaseModel], data: Any) -> None:
    """Raise a 400 naming the first bad field; the dict itself is forwarded, not a re-serialized model.

    The model's item caps come first: pydantic on a body of 300k tools holds the event loop for seconds."""
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.")
    caps.check(data, getattr(model, "item_caps", ()))
    try:
        model.model_validate(data)
    except ValidationError as exc:
        # the deepest: the union branch that got furthest (without inputs and URLs: half the cost of 10k errors)
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        err = max(errors, key=lambda e: len(e["loc"]))
        loc = err["loc"]
        # drop pydantic's union-branch names (e.g. 'list[ContentPart]') from the path
        parts = [p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool")))]
        param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or None
        msg = err["msg"]
        if err["type"] == "missing":
            msg = f"Missing required parameter: '{param}'."
        else:
            msg = f"Invalid value for '{param}': {msg}."
        code = "invalid_value" if err["type"] != "missing" else "missing_required_parameter"
        raise APIError(400, msg, param=param, code=code) from None
