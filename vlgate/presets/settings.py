"""Preset settings (the `presets:` section of the config): user-defined or overridden presets.

The same schema describes the built-ins (`builtin.yaml`) and user entries. Every field is optional
here because a user entry may override a single field of a built-in (`presets: {detect: {sampling:
{temperature: 0.2}}}`); the registry checks completeness after merging.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ParamType = Literal["string", "string_list", "integer", "number", "boolean"]
ImagePolicy = Literal["required", "optional", "none"]
ParserName = Literal["none", "count", "boxes", "points", "polygons", "masks", "depth", "pose"]
PARSER_NAMES: tuple[str, ...] = ParserName.__args__  # type: ignore[attr-defined]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    """One request parameter of a preset (`"preset": {"name": ..., "<param>": value}`)."""

    type: ParamType = "string"
    description: str = ""
    required: bool = False
    default: Any = None
    choices: list[str] | None = Field(default=None, description="allowed values (string / string_list)")
    max_length: int = Field(default=2000, ge=1, description="longest string (each item for lists)")
    max_items: int = Field(default=300, ge=1, description="longest list")
    min: float | None = None
    max: float | None = None
    join: str = Field(default=", ", description="separator when a list is put into the prompt")


class PromptVariant(_Strict):
    """A prompt template used when all params in `when` are set; `{param}` is replaced by its value."""

    when: list[str] = Field(default_factory=list)
    text: str
    parser: ParserName | list[ParserName] | None = Field(default=None, description="overrides the preset's parser")


class Sampling(_Strict):
    """Sampling defaults; a request's own value always wins."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None


class PresetSpec(_Strict):
    """A preset as written in YAML; unset fields inherit (from `extends` or the built-in of that name)."""

    extends: str | None = Field(default=None, description="start from this preset (built-in or user)")
    enabled: bool | None = Field(default=None, description="false removes the preset")
    description: str | None = None
    system: str | None = Field(default=None, description="system message added when the request has none")
    prompt: str | list[PromptVariant] | None = None
    user_text: str | None = Field(
        default=None,
        description="what happens to the user's own text: ignore | prompt | append | fill:<param>",
    )
    params: dict[str, ParamSpec] | None = None
    sampling: Sampling | None = None
    image: ImagePolicy | None = None
    max_images: int | None = Field(default=None, ge=1)
    parser: ParserName | list[ParserName] | None = None


PresetsSettings = dict[str, PresetSpec]
