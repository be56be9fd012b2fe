"""Resize + run-length TGA of a big lossless image in row bands, on idle cores at once (split.py).

A 4K screenshot's resize to 1856x1056 (LANCZOS, 12-17 ms) and TGA encode (6-9 ms) are the pipeline's largest
steps after the PNG decode. Each band of output rows is resized from its exact share of the source (the
filter reads the source rows around it, so the pixels equal one whole resize: tests check it byte for byte)
and encoded alone; Pillow's TGA RLE packets never cross a row, so the bands' pixel data joined under one
header is the file Pillow writes for the whole image.
"""

from __future__ import annotations

import io
import itertools
import struct

from PIL import Image

from vlgate.images import resample, split

_BAND_MIN_PIXELS = 500_000  # output pixels per band: smaller work is not worth a hop to a helper thread
_HEADER = 18  # TGA header; Pillow writes no image ID for our images, so the pixel data starts here
_FOOTER = b"\0" * 8 + b"TRUEVISION-XFILE.\0"  # TGA 2.0 footer: no extension or developer area


def tga(im: Image.Image, size: tuple[int, int], filter_name: str, reducing_gap: float | None) -> bytes | None:
    """What resample.resize() then Pillow's TGA RLE encoder give for `im` (8-bit RGB), made in bands; None where
    there is one band or the band path does not apply (no SIMD resizer, other modes): the caller does it whole."""
    w, h = size
    parts = split.bands(h, w * h, _BAND_MIN_PIXELS)
    if parts < 2 or not resample.SIMD or im.mode != "RGB" or im.size == size:
        return None
    src = resample.reduced(im, size, reducing_gap)
    if src.mode != "RGB":
        return None
    cuts = [h * k // parts for k in range(parts + 1)]
    try:
        files = split.run(lambda rows: _encode(resample.resize_rows(src, size, filter_name, rows)),
                          list(itertools.pairwise(cuts)))
    except RuntimeError:  # the resizer refused a crop box: the whole image in one piece still works
        return None
    if any(f[0] != 0 or not f.endswith(_FOOTER) for f in files):  # an ID field or other layout: do it whole
        return None
    header = bytearray(files[0][:_HEADER])
    header[14:16] = struct.pack("<H", h)  # the whole image's height
    bottom_up = not header[17] & 0x20  # Pillow's default origin is bottom-left: the last band's rows come first
    bodies = [f[_HEADER : -len(_FOOTER)] for f in (reversed(files) if bottom_up else files)]
    return bytes(header) + b"".join(bodies) + _FOOTER


def _encode(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "TGA", compression="tga_rle")
    return buf.getvalue()
