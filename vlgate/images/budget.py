"""Byte limits for one request: per image and for all its images together, checked as bytes arrive."""

from __future__ import annotations

from vlgate.images.types import ImageError


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


class ByteBudget:
    """Shared by the images of one request (one event loop, so no lock is needed)."""

    def __init__(self, per_image: int, per_request: int) -> None:
        self.per_image = per_image
        self.remaining = per_request
        self.per_request = per_request

    def check(self, size: int) -> None:
        """Raise if an image of `size` bytes (so far, or declared) would break a limit; takes nothing."""
        if size > self.per_image:
            raise ImageError(f"image is larger than the {_mb(self.per_image)} limit per image", code="image_too_large")
        if size > self.remaining:
            raise ImageError(
                f"the request's images are larger than the {_mb(self.per_request)} limit per request",
                code="image_too_large",
            )

    def take(self, size: int) -> None:
        """Account a complete image."""
        self.check(size)
        self.remaining -= size
