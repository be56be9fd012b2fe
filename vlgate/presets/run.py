"""One request's preset after resolution: turns the model's text into the `vlgate` extension field.

Extension shape (every key but preset/image/parse_errors only when that parser runs):
    {"preset": "detect",
     "image": {"width": W, "height": H, "model_width": W', "model_height": H'} | null,
     "boxes":    [{"label": str | null, "bbox": [x1, y1, x2, y2]}],
     "points":   [{"label": str | null, "point": [x, y]}],
     "polygons": [{"label": str | null, "points": [[x, y], ...], "bbox": [...]}],
     "masks":    [{"label", "value", "grid": [gw, gh], "area", "bbox", "rle": {"size": [H, W], "counts": [...]}}],
     "depth":    {"png": "data:image/png;base64,...", "width": gw, "height": gh, "min", "max",
                  "image_width": W, "image_height": H} | null,
     "persons":  [{"bbox": [...] | null, "keypoints": [{"name", "x", "y", "v", "visible"}] }],
     "count":    int | null,
     "pipeline": {"steps": [{"name", "requests", "failed", "ms"}], "requests": N}   (pipeline presets)
     "overlay":  "data:image/png;base64,..."                                       ("overlay": true)
     "parse_errors": [str, ...]}
All coordinates are original-image pixels (after EXIF rotation).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vlgate.images.types import ImageInfo
from vlgate.presets.coords import Frame
from vlgate.presets.masks import parse_depth, parse_masks
from vlgate.presets.parsers import (
    parse_boxes,
    parse_count,
    parse_points,
    parse_polygons,
)
from vlgate.presets.pose import parse_pose
from vlgate.presets.settings import PipelineStep

Parser = Callable[[str, ImageInfo | None], tuple[Any, list[str]]]
PARSERS: dict[str, tuple[str, Parser]] = {
    "boxes": ("boxes", parse_boxes),
    "points": ("points", parse_points),
    "polygons": ("polygons", parse_polygons),
    "masks": ("masks", parse_masks),
    "depth": ("depth", parse_depth),
    "pose": ("persons", parse_pose),
    "count": ("count", lambda text, _image: parse_count(text)),
}


def extension(preset: str, parsers: tuple[str, ...], text: str, image: ImageInfo | None,
              finish_reason: str | None = None) -> dict[str, Any]:
    """The `vlgate` dict for one answer; never raises on model output (a parser bug becomes an error entry)."""
    frame = Frame.of(image)
    ext: dict[str, Any] = {"preset": preset, "image": frame.describe() if frame else None}
    errors: list[str] = []
    for name in parsers:
        key, fn = PARSERS[name]
        try:
            result, errs = fn(text, image)
        except Exception as exc:  # broad on purpose: the raw text is still in content; report, don't fail
            result, errs = None, [f"{name}: parser failed ({type(exc).__name__}: {exc})"]
        ext[key] = result
        errors.extend(errs)
    if finish_reason == "length" and parsers:
        errors.append("output truncated (finish_reason=length): results may be incomplete; raise max_tokens")
    ext["parse_errors"] = list(dict.fromkeys(errors))
    return ext


@dataclass
class PresetRun:
    """What `resolve` hands back: the lead calls `finish` (non-stream) or `stream_extension` (stream)."""

    name: str
    parsers: tuple[str, ...]
    json_content: bool = False  # response_format json_object handled gateway-side
    prompt: str = ""  # the prompt text that was sent (for logs)
    pipeline: tuple[PipelineStep, ...] = ()  # follow-up requests the gateway runs (gateway/pipelines.py)
    overlay: bool = False  # add vlgate.overlay, a picture of the result
    values: dict[str, Any] = field(default_factory=dict)  # the preset's parameters (step templates use them)

    @property
    def runs_itself(self) -> bool:
        """The gateway answers this one itself (several requests, or a picture to draw) instead of one forward."""
        return bool(self.pipeline) or self.overlay

    def _image(self, images: list[ImageInfo]) -> ImageInfo | None:
        # structured presets take exactly one image, in the last user message: the last one in the request
        return images[-1] if images else None

    def finish(self, response: dict[str, Any], images: list[ImageInfo]) -> dict[str, Any]:
        """Add `response["vlgate"]` (from choice 0); in json mode every choice's content becomes its JSON."""
        image = self._image(images)
        choices = response.get("choices") or []
        exts = []
        for choice in choices:
            message = choice.get("message") or {}
            text = message.get("content")
            ext = extension(self.name, self.parsers, text if isinstance(text, str) else "",
                            image, choice.get("finish_reason"))
            exts.append(ext)
            if self.json_content and isinstance(message, dict):
                message["content"] = json.dumps(ext)
        if exts:
            response["vlgate"] = exts[0]
        else:
            response["vlgate"] = {"preset": self.name, "image": None, "parse_errors": ["response has no choices"]}
        return response

    def stream_extension(self, text: str, images: list[ImageInfo], finish_reason: str | None = None) -> dict[str, Any]:
        """The `vlgate` dict for the last chunk of a stream, from the concatenated content deltas."""
        return extension(self.name, self.parsers, text, self._image(images), finish_reason)
