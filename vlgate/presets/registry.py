"""The preset registry: built-ins from `builtin.yaml` merged with the user's `presets:` config.

Merging: a user entry named like a built-in overrides only the fields it sets (`params` and `sampling`
merge key by key); `extends: <preset>` starts a new preset from another; `enabled: false` removes one.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml
from pydantic import ValidationError

from vlgate.presets.apply import CHAT, Dialect, resolve
from vlgate.presets.preset import Preset, build
from vlgate.presets.run import PresetRun
from vlgate.presets.settings import PresetSpec

_MERGED_BY_KEY = ("params", "sampling")


def builtin_specs() -> dict[str, PresetSpec]:
    """The shipped presets (keys starting with '_' hold YAML anchors, not presets)."""
    text = resources.files("vlgate.presets").joinpath("builtin.yaml").read_text()
    raw = yaml.safe_load(text) or {}
    return {k: PresetSpec.model_validate(v) for k, v in raw.items() if not k.startswith("_")}


def _as_spec(name: str, value: Any) -> PresetSpec:
    if isinstance(value, PresetSpec):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"presets.{name}: must be a mapping of preset fields, got {type(value).__name__}")
    try:
        return PresetSpec.model_validate(dict(value))
    except ValidationError as exc:
        err = exc.errors()[0]
        path = ".".join(str(p) for p in err["loc"])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise ValueError(f"presets.{name}.{path}: {msg}") from None


def merge(base: PresetSpec, override: PresetSpec) -> PresetSpec:
    """`base` with the fields `override` explicitly sets; params/sampling merge key by key."""
    data = base.model_dump(exclude_unset=True)
    data.pop("enabled", None)  # removing a preset does not remove the ones extending it
    for key, value in override.model_dump(exclude_unset=True).items():
        if key in _MERGED_BY_KEY and isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    data.pop("extends", None)
    return PresetSpec.model_validate(data)


class PresetRegistry:
    """Named presets; `resolve` turns a request body into a rewritten body plus a PresetRun."""

    def __init__(self, presets: dict[str, Preset]) -> None:
        self._presets = presets
        # fields added to every preset request (e.g. what tokens.check_special_tokens says a backend needs)
        self.request_fields: dict[str, Any] = {}

    @classmethod
    def load(cls, user: Mapping[str, Any] | None = None) -> PresetRegistry:
        """Built-ins plus user overrides; ValueError with `presets.<name>.<field>: ...` on a bad entry."""
        builtins = builtin_specs()
        users = {name: _as_spec(name, v) for name, v in (user or {}).items()}
        effective: dict[str, PresetSpec] = {}

        def resolve_spec(name: str, chain: tuple[str, ...]) -> PresetSpec:
            if name in effective:
                return effective[name]
            if name in chain:
                raise ValueError(f"presets.{name}.extends: cycle {' -> '.join(chain + (name,))}")
            spec = users.get(name)
            if spec is None:
                if name not in builtins:
                    raise ValueError(f"presets.{chain[-1]}.extends: no preset named {name!r}")
                result = builtins[name]
            else:
                base = (resolve_spec(spec.extends, chain + (name,)) if spec.extends
                        else builtins.get(name, PresetSpec()))
                result = merge(base, spec)
            effective[name] = result
            return result

        presets: dict[str, Preset] = {}
        for name in list(builtins) + [n for n in users if n not in builtins]:
            spec = resolve_spec(name, ())
            if spec.enabled is False:
                continue
            presets[name] = build(name, spec, "config" if name in users else "builtin")
        return cls(presets)

    def names(self) -> list[str]:
        return list(self._presets)

    def get(self, name: str) -> Preset | None:
        return self._presets.get(name)

    def describe(self, served_model: str | None = None) -> list[dict[str, Any]]:
        """For GET /v1/presets: every preset with its parameters (and virtual model id when known)."""
        out = []
        for p in self._presets.values():
            d = p.describe()
            if served_model:
                d["model"] = f"{served_model}:{p.name}"
            out.append(d)
        return out

    def resolve(self, body: dict[str, Any], model_id: str | None, served_model: str,
                dialect: Dialect = CHAT) -> PresetRun | None:
        """Select the preset asked for (body "preset" or model "<served>:<name>") and rewrite `body` in place."""
        return resolve(self._presets, self.request_fields, body, model_id, served_model, dialect)
