"""Image normalization: decode, check, orient and size every image the backends see.

`ImageNormalizer.normalize_body` is the one entry point of the request path; backends only ever receive
`data:` URLs produced here (never a user URL, never unnormalized bytes).
"""

from vlgate.images.grid import GridRule
from vlgate.images.normalizer import ImageNormalizer
from vlgate.images.settings import ImageSettings
from vlgate.images.types import ImageError, ImageInfo

__all__ = ["GridRule", "ImageError", "ImageInfo", "ImageNormalizer", "ImageSettings"]
