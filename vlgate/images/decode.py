"""Open untrusted image bytes safely: explicit format allowlist, header checks before any pixel is decoded."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from vlgate.images import jpeg, png
from vlgate.images.sniff import sniff
from vlgate.images.types import ImageError

log = logging.getLogger(__name__)

EXIF_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright (same table as ImageOps.exif_transpose)
TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# What Pillow's own parsers raise on hostile or broken input.
PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError,
              OverflowError, AttributeError, Image.DecompressionBombError)


def available_formats(requested: list[str]) -> list[str]:
    """The requested formats Pillow can open here; registers pillow-heif (optional extra `heif`) if asked for."""
    if "HEIF" in requested:
        try:
            import pillow_heif  # type: ignore[import-not-found]

            pillow_heif.register_heif_opener()
        except ImportError:
            log.info("HEIC/HEIF images are refused: install vlgate[heif] (pillow-heif) to accept them")
    if "AVIF" in requested and "AVIF" not in Image.OPEN:
        try:  # older Pillow: the pillow-avif-plugin package registers "AVIF"
            import pillow_avif  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            pass
    Image.init()
    return [f for f in requested if f in Image.OPEN]


def keep_pixel_memory(megabytes: int) -> None:
    """Let Pillow reuse up to `megabytes` of freed pixel blocks (process-wide): a fresh 33 MB 4K image costs
    ~8000 page faults, ~25 ms on a VM (bench/README.md)."""
    Image.core.set_blocks_max(megabytes * 1024 * 1024 // Image.core.get_block_size())


@dataclass(slots=True)
class Opened:
    image: Image.Image
    format: str
    orientation: int  # EXIF 1..8
    width: int  # after orientation
    height: int
    icc_profile: bytes | None
    lossless: bool  # the source kept exact pixels (PNG, GIF, BMP, lossless TIFF/WebP)


def open_image(data: bytes, formats: list[str], max_pixels: int, max_frames: int) -> Opened:
    """Parse the header only; refuse what we cannot or should not decode before decoding it."""
    if not data:
        raise ImageError("the image is empty")
    kind = sniff(data)
    if kind is not None and kind not in formats:
        hint = " (install vlgate[heif])" if kind == "HEIF" else ""
        raise ImageError(f"unsupported image format: {kind}{hint}; accepted: {', '.join(formats)}")
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        raise ImageError(f"image is too large: over {max_pixels} pixels declared in its header") from None
    except UnidentifiedImageError:
        what = f"{kind} data that cannot be parsed" if kind else "not an image in an accepted format"
        raise ImageError(f"cannot decode image: {what} ({', '.join(formats)})") from None
    except PIL_ERRORS as e:
        what = kind or "unrecognised data"
        raise ImageError(f"cannot decode image ({what}): {_why(e)}") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError("image has no pixels")
    if w * h > max_pixels:
        raise ImageError(f"image is too large: {w}x{h} = {w * h} pixels, the limit is {max_pixels}")
    try:
        frames = getattr(im, "n_frames", 1)
    except PIL_ERRORS as e:
        raise ImageError(f"cannot decode image ({im.format}): {_why(e)}") from None
    if frames > max_frames:
        raise ImageError(f"animation has {frames} frames, the limit is {max_frames}")
    orientation = _orientation(im, data)
    if orientation >= 5:
        w, h = h, w
    return Opened(im, im.format or kind or "?", orientation, w, h, im.info.get("icc_profile"), _lossless(im, data))


def load(opened: Opened, data: bytes, target: tuple[int, int], draft: bool) -> Image.Image:
    """Decode the first frame; JPEG decodes straight at 1/2..1/8 scale when still >= target (pre-rotation size),
    common PNGs inflate through libdeflate (png.py); anything those fast paths decline goes through Pillow."""
    im = opened.image
    is_jpeg = im.format in ("JPEG", "MPO")
    if draft and is_jpeg:
        fast = jpeg.decode(data, im.mode, im.size, target)
        if fast is not None:
            return fast
    if im.format == "PNG":
        fast = png.decode(im, data)
        if fast is not None:
            return fast
    try:
        if draft and is_jpeg and im.mode in ("RGB", "L", "CMYK"):
            im.draft(im.mode, target)
        im.load()
    except Image.DecompressionBombError as e:
        raise ImageError(f"image is too large: {e}") from None
    except PIL_ERRORS as e:
        raise ImageError(f"cannot decode image ({opened.format}): {_why(e)}") from None
    except MemoryError:
        raise ImageError("image is too large to decode") from None
    return im


def _orientation(im: Image.Image, data: bytes) -> int:
    if im.format == "PNG" and "exif" not in im.info and b"eXIf" not in data:
        return 1  # no EXIF at all: PngImageFile.getexif() would decode every pixel looking for a late eXIf chunk
    try:
        value = im.getexif().get(EXIF_ORIENTATION, 1)
    except PIL_ERRORS:
        return 1  # broken EXIF: show the pixels as stored rather than refuse a decodable image
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _lossless(im: Image.Image, data: bytes) -> bool:
    if im.format in ("PNG", "GIF", "BMP"):
        return True
    if im.format == "WEBP":  # the first image chunk decides: VP8L lossless, "VP8 " lossy
        head = data[:262144]
        vp8l, vp8 = head.find(b"VP8L"), head.find(b"VP8 ")
        return vp8l >= 0 and (vp8 < 0 or vp8l < vp8)
    if im.format == "TIFF":
        return im.info.get("compression") not in ("jpeg", "tiff_jpeg")
    return False


def _why(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    if "truncated" in msg or isinstance(e, EOFError):
        return f"the file is truncated ({msg})"
    if "decoder" in msg:
        return f"corrupt or truncated data ({msg})"
    return msg[:200]

