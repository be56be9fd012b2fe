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


class CropSpec(_Strict):
    """Crop around an item's box, as demo.py `crop_and_resize` does (its numbers are the defaults)."""

    padding: float = Field(default=1.2, ge=1.0, le=4.0, description="crop side = box side x padding, same centre")
    short_side: int = Field(default=1280, ge=32, le=4096,
                            description="the crop is resized (Lanczos) to this shorter side")
    mark: bool = Field(default=True, description="draw the box on the crop before resizing (the model is told so)")
    mark_width: int = Field(default=1, ge=1, le=16)
    format: Literal["jpeg", "png"] = "jpeg"  # demo.py: cv2.imencode('.jpg'), quality 95
    quality: int = Field(default=95, ge=1, le=100)


class PipelineStep(_Strict):
    """One follow-up request of a pipeline preset; step 0 is the preset's own prompt.

    A step reads the previous step's result: `for_each` sends one request per item (boxes or polygons, in
    parallel), each on a crop around the item's box; `labels` fills `{labels}` with the previous answer's class
    list. A step with nothing to work on ends the pipeline: the result is what the earlier steps gave.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    prompt: str = Field(description="template: {param} of the preset, {labels} (see `labels`)")
    for_each: Literal["boxes", "polygons"] | None = Field(default=None, description="one request per item")
    order: Literal["as_given", "area_desc"] = Field(default="as_given",
                                                    description="item order (later ones paint over)")
    limit: int = Field(default=30, ge=1, le=200, description="at most this many items (demo.py: 30 boxes)")
    crop: CropSpec | None = Field(default=None, description="with for_each: the image is a crop around the item")
    labels_exclude: list[str] = Field(default_factory=lambda: ["<OTHERS>"], description="dropped from {labels}")
    labels_join: str = Field(default=",", description="separator of {labels} (demo.py: ',')")
    parser: ParserName | list[ParserName] | Literal["core_target"] = Field(
        default="none", description="core_target: the crop's <mask> is pasted back into the user's image")
    label: str | None = Field(default=None, description="label of pasted masks: a template, else the item's label")


class PromptVariant(_Strict):
    """A prompt template used when all params in `when` are set; `{param}` is replaced by its value."""

    when: list[str] = Field(default_factory=list)
    text: str
    parser: ParserName | list[ParserName] | None = Field(default=None, description="overrides the preset's parser")
    pipeline: list[PipelineStep] | None = Field(default=None, description="overrides the preset's pipeline ([]: none)")
    origin: str | None = Field(default=None, description="where this prompt comes from (official demo/README, or ours)")


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
    pipeline: list[PipelineStep] | None = Field(default=None, description="follow-up requests (see PipelineStep)")
    origin: str | None = Field(default=None, description="where the prompt comes from (official demo/README, or ours)")


PresetsSettings = dict[str, PresetSpec]
