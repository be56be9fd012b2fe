"""Task presets: prompts, sampling and output parsers for Youtu-VL tasks.

The chat handler calls `PresetRegistry.load(config.presets)` once, then per request
`registry.resolve(body, model_id, served_model)` and, on the answer, `run.finish(...)` or
`run.stream_extension(...)`. Built-ins live in `builtin.yaml`; parsers are plain functions.
Pipeline presets (several model calls, `pipeline.py`, `transforms.py`) and overlays (`overlay.py`) are
run by the gateway (`gateway/pipelines.py`) when `run.runs_itself`.
"""

from vlgate.presets.coords import Frame
from vlgate.presets.masks import parse_depth, parse_masks
from vlgate.presets.parsers import (
    parse_boxes,
    parse_count,
    parse_points,
    parse_polygons,
)
from vlgate.presets.pose import MPII_JOINTS, parse_pose
from vlgate.presets.registry import PresetRegistry
from vlgate.presets.run import PresetRun, extension
from vlgate.presets.settings import PresetSpec, PresetsSettings
from vlgate.presets.tokens import TokenCheck, check_special_tokens

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
