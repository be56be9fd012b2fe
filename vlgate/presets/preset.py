"""A fully resolved preset (built-in or user, after merging) and how it is checked."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlgate.presets.settings import ParamSpec, PipelineStep, PresetSpec, PromptVariant

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
USER_TEXT_MODES = ("ignore", "prompt", "append")


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    system: str | None
    variants: tuple[PromptVariant, ...]  # first whose `when` params are all set wins
    user_text: str  # ignore | prompt | append
    fill: str | None  # user_text "fill:<param>": the param the user's text fills
    params: dict[str, ParamSpec]
    sampling: dict[str, Any]
    image: str  # required | optional | none
    max_images: int | None
    parsers: tuple[str, ...]  # () = plain text
    source: str = "builtin"  # builtin | config
    pipeline: tuple[PipelineStep, ...] = ()  # follow-up requests after the prompt's own (step 0)
    origin: str | None = None  # where the prompt comes from

    def parsers_for(self, variant: PromptVariant | None) -> tuple[str, ...]:
        if variant is not None and variant.parser is not None:
            return _parser_tuple(variant.parser)
        return self.parsers

    def pipeline_for(self, variant: PromptVariant | None) -> tuple[PipelineStep, ...]:
        if variant is not None and variant.pipeline is not None:
            return tuple(variant.pipeline)
        return self.pipeline

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "source": self.source,
            "params": {
                k: {
                    "type": p.type,
                    "required": p.required,
                    "description": p.description,
                    **({"default": p.default} if p.default is not None else {}),
                    **({"choices": p.choices} if p.choices is not None else {}),
                }
                for k, p in self.params.items()
            },
            "prompt": [{"when": v.when, "text": v.text, "origin": v.origin or self.origin,
                        "steps": 1 + len(self.pipeline_for(v))} for v in self.variants],
            "system": self.system,
            "user_text": f"fill:{self.fill}" if self.fill else self.user_text,
            "sampling": self.sampling,
            "image": self.image,
            "max_images": self.max_images,
            "parser": list(self.parsers) or ["none"],
        }


def _parser_tuple(parser: str | Sequence[str] | None) -> tuple[str, ...]:
    names = [parser] if isinstance(parser, str) else list(parser or [])
    return tuple(dict.fromkeys(n for n in names if n != "none"))


def build(name: str, spec: PresetSpec, source: str) -> Preset:
    """Check a merged spec for completeness and consistency; ValueError names the field."""
    where = f"presets.{name}"
    if not NAME_RE.match(name):
        raise ValueError(f"{where}: a preset name is letters, digits, '_', '.', '-' (no ':'), at most 64")
    if spec.prompt is None:
        raise ValueError(f"{where}.prompt: missing (a template, or a list of {{when, text}} variants)")
    variants = (PromptVariant(text=spec.prompt),) if isinstance(spec.prompt, str) else tuple(spec.prompt)
    if not variants:
        raise ValueError(f"{where}.prompt: empty list")
    params = dict(spec.params or {})
    for i, v in enumerate(variants):
        for p in list(v.when) + PLACEHOLDER_RE.findall(v.text):
            if p not in params:
                raise ValueError(
                    f"{where}.prompt[{i}]: {{{p}}} is not a parameter of this preset (add it under params)")
    mode = spec.user_text or "ignore"
    fill = None
    if mode.startswith("fill:"):
        fill = mode[5:]
        if fill not in params or params[fill].type not in ("string", "string_list"):
            raise ValueError(f"{where}.user_text: {mode!r} must name a string or string_list parameter")
        mode = "fill"
    elif mode not in USER_TEXT_MODES:
        raise ValueError(f"{where}.user_text: {mode!r} is not one of ignore, prompt, append, fill:<param>")
    for pname, p in params.items():
        if p.choices is not None and p.type not in ("string", "string_list"):
            raise ValueError(f"{where}.params.{pname}.choices: only for string parameters")
    for v in variants:
        for step in (v.pipeline if v.pipeline is not None else spec.pipeline) or ():
            for p in PLACEHOLDER_RE.findall(step.prompt + (step.label or "")):
                if p != "labels" and p not in params:
                    raise ValueError(f"{where}.pipeline.{step.name}: {{{p}}} is not a parameter of this preset")
            if (step.for_each is None) != (step.parser != "core_target"):
                raise ValueError(f"{where}.pipeline.{step.name}: a for_each step (one crop per item) takes parser "
                                 "core_target, and core_target needs for_each")
    sampling = spec.sampling.model_dump(exclude_none=True) if spec.sampling else {}
    return Preset(
        name=name,
        description=spec.description or "",
        system=spec.system or None,
        variants=variants,
        user_text=mode,
        fill=fill,
        params=params,
        sampling=sampling,
        image=spec.image or "optional",
        max_images=spec.max_images,
        parsers=_parser_tuple(spec.parser),
        source=source,
        pipeline=tuple(spec.pipeline or ()),
        origin=spec.origin,
    )
