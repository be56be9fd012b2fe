"""Applying a preset to a chat request body: selection, parameter checks and the in-place rewrite.

The rewrite touches only the last user message (image parts first, then the preset's prompt text, as
the model was trained), adds the preset's system message when the request has none, fills sampling
defaults the request left unset, and takes `response_format: json_object` off the upstream request
when the gateway will produce the JSON itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vlgate.errors import APIError
from vlgate.presets.params import coerce, render, validate
from vlgate.presets.preset import PLACEHOLDER_RE, Preset
from vlgate.presets.run import PresetRun
from vlgate.presets.settings import PromptVariant

IMAGE_PART_TYPES = ("image_url", "input_image", "image")


@dataclass(frozen=True, slots=True)
class Dialect:
    """Where an API keeps what a preset rewrites: chat `messages` or Responses `input` (a string or items)."""

    messages: str = "messages"
    text_part: str = "text"  # the type of a text content part
    max_tokens: str = "max_tokens"  # the request field the preset's `max_tokens` sampling default goes to
    max_tokens_set: tuple[str, ...] = ("max_completion_tokens", "n_predict")  # other fields that already cap it
    system_field: str | None = None  # a request field that, when set, is the system prompt


CHAT = Dialect()
RESPONSES = Dialect(messages="input", text_part="input_text", max_tokens="max_output_tokens", max_tokens_set=(),
                    system_field="instructions")


def _select(presets: Mapping[str, Preset], body: dict[str, Any], model_id: str | None,
            served_model: str) -> tuple[Preset, dict[str, Any]] | None:
    raw = body.pop("preset", None)
    from_model = None
    if isinstance(model_id, str) and served_model and model_id.startswith(served_model + ":"):
        from_model = model_id[len(served_model) + 1 :]
        body["model"] = served_model
    if raw is None and from_model is None:
        return None
    given: dict[str, Any] = {}
    if isinstance(raw, str):
        name: Any = raw
    elif isinstance(raw, dict):
        given = dict(raw)
        name = given.pop("name", None)
    elif raw is None:
        name = None
    else:
        raise APIError(400, 'preset must be a name or an object {"name": ..., <parameters>}', param="preset",
                       code="invalid_preset")
    if name is None:
        name = from_model
    if not isinstance(name, str) or not name:
        raise APIError(400, "preset.name is required (a string)", param="preset.name", code="invalid_preset")
    if from_model is not None and name != from_model:
        raise APIError(400, f"preset {name!r} conflicts with model {model_id!r}", param="preset",
                       code="invalid_preset")
    preset = presets.get(name)
    if preset is None:
        known = ", ".join(presets) or "none"
        raise APIError(404, f"unknown preset {name!r}; known presets: {known}",
                       param="model" if from_model is not None else "preset", code="preset_not_found")
    return preset, given


def _last_user(body: dict[str, Any], dialect: Dialect) -> dict[str, Any]:
    messages = body.get(dialect.messages)
    if isinstance(messages, str) and dialect is not CHAT:  # Responses: a plain string is one user message
        messages = body[dialect.messages] = [{"role": "user", "content": messages}]
    if not isinstance(messages, list):
        raise APIError(400, f"presets apply to conversations: {dialect.messages} must be a list",
                       param=dialect.messages)
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return msg
    raise APIError(400, "a preset needs a user message", param=dialect.messages)


def _split(content: Any, text_part: str = "text") -> tuple[str, list[Any]]:
    """(joined text, every other part in order) of a message's content."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content.strip(), []
    if not isinstance(content, list):
        raise APIError(400, "message content must be a string or a list of parts", param="messages")
    texts, others = [], []
    for part in content:
        if isinstance(part, dict) and part.get("type") == text_part:
            t = part.get("text")
            if isinstance(t, str) and t.strip():
                texts.append(t.strip())
        else:
            others.append(part)
    return "\n".join(texts), others


def _is_set(value: Any) -> bool:
    return value is not None and value != "" and value != []


