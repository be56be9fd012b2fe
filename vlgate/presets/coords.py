"""Model coordinates → original image pixels.

Youtu-VL answers in pixels of the image it saw (the W'×H' grid the gateway resized to, tokens
`<x_N>`/`<y_N>`); users want pixels of their own image (W×H after EXIF rotation):
x_orig = x·W/W', y_orig = y·H/H', clamped to [0, W] × [0, H].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vlgate.images.types import ImageInfo

COORD_RE = re.compile(r"<([xyv])_(\d+(?:\.\d+)?)>")


@dataclass(frozen=True, slots=True)
class Frame:
    """The two sizes a coordinate lives between; `None` image → identity (no mapping possible)."""

    width: int  # W: original pixels
    height: int
    model_width: int  # W': what the model saw
    model_height: int

    @classmethod
    def of(cls, image: ImageInfo | None) -> Frame | None:
        if image is None or image.width <= 0 or image.height <= 0:
            return None
        return cls(image.orig_width, image.orig_height, image.width, image.height)

    def x(self, v: float) -> float:
        return _clamp(v * self.width / self.model_width, self.width)

    def y(self, v: float) -> float:
        return _clamp(v * self.height / self.model_height, self.height)

    def point(self, x: float, y: float) -> list[float]:
        return [self.x(x), self.y(y)]

    def box(self, x1: float, y1: float, x2: float, y2: float) -> list[float]:
        """[x1, y1, x2, y2] with x1 <= x2 and y1 <= y2 (a model may emit corners in any order)."""
        ax, bx = sorted((self.x(x1), self.x(x2)))
        ay, by = sorted((self.y(y1), self.y(y2)))
        return [ax, ay, bx, by]

    def describe(self) -> dict[str, int]:
        return {
            "width": self.width,
            "height": self.height,
            "model_width": self.model_width,
            "model_height": self.model_height,
        }


def _clamp(v: float, hi: int) -> float:
    return round(min(max(v, 0.0), float(hi)), 2)


def number(text: str) -> float | int:
    """'12' → 12, '12.5' → 12.5 (coordinates are integers in practice; decimals are tolerated)."""
    return float(text) if "." in text else int(text)
