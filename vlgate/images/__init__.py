"""Image normalization: decode, check, orient and size every image the backends see.

`ImageNormalizer.normalize_body` is the one entry point of the request path; backends only ever receive
`data:` URLs produced here (never a user URL, never unnormalized bytes).

The names below are imported on first use (module `__getattr__`): the config imports
`vlgate.images.settings`, and that must not pull in aiohttp, numpy and the codecs for every `vlgate`
subcommand (`vlgate --help` would take 0.5 s).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlgate.lazy import lazy_exports

if TYPE_CHECKING:
    from vlgate.images.grid import GridRule
    from vlgate.images.normalizer import ImageNormalizer
    from vlgate.images.settings import ImageSettings
    from vlgate.images.types import ImageError, ImageInfo

_LAZY = {
    "GridRule": "vlgate.images.grid",
    "ImageNormalizer": "vlgate.images.normalizer",
    "ImageSettings": "vlgate.images.settings",
    "ImageError": "vlgate.images.types",
    "ImageInfo": "vlgate.images.types",
}

__all__ = ["GridRule", "ImageError", "ImageInfo", "ImageNormalizer", "ImageSettings"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, __all__)
