"""The model grid: equal to llama.cpp's own preprocessor (b11434) for every size, so its resize is a no-op."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from vlgate.images import GridRule
from vlgate.images.settings import GridSettings

TABLE = Path(__file__).parents[1] / "data" / "images" / "grid_llamacpp_b11434.txt"
YOUTU = GridRule()  # Youtu-VL with --image-max-tokens 2048


def _rows() -> list[tuple[str, list[int]]]:
    rows = []
    for line in TABLE.read_text().splitlines():
        if line and not line.startswith("#"):
            kind, *nums = line.split()
            rows.append((kind, [int(n) for n in nums]))
    return rows


def np_youtu(w: int, h: int, patch: int = 16, merge: int = 2, tokens: int = 2048) -> tuple[int, int]:
    """Independent reference: the C++ loop written with numpy float32 scalars."""
    align = patch * merge
    max_patches = tokens * patch * patch * merge * merge // (patch * patch)
    f = np.float32
    scale = f(1.0)
    tw, th = w, h
    while scale > f(0.0):
        th = max(align, int(np.ceil(f(f(h) * scale) / f(align))) * align)
        tw = max(align, int(np.ceil(f(f(w) * scale) / f(align))) * align)
        if (th // patch) * (tw // patch) > max_patches:
            scale = f(scale - f(0.02))
        else:
            break
    return tw, th


def f64_youtu(w: int, h: int) -> tuple[int, int]:
    """The same rule in double precision: what a careless port computes."""
    s = 1.0
    while s > 0:
        th, tw = max(32, math.ceil(h * s / 32) * 32), max(32, math.ceil(w * s / 32) * 32)
        if (th // 16) * (tw // 16) > 8192:
            s -= 0.02
        else:
            break
    return tw, th


def test_table_from_compiled_llamacpp_source_matches() -> None:
    """tests/data/images/grid_llamacpp_b11434.cpp (the C++ verbatim) compiled with g++ -O3 produced the table."""
    rows = _rows()
    assert len(rows) > 4000
    mismatches = []
    for kind, (w, h, a, b, c, d, rw, rh) in rows:
        if kind == "y":
            rule = GridRule("linear_scale", patch_size=a, merge_size=b, max_tokens=c)
        else:  # q: align a, min_pixels c, max_pixels d (Qwen: patch 14, merge 2)
            assert a == 28
            rule = GridRule("preserved_ratio", 14, 2, max_tokens=d // 784, min_tokens=c // 784)
        if rule.size(w, h) != (rw, rh):
            mismatches.append((kind, w, h, rule.size(w, h), (rw, rh)))
    assert mismatches == []


def test_float32_matters() -> None:
    """The table has sizes where double precision lands one step off; we match float32 there."""
    diffs = [(w, h, rw, rh) for kind, (w, h, _a, _b, c, _d, rw, rh) in _rows()
             if kind == "y" and c == 2048 and f64_youtu(w, h) != (rw, rh)]
    assert len(diffs) > 100
    for w, h, rw, rh in diffs:
        assert YOUTU.size(w, h) == (rw, rh)
    # a 4K screenshot: float32 0.5 is not exactly reached, so llama.cpp picks 0.48
    assert YOUTU.size(3840, 2160) == (1856, 1056)
    assert f64_youtu(3840, 2160) == (1920, 1088)


def test_matches_independent_numpy_reference_on_many_sizes() -> None:
    rnd = random.Random(7)
    sizes = [(1, 1), (1, 40000), (40000, 1), (32, 32), (33, 31), (4032, 3024), (3024, 4032), (8000, 8000),
             (20000, 20000), (7, 9000), (65535, 17), (640, 480), (1920, 1080), (100000, 3)]
    sizes += [(rnd.randint(1, 12000), rnd.randint(1, 12000)) for _ in range(1500)]
    sizes += [(rnd.randint(1, 64), rnd.randint(1, 100000)) for _ in range(300)]
    for tokens in (2048, 1024, 256, 62500):
        rule = GridRule(max_tokens=tokens)
        for w, h in sizes[:: (1 if tokens == 2048 else 7)]:
            assert rule.size(w, h) == np_youtu(w, h, tokens=tokens), (w, h, tokens)


@pytest.mark.parametrize("w,h", [(4032, 3024), (1, 1), (31, 33), (1920, 1080), (12000, 900), (333, 20000)])
def test_grid_is_a_fixed_point(w: int, h: int) -> None:
    """llama.cpp sees our output size and computes the same size again: `dst == src`, it only copies."""
    tw, th = YOUTU.size(w, h)
    assert tw % 32 == 0 and th % 32 == 0 and tw >= 32 and th >= 32
    assert (tw // 16) * (th // 16) <= 8192
    assert YOUTU.size(tw, th) == (tw, th)
    assert np_youtu(tw, th) == (tw, th)


def test_youtu_known_values() -> None:
    assert YOUTU.max_patches == 8192
    assert YOUTU.size(4032, 3024) == (1632, 1216)
    assert YOUTU.size(640, 480) == (640, 480)
    assert YOUTU.size(10, 10) == (32, 32)
    assert YOUTU.size(1000, 1000) == (1024, 1024)  # up to the grid, never below the original


def qwen_ref(w: int, h: int, factor: int = 28, min_px: int = 8 * 784, max_px: int = 4096 * 784) -> tuple[int, int]:
    """Independent float32 reference of llama.cpp calc_size_preserved_ratio (Qwen smart_resize)."""
    f = np.float32

    def rnd(x: np.float32) -> int:  # std::round: half away from zero
        q = f(x / f(factor))
        return int(np.floor(q + f(0.5)) if q - np.floor(q) != f(0.5) else np.floor(q) + 1) * factor

    w_bar, h_bar = max(factor, rnd(f(w))), max(factor, rnd(f(h)))
    if h_bar * w_bar > max_px:
        beta = np.sqrt(f(f(f(h) * f(w)) / f(max_px)), dtype=np.float32)
        h_bar = max(factor, int(np.floor(f(f(h) / beta) / f(factor))) * factor)
        w_bar = max(factor, int(np.floor(f(f(w) / beta) / f(factor))) * factor)
    elif h_bar * w_bar < min_px:
        beta = np.sqrt(f(f(min_px) / f(f(h) * f(w))), dtype=np.float32)
        h_bar = int(np.ceil(f(f(h) * beta) / f(factor))) * factor
        w_bar = int(np.ceil(f(f(w) * beta) / f(factor))) * factor
    return w_bar, h_bar


def test_qwen_style_28_grid() -> None:
    rule = GridSettings(rule="preserved_ratio", patch_size=14, merge_size=2, max_tokens=4096, min_tokens=8).to_rule()
    assert rule.align == 28
    rnd = random.Random(3)
    sizes = [(1, 1), (28, 28), (42, 42), (14, 14), (4032, 3024), (1920, 1080), (10, 5000)]
    sizes += [(rnd.randint(1, 9000), rnd.randint(1, 9000)) for _ in range(1500)]
    for w, h in sizes:
        tw, th = rule.size(w, h)
        assert (tw, th) == qwen_ref(w, h), (w, h)
        assert tw % 28 == 0 and th % 28 == 0
        if rule.fits(tw, th):
            assert rule.size(tw, th) == (tw, th)  # fixed point: llama.cpp's dyn_size resize is a no-op too
    assert rule.size(1920, 1080) == (1932, 1092)
    no_min = GridRule("preserved_ratio", 14, 2, max_tokens=4096, min_tokens=0)
    assert no_min.size(70, 70) == (84, 84)  # 2.5 rounds half away from zero (Python's round() gives 2 -> 56)
