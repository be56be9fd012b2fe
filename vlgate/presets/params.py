"""Validation of a request's preset parameters: 400 errors that name the field (`preset.classes`)."""

from __future__ import annotations

import math
from typing import Any

from vlgate.errors import APIError
from vlgate.presets.settings import ParamSpec

CODE = "invalid_preset_parameter"


def _bad(name: str, message: str) -> APIError:
    return APIError(400, message, param=f"preset.{name}", code=CODE)


def _string(name: str, value: Any, spec: ParamSpec) -> str:
    if not isinstance(value, str):
        raise _bad(name, f"preset.{name} must be a string, got {type(value).__name__}")
    value = value.strip()
    if not value:
        raise _bad(name, f"preset.{name} must not be empty")
    if len(value) > spec.max_length:
        raise _bad(name, f"preset.{name} is longer than {spec.max_length} characters")
    if spec.choices is not None and value not in spec.choices:
        raise _bad(name, f"preset.{name} must be one of {', '.join(spec.choices)}; got {value!r}")
    return value


def coerce(name: str, value: Any, spec: ParamSpec) -> Any:
    """The value converted to the param's type, or an APIError 400 with param `preset.<name>`."""
    t = spec.type
    if t == "string":
        return _string(name, value, spec)
    if t == "string_list":
        if isinstance(value, str):  # "dog, cat" is accepted for convenience
            value = [v for v in (p.strip() for p in value.split(",")) if v]
        if not isinstance(value, list):
            raise _bad(name, f"preset.{name} must be a list of strings, got {type(value).__name__}")
        if not value:
            raise _bad(name, f"preset.{name} must not be empty")
        if len(value) > spec.max_items:
            raise _bad(name, f"preset.{name} has {len(value)} items; at most {spec.max_items}")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(_string(f"{name}[{i}]", item, spec))
            except APIError as exc:
                exc.param = f"preset.{name}"
                raise
        return out
    if t == "boolean":
        if not isinstance(value, bool):
            raise _bad(name, f"preset.{name} must be true or false")
        return value
    # integer / number
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(name, f"preset.{name} must be a {'whole ' if t == 'integer' else ''}number")
    if t == "integer":
        if isinstance(value, float) and not value.is_integer():
            raise _bad(name, f"preset.{name} must be a whole number")
        value = int(value)
    if spec.min is not None and value < spec.min:
        raise _bad(name, f"preset.{name} must be >= {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise _bad(name, f"preset.{name} must be <= {spec.max:g}")
    return value


def validate(preset: str, given: dict[str, Any], specs: dict[str, ParamSpec]) -> dict[str, Any]:
    """Known params coerced, defaults filled; unknown keys are a 400 listing the known ones."""
    values: dict[str, Any] = {}
    for key, value in given.items():
        spec = specs.get(key)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            raise _bad(key, f"unknown parameter {key!r} for preset {preset!r} (its parameters: {known})")
        if value is None:
            continue
        values[key] = coerce(key, value, spec)
    for key, spec in specs.items():
        if key not in values and spec.default is not None:
            values[key] = coerce(key, spec.default, spec)
    return values


def render(value: Any, spec: ParamSpec | None) -> str:
    """How a value appears in a prompt: lists joined with the param's `join`."""
    if isinstance(value, list):
        return (spec.join if spec else ", ").join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
