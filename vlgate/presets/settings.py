"""Preset settings (the `presets:` section of the config): user-defined or overridden presets."""

from __future__ import annotations

from typing import Any

PresetsSettings = dict[str, Any]
