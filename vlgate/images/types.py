"""What the image step hands to the rest of the request path."""

from __future__ import annotations

from dataclasses import dataclass

from vlgate.errors import APIError


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """One normalized image: presets map coordinates back with x*orig_width/width, y*orig_height/height."""

    sha256: str  # of the normalized bytes forwarded upstream (affinity key, cache key)
    orig_width: int  # after EXIF orientation
    orig_height: int
    width: int  # the grid size the gateway resized to (what the model sees)
    height: int


class ImageError(APIError):
    """A bad image: always a 400 naming the message part (never retried, never reaches a backend)."""

    def __init__(
        self, message: str, *, param: str | None = None, status: int = 400, code: str = "invalid_image"
    ) -> None:
        super().__init__(status, message, param=param, code=code)
