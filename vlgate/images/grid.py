"""The model's input grid: the exact H'xW' llama.cpp's own preprocessor would resize to.

We resize to this size ourselves, so llama.cpp's resize sees `dst.get_size() == src.get_size()` and only copies.
The arithmetic mirrors the C++ in single precision (float32): one float32 rounding per C++ float operation.
(IEEE double rounding of a float32 +,-,*,/,sqrt is innocuous because 53 >= 2*24+2, so `_f32(a op b)` is exact.)
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal

_F32 = struct.Struct("<f")

GridRuleName = Literal["linear_scale", "preserved_ratio"]


def _f32(x: float) -> float:
    """Round a Python float to the nearest float32 (what storing into a C++ `float` does)."""
    return _F32.unpack(_F32.pack(x))[0]


_STEP = _f32(0.02)  # `scale -= 0.02f`


def _cpp_round(x: float) -> float:
    """std::round: half away from zero (Python's round() is half-to-even)."""
    f = math.floor(x)
    return f + 1.0 if x - f >= 0.5 else f


@dataclass(frozen=True, slots=True)
class GridRule:
    """A model's grid rule, from its llama.cpp preprocessor.

    linear_scale: mtmd_image_preprocessor_youtuvl (Youtu-VL): scale 1.0 then -0.02 until the patches fit.
    preserved_ratio: img_tool::calc_size_preserved_ratio as used by mtmd_image_preprocessor_dyn_size
        (Qwen2/2.5/3-VL: patch 14, merge 2 -> multiples of 28, min/max pixels from the token budget).
    """

    rule: GridRuleName = "linear_scale"
    patch_size: int = 16
    merge_size: int = 2
    max_tokens: int = 2048  # llama-server --image-max-tokens
    min_tokens: int = 0  # preserved_ratio only (--image-min-tokens); 0 = none

    @property
    def align(self) -> int:
        return self.patch_size * self.merge_size

    @property
    def max_pixels(self) -> int:
        """hparams.image_max_pixels = tokens * patch^2 * merge^2 (clip-model.h set_limit_image_tokens)."""
        return self.max_tokens * self.align * self.align

    @property
    def min_pixels(self) -> int:
        return self.min_tokens * self.align * self.align

    @property
    def max_patches(self) -> int:
        """youtuvl: max_num_patches = image_max_pixels / (patch_size * patch_size) (8192 for 2048 tokens)."""
        return self.max_pixels // (self.patch_size * self.patch_size)

    def size(self, width: int, height: int) -> tuple[int, int]:
        """(W', H') for an image of width x height (after EXIF orientation)."""
        if width <= 0 or height <= 0:
            raise ValueError("image has no pixels")
        if self.rule == "linear_scale":
            return _linear_scale(width, height, self.patch_size, self.align, self.max_patches)
        return _preserved_ratio(width, height, self.align, self.min_pixels, self.max_pixels)

    def fits(self, width: int, height: int) -> bool:
        """Whether a grid size is within the token budget (false only for absurd aspect ratios)."""
        if self.rule == "linear_scale":
            return (width // self.patch_size) * (height // self.patch_size) <= self.max_patches
        return width * height <= self.max_pixels or self.max_pixels <= 0


def _linear_scale(width: int, height: int, patch: int, align: int, max_patches: int) -> tuple[int, int]:
    """mtmd-image.cpp, mtmd_image_preprocessor_youtuvl::preprocess."""

    def scaled(scale: float, size: int) -> int:
        scaled_size = _f32(_f32(size) * scale)  # float scaled_size = size * scale;
        # static_cast<int>(std::ceil(scaled_size / align_size)) * align_size
        aligned = math.ceil(_f32(scaled_size / align)) * align
        return max(align, aligned)

    scale = _f32(1.0)
    th, tw = height, width
    while scale > 0.0:
        th = scaled(scale, height)
        tw = scaled(scale, width)
        if (th // patch) * (tw // patch) > max_patches:
            scale = _f32(scale - _STEP)
        else:
            break
    return tw, th


def _preserved_ratio(width: int, height: int, align: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """mtmd-image.cpp, img_tool::calc_size_preserved_ratio with longest_edge == 0."""
    fa = _f32(align)

    def round_by(x: float) -> int:
        return int(_cpp_round(_f32(x / fa))) * align

    def ceil_by(x: float) -> int:
        return math.ceil(_f32(x / fa)) * align

    def floor_by(x: float) -> int:
        return math.floor(_f32(x / fa)) * align

    w_bar = max(align, round_by(_f32(width)))
    h_bar = max(align, round_by(_f32(height)))
    if max_pixels > 0 and h_bar * w_bar > max_pixels:
        # sqrt(static_cast<float>(height) * width / opts.max_pixels)
        beta = _f32(math.sqrt(_f32(_f32(_f32(height) * _f32(width)) / _f32(max_pixels))))
        h_bar = max(align, floor_by(_f32(_f32(height) / beta)))
        w_bar = max(align, floor_by(_f32(_f32(width) / beta)))
    elif min_pixels > 0 and h_bar * w_bar < min_pixels:
        beta = _f32(math.sqrt(_f32(_f32(min_pixels) / _f32(_f32(height) * _f32(width)))))
        h_bar = ceil_by(_f32(_f32(height) * beta))
        w_bar = ceil_by(_f32(_f32(width) * beta))
    return w_bar, h_bar