def _prompt(preset: Preset, values: dict[str, Any], user_text: str) -> tuple[str, PromptVariant | None]:
    """The prompt text and the variant it came from (None when the user's text is the prompt)."""
    if preset.fill and user_text and not _is_set(values.get(preset.fill)):
        # the same checks as the param itself (length, choices); lists split on commas
        values[preset.fill] = coerce(preset.fill, user_text, preset.params[preset.fill])
    for name, spec in preset.params.items():
        if spec.required and not _is_set(values.get(name)):
            hint = " or the message text" if preset.fill == name else ""
            raise APIError(400, f"preset {preset.name!r} needs {name}: set preset.{name}{hint}",
                           param=f"preset.{name}", code="invalid_preset_parameter")
    variant = next((v for v in preset.variants if all(_is_set(values.get(w)) for w in v.when)), None)
    if preset.user_text == "prompt" and user_text and (variant is None or not variant.when):
        return user_text, None
    if variant is None:
        raise APIError(400, f"preset {preset.name!r}: no prompt fits the given parameters", param="preset",
                       code="invalid_preset_parameter")
    missing = [p for p in PLACEHOLDER_RE.findall(variant.text) if not _is_set(values.get(p))]
    if missing:
        hint = " or the message text" if preset.fill == missing[0] else ""
        raise APIError(400, f"preset {preset.name!r} needs {missing[0]}: set preset.{missing[0]}{hint}",
                       param=f"preset.{missing[0]}", code="invalid_preset_parameter")
    text = PLACEHOLDER_RE.sub(lambda m: render(values[m.group(1)], preset.params[m.group(1)]), variant.text)
    if preset.user_text == "append" and user_text:
        text = f"{text}\n{user_text}"
    return text, variant


def _check_images(preset: Preset, parts: list[Any]) -> None:
    n = sum(1 for p in parts if isinstance(p, dict) and p.get("type") in IMAGE_PART_TYPES)
    if preset.image == "required" and n == 0:
        raise APIError(400, f"preset {preset.name!r} needs an image in the last user message", param="messages")
    if preset.image == "none" and n:
        raise APIError(400, f"preset {preset.name!r} takes no image", param="messages")
    if preset.max_images is not None and n > preset.max_images:
        raise APIError(400, f"preset {preset.name!r} takes at most {preset.max_images} image(s) in the last "
                       f"user message, got {n}", param="messages")


def _sampling(preset: Preset, body: dict[str, Any], dialect: Dialect) -> None:
    for key, value in preset.sampling.items():
        if key == "max_tokens":
            if any(body.get(k) is not None for k in dialect.max_tokens_set):
                continue
            key = dialect.max_tokens
        if body.get(key) is None:
            body[key] = value


def _response_format(preset: Preset, parsers: tuple[str, ...], body: dict[str, Any]) -> bool:
    """True when the gateway writes the JSON itself (json_object + a structured preset)."""
    rf = body.get("response_format")
    kind = rf.get("type") if isinstance(rf, dict) else None
    if not parsers or kind not in ("json_object", "json_schema"):
        return False
    if kind == "json_schema":
        raise APIError(400, f"response_format json_schema cannot be combined with preset {preset.name!r} (the model "
                       "must answer in its own token format); use json_object to get the parsed result as JSON",
                       param="response_format")
    if body.get("stream"):
        raise APIError(400, f"response_format json_object with preset {preset.name!r} needs stream=false; in a "
                       "stream the parsed result comes in the last chunk's `vlgate` field", param="response_format")
    del body["response_format"]
    return True


def resolve(presets: Mapping[str, Preset], request_fields: Mapping[str, Any], body: dict[str, Any],
            model_id: str | None, served_model: str, dialect: Dialect = CHAT) -> PresetRun | None:
    """Select the preset asked for (body "preset" or model "<served>:<name>") and rewrite `body` in place."""
    selected = _select(presets, body, model_id, served_model)
    if selected is None:
        return None
    preset, given = selected
    overlay = given.pop("overlay", False)
    if not isinstance(overlay, bool):
        raise APIError(400, "preset.overlay must be true or false", param="preset.overlay",
                       code="invalid_preset_parameter")
    values = validate(preset.name, given, preset.params)
    msg = _last_user(body, dialect)
    user_text, others = _split(msg.get("content"), dialect.text_part)
    _check_images(preset, others)
    prompt, variant = _prompt(preset, values, user_text)
    msg["content"] = [*others, {"type": dialect.text_part, "text": prompt}]
    messages = body[dialect.messages]
    has_system = bool(dialect.system_field and body.get(dialect.system_field))
    if preset.system and not has_system and not any(
            isinstance(m, dict) and m.get("role") in ("system", "developer") for m in messages):
        messages.insert(0, {"role": "system", "content": preset.system})
    _sampling(preset, body, dialect)
    for key, value in request_fields.items():
        body.setdefault(key, value)
    parsers = preset.parsers_for(variant)
    json_content = _response_format(preset, parsers, body)
    return PresetRun(name=preset.name, parsers=parsers, json_content=json_content, prompt=prompt,
                     pipeline=preset.pipeline_for(variant), overlay=overlay, values=values)
