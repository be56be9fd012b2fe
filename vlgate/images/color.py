"""Colour: every decoder mode becomes correct 8-bit sRGB (alpha over white, 16-bit scaled, CMYK/ICC converted).

Split in two so the costly steps run on the small, resized image: `to_resizable` before the resize (only
what Pillow cannot resample correctly), `to_rgb` after it.
"""

from __future__ import annotations

import io
import logging

from PIL import Image, ImageCms

from vlgate.images.types import ImageError

log = logging.getLogger(__name__)

WHITE = (255, 255, 255)
RESIZABLE = ("L", "LA", "RGB", "RGBX", "RGBA", "CMYK")  # RGBX: the fast JPEG decoder's zero-copy output
_SRGB = ImageCms.createProfile("sRGB")


def to_resizable(im: Image.Image) -> Image.Image:
    """8 bits per channel in a mode Pillow resamples exactly (P/1 would fall back to NEAREST)."""
    mode = im.mode
    transparency = im.info.get("transparency")
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or transparency is not None
        return im.convert("RGBA" if has_alpha else "RGB")
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16") or mode == "I":
        # 16-bit samples: scale 0..65535 to 0..255 (a plain convert("L") would clip everything above 255 to white)
        im32 = im if mode == "I" else im.convert("I")
        return im32.point(lambda v: v * (1 / 257)).convert("L")
    if mode == "F":  # float TIFF: 0..1
        return im.point(lambda v: v * 255.0).convert("L")
    if mode in ("L", "RGB") and transparency is not None:  # tRNS colour key
        return im.convert("LA" if mode == "L" else "RGBA")
    if mode in RESIZABLE:
        return im
    if mode in ("La", "RGBa"):
        return im.convert("LA" if mode == "La" else "RGBA")
    try:
        return im.convert("RGB")  # YCbCr, HSV, LAB, ...
    except ValueError as e:
        raise ImageError(f"unsupported colour mode {mode}: {e}") from None


def to_rgb(im: Image.Image, icc_profile: bytes | None, apply_icc: bool) -> Image.Image:
    """Flatten to RGB: alpha over white, CMYK and non-sRGB profiles through littleCMS when a profile is given."""
    if im.mode in ("LA", "RGBA"):
        base = Image.new(im.mode[:-1], im.size, 255 if im.mode == "LA" else WHITE)
        base.paste(im, mask=im.getchannel("A"))
        im = base
    if apply_icc and icc_profile and im.mode in ("RGB", "CMYK"):
        converted = _icc_to_srgb(im, icc_profile)
        if converted is not None:
            return converted
    if im.mode != "RGB":
        im = im.convert("RGB")  # L: replicate; RGBX: drop padding; CMYK: (255-C)(255-K)/255 without a profile
    return im


def _icc_to_srgb(im: Image.Image, icc_profile: bytes) -> Image.Image | None:
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if im.mode == "RGB" and "srgb" in (ImageCms.getProfileDescription(src) or "").lower():
            return None  # already sRGB: skip a costly identity transform
        return ImageCms.profileToProfile(im, src, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as e:
        log.debug("ignoring unusable ICC profile: %s", e)
        return None
