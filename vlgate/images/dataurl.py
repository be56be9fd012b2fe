"""data: URLs in (any claimed MIME: the bytes decide later), size checked before decoding."""

from __future__ import annotations

import binascii
import re
from urllib.parse import unquote_to_bytes

from vlgate.images.budget import ByteBudget
from vlgate.images.types import ImageError

_WS = re.compile(rb"[\s]+")


def is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def split(url: str, budget: ByteBudget) -> tuple[bool, str]:
    """(is_base64, payload) after a size check on the encoded length, before any decoding."""
    comma = url.find(",")
    if comma < 0:
        raise ImageError("malformed data URL: no ',' before the data")
    header = url[5:comma].lower()
    if len(header) > 256:
        raise ImageError("malformed data URL: header too long")
    is_b64 = header.endswith(";base64")
    payload = url[comma + 1 :]
    budget.check(len(payload) * 3 // 4 if is_b64 else len(payload) // 3)  # lower bound on the decoded size
    return is_b64, payload


def decode(is_b64: bool, payload: str) -> bytes:
    """Strict base64 first; then tolerate line breaks, missing padding and the URL-safe alphabet."""
    if not is_b64:
        return unquote_to_bytes(payload)
    raw = payload.encode("ascii", "replace")
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        pass
    raw = _WS.sub(b"", raw).replace(b"-", b"+").replace(b"_", b"/").rstrip(b"=")
    raw += b"=" * (-len(raw) % 4)
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error as e:
        raise ImageError(f"malformed data URL: invalid base64 ({e})") from None
