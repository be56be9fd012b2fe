"""The user's image as pixels, for the steps that crop it and for overlays.

Crops are cut from the original pixels when the client sent the image inline (a data: URL, as `vlgate ask`
does): the same decode, EXIF orientation and colour handling as the normalizer, at full size. For an
http(s) URL the gateway does not download it a second time: the normalized image (what the model saw,
about 1.4 megapixels at most) is stretched back to the original size instead.
"""

from __future__ import annotations

import io

from PIL import Image

from vlgate.images import color, dataurl, decode
from vlgate.images.budget import ByteBudget
from vlgate.images.settings import ImageSettings
from vlgate.images.types import ImageInfo


def image_of_data_url(url: str) -> Image.Image:
    """A data: URL the gateway itself produced (trusted: no limits to check) → RGB image."""
    is_b64, payload = dataurl.split(url, ByteBudget(1 << 62, 1 << 62))
    return Image.open(io.BytesIO(dataurl.decode(is_b64, payload))).convert("RGB")


def original_pixels(source_url: str | None, normalized_url: str, info: ImageInfo, settings: ImageSettings,
                    formats: list[str]) -> Image.Image:
    """The user's image upright at its original size (see module doc); runs in a worker thread."""
    if source_url is not None and dataurl.is_data_url(source_url):
        limits = settings.limits
        is_b64, payload = dataurl.split(source_url, ByteBudget(limits.max_image_bytes, limits.max_request_bytes))
        data = dataurl.decode(is_b64, payload)
        opened = decode.open_image(data, formats, limits.max_pixels, limits.max_frames)
        stored = (opened.image.width, opened.image.height)
        im = color.to_resizable(decode.load(opened, data, stored, False))
        if opened.orientation != 1:
            im = im.transpose(decode.TRANSPOSE[opened.orientation])
        im = color.to_rgb(im, opened.icc_profile, settings.encode.apply_icc)
        if im.size == (info.orig_width, info.orig_height):
            return im
    im = image_of_data_url(normalized_url)
    return im.resize((info.orig_width, info.orig_height), Image.Resampling.BICUBIC)
