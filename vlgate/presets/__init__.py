"""Task presets: prompts, sampling and output parsers for Youtu-VL tasks.

The chat handler calls `PresetRegistry.load(config.presets)` once, then per request
`registry.resolve(body, model_id, served_model)` and, on the answer, `run.finish(...)` or
`run.stream_extension(...)`. Built-ins live in `builtin.yaml`; parsers are plain functions.
Pipeline presets (several model calls, `pipeline.py`, `transforms.py`) and overlays (`overlay.py`) are
run by the gateway (`gateway/pipelines.py`) when `run.runs_itself`.

The names below are imported on first use (module `__getattr__`): the config imports
`vlgate.presets.settings`, and that must not pull in numpy and Pillow for every `vlgate` subcommand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlgate.lazy import lazy_exports

if TYPE_CHECKING:
    from vlgate.presets.coords import Frame
    from vlgate.presets.masks import parse_depth, parse_masks
    from vlgate.presets.parsers import parse_boxes, parse_count, parse_points, parse_polygons
    from vlgate.presets.pose import MPII_JOINTS, parse_pose
    from vlgate.presets.registry import PresetRegistry
    from vlgate.presets.run import PresetRun, extension
    from vlgate.presets.settings import PresetSpec, PresetsSettings
    from vlgate.presets.tokens import TokenCheck, check_special_tokens

_LAZY = {
    "Frame": "vlgate.presets.coords",
    "parse_depth": "vlgate.presets.masks",
    "parse_masks": "vlgate.presets.masks",
    "parse_boxes": "vlgate.presets.parsers",
    "parse_count": "vlgate.presets.parsers",
    "parse_points": "vlgate.presets.parsers",
    "parse_polygons": "vlgate.presets.parsers",
    "MPII_JOINTS": "vlgate.presets.pose",
    "parse_pose": "vlgate.presets.pose",
    "PresetRegistry": "vlgate.presets.registry",
    "PresetRun": "vlgate.presets.run",
    "extension": "vlgate.presets.run",
    "PresetSpec": "vlgate.presets.settings",
    "PresetsSettings": "vlgate.presets.settings",
    "TokenCheck": "vlgate.presets.tokens",
    "check_special_tokens": "vlgate.presets.tokens",
}

__all__ = [
    "MPII_JOINTS",
    "Frame",
    "PresetRegistry",
    "PresetRun",
    "PresetSpec",
    "PresetsSettings",
    "TokenCheck",
    "check_special_tokens",
    "extension",
    "parse_boxes",
    "parse_count",
    "parse_depth",
    "parse_masks",
    "parse_points",
    "parse_polygons",
    "parse_pose",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
