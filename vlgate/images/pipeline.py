"""One image, bytes in -> data URL out: open, check, orient, resize to the model grid, flatten, re-encode.

Runs in a worker thread (simplejpeg, libdeflate, cykooz-resizer and Pillow release the GIL for the pixel work).
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass

from PIL import Image

from vlgate.images import bands, color, decode, resample, screen
from vlgate.images.grid import GridRule
from vlgate.images.settings import EncodeSettings, LimitSettings
from vlgate.images.types import ImageError, ImageInfo

_COLOR_SAMPLE = 256  # side of the nearest-neighbour sample used to count colours
_MIME = {"jpeg": "image/jpeg", "png": "image/png", "tga": "image/x-tga"}
_LOSSLESS = ("png", "tga")


@dataclass(frozen=True, slots=True)
class Normalized:
    data_url: str
    info: ImageInfo
    format: str  # "jpeg", "png" or "tga"


@dataclass(frozen=True, slots=True)
class Pipeline:
    """Everything one normalization needs, fixed at start (immutable: shared by all worker threads)."""

    grid: GridRule
    formats: tuple[str, ...]
    limits: LimitSettings
    encode: EncodeSettings

    def run(self, data: bytes) -> Normalized:
        opened = decode.open_image(data, list(self.formats), self.limits.max_pixels, self.limits.max_frames)
        ow, oh = opened.width, opened.height  # upright size (after EXIF orientation)
        tw, th = self.grid.size(ow, oh)
        if not self.grid.fits(tw, th):
            raise ImageError(f"image aspect ratio is too extreme: {ow}x{oh} cannot fit the model's input grid")
        swap = opened.orientation >= 5
        stored_target = (th, tw) if swap else (tw, th)  # the resize happens before the transpose

        im = decode.load(opened, data, stored_target, self.encode.jpeg_draft)
        im = color.to_resizable(im)
        fmt = self._choose_format(im, opened.lossless)
        name = self.encode.resample_text if fmt in _LOSSLESS else self.encode.resample
        out = None
        if fmt == "tga" and opened.orientation == 1 and not (self.encode.apply_icc and opened.icc_profile):
            out = bands.tga(im, stored_target, name, self.encode.reducing_gap)  # big RGB: in bands on idle cores
        if out is None:
            if im.size != stored_target:
                im = resample.resize(im, stored_target, name, self.encode.reducing_gap)
            if opened.orientation != 1:
                im = im.transpose(decode.TRANSPOSE[opened.orientation])
            im = color.to_rgb(im, opened.icc_profile, self.encode.apply_icc)
            assert im.size == (tw, th), (im.size, tw, th)
            out = self._encode(im, fmt)
        info = ImageInfo(hashlib.sha256(out).hexdigest(), ow, oh, tw, th)
        return Normalized(f"data:{_MIME[fmt]};base64," + base64.b64encode(out).decode("ascii"), info, fmt)

    def _choose_format(self, im: Image.Image, lossless: bool) -> str:
        """Lossless where JPEG ringing hurts: lossless sources that look like UI or text (see screen.py), or
        have few colours (diagrams, flat graphics); photos saved as PNG still go to JPEG."""
        enc = self.encode
        if enc.format != "auto":
            return enc.format
        if not lossless or enc.png_max_colors <= 0:
            return "jpeg"
        if enc.lossless_min_text_tiles > 0 and screen.text_tile_share(im) >= enc.lossless_min_text_tiles:
            return enc.lossless_format
        w, h = im.size
        sample = im.resize((min(w, _COLOR_SAMPLE), min(h, _COLOR_SAMPLE)), Image.Resampling.NEAREST)
        few = sample.getcolors(maxcolors=enc.png_max_colors) is not None
        return enc.lossless_format if few else "jpeg"

    def _encode(self, im: Image.Image, fmt: str) -> bytes:
        buf = io.BytesIO()
        if fmt == "png":
            im.save(buf, "PNG", compress_level=self.encode.png_compress_level)
        elif fmt == "tga":  # run-length BGR: ~5 ms for 2 MP where PNG's filters + zlib take ~30 (bench/README.md)
            im.save(buf, "TGA", compression="tga_rle")
        else:
            im.save(buf, "JPEG", quality=self.encode.jpeg_quality)
        return buf.getvalue()
