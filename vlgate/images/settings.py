"""Image normalization settings (the `images:` section of the config).

Defaults are safe for a public gateway: URL fetching refuses private networks, every limit is on.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, SecretStr, field_validator

from vlgate.images.grid import GridRule

MiB = 1024 * 1024

# Pillow format ids tried by Image.open(formats=...); AVIF/HEIF are dropped at start when no plugin can open them.
DEFAULT_FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF"]
KNOWN_FORMATS = set(DEFAULT_FORMATS)
TIER_SECRET_ENV = "VLGATE_TIER_SECRET"
TIER_SECRET_MIN = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GridSettings(_Strict):
    """The model's input grid; must match the backend's llama.cpp preprocessor and flags."""

    rule: Literal["linear_scale", "preserved_ratio"] = Field(
        default="linear_scale",
        description="linear_scale: Youtu-VL (scale -0.02 steps); preserved_ratio: Qwen2/2.5/3-VL style (dyn_size)",
    )
    patch_size: int = Field(default=16, ge=1, le=1024, description="vision patch side (Youtu-VL 16, Qwen-VL 14)")
    merge_size: int = Field(default=2, ge=1, le=16, description="spatial merge; grid step = patch_size*merge_size")
    max_tokens: int = Field(default=2048, ge=1, description="must equal llama-server --image-max-tokens")
    min_tokens: int = Field(default=0, ge=0, description="preserved_ratio only: --image-min-tokens (0 = none)")

    def to_rule(self) -> GridRule:
        return GridRule(self.rule, self.patch_size, self.merge_size, self.max_tokens, self.min_tokens)


class LimitSettings(_Strict):
    max_images: int = Field(default=8, ge=0, description="image parts per request")
    max_image_bytes: int = Field(default=10 * MiB, ge=1, description="encoded bytes per image (download or data URL)")
    max_request_bytes: int = Field(default=32 * MiB, ge=1, description="encoded image bytes per request, all images")
    max_pixels: int = Field(
        default=40_000_000, ge=1, description="width*height from the header, checked before decoding"
    )
    max_frames: int = Field(default=256, ge=1, description="animated GIF/APNG/WebP: more frames than this is refused")


class FetchSettings(_Strict):
    """http(s) image URLs, fetched by the gateway under SSRF rules (llama-server never sees a URL)."""

    enabled: bool = Field(default=True, description="false: only data: URLs are accepted")
    timeout_s: float = Field(default=5.0, gt=0, description="whole download, redirects included")
    max_redirects: int = Field(default=3, ge=0, le=10)
    allowed_domains: list[str] = Field(
        default_factory=list, description="if set, only these hosts and their subdomains may be fetched"
    )
    allow_private_networks: bool = Field(
        default=False, description="allow loopback/private/link-local targets (tests, trusted setups only)"
    )
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="CIDRs allowed despite the private-network rules, e.g. an internal image store",
    )
    user_agent: str = "vlgate-image-fetch/1"
    max_connections: int = Field(default=32, ge=1)

    @field_validator("allowed_domains")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return [d.strip().lower().strip(".") for d in v if d.strip()]


class EncodeSettings(_Strict):
    format: Literal["auto", "jpeg", "png", "tga"] = Field(
        default="auto",
        description="auto: lossless (`lossless_format`) for screenshots, text and few-colour lossless sources, "
        "else JPEG; jpeg/png/tga: always that",
    )
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    lossless_format: Literal["tga", "png"] = Field(
        default="tga",
        description="how auto sends images kept lossless: tga (run-length, read by llama-server's stb_image; "
        "~35 ms less per 4K screenshot end to end than PNG, see bench/README.md) or png (smaller)",
    )
    lossless_min_text_tiles: float = Field(
        default=0.05, ge=0, le=1,
        description="auto: a lossless source with at least this share of 64x64 tiles that look like UI or text "
        "(flat runs, sharp edges) stays lossless whatever its colour count; 0 = off",
    )
    png_max_colors: int = Field(
        default=512, ge=0,
        description="auto: a lossless source with at most this many colours (256x256 sample) stays lossless too; "
        "0 = auto never keeps images lossless",
    )
    png_compress_level: int = Field(default=1, ge=0, le=9, description="zlib level; 1 is fast and nearly as small")
    resample: Literal["lanczos", "bicubic", "bilinear", "box"] = Field(
        default="bilinear",
        description="photos (JPEG output): what llama.cpp itself uses for Youtu-VL (RESIZE_ALGO_BILINEAR), 2x faster",
    )
    resample_text: Literal["lanczos", "bicubic", "bilinear", "box"] = Field(
        default="lanczos", description="images kept as PNG (screenshots, text): sharpest glyph edges"
    )
    reducing_gap: float | None = Field(
        default=2.0, ge=1.0,
        description="reduce() by an integer factor first while the ratio is >= this (null: one exact resize)",
    )
    jpeg_draft: bool = Field(
        default=True, description="JPEG: decode at 1/2, 1/4, 1/8 scale (DCT, libjpeg-turbo) when big enough"
    )
    apply_icc: bool = Field(default=True, description="convert images with a non-sRGB ICC profile to sRGB")


class CacheSettings(_Strict):
    max_entries: int = Field(default=1024, ge=0, description="0 disables the cache")
    max_bytes: int = Field(default=256 * MiB, ge=0, description="sum of cached normalized data URLs")


class ImageSettings(_Strict):
    enabled: bool = Field(default=True, description="false: every image part is refused with 400")
    formats: list[str] = Field(default_factory=lambda: list(DEFAULT_FORMATS), description="Pillow format allowlist")
    workers: int = Field(default=0, ge=0, description="decode workers (processes or threads); 0 = one per CPU")
    pool: Literal["thread", "process"] = Field(
        default="thread",
        description="thread: pixel work in the gateway's own threads; process: in worker processes (spawned at "
        "the first image, ~50 MB each), so the event loop never waits for the GIL behind an image — for many "
        "cores and heavy image traffic (bench/loop_stall.py)",
    )
    pillow_block_cache_mb: int = Field(
        default=128, ge=0,
        description="memory Pillow keeps mapped for the next image's pixels (16 MB blocks): a 4K screenshot "
        "normalizes ~25 ms faster without fresh page faults; 0 = give it back to the OS after every image",
    )
    grid: GridSettings = GridSettings()
    limits: LimitSettings = LimitSettings()
    fetch: FetchSettings = FetchSettings()
    encode: EncodeSettings = EncodeSettings()
    cache: CacheSettings = CacheSettings()
    tier_secret: SecretStr | None = Field(
        default=None, min_length=TIER_SECRET_MIN,
        description="two tiers (front `vlgate serve` over node gateways): the same secret on both, and a node "
        "passes on the images its front tier already normalized instead of doing them again (images/tier.py); "
        "also VLGATE_TIER_SECRET. At least 16 characters, e.g. `openssl rand -hex 32`",
    )

    def resolved_tier_secret(self) -> str | None:
        """`tier_secret`, else VLGATE_TIER_SECRET; None: this gateway neither marks images nor trusts marks.
        Read when the gateway starts (as VLGATE_API_KEYS); a short one from the environment is a ValueError."""
        if self.tier_secret is not None:
            return self.tier_secret.get_secret_value()
        env = os.environ.get(TIER_SECRET_ENV, "")
        if env and len(env) < TIER_SECRET_MIN:
            raise ValueError(f"{TIER_SECRET_ENV} must be at least {TIER_SECRET_MIN} characters "
                             "(e.g. openssl rand -hex 32)")
        return env or None

    @field_validator("formats")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        out = [f.strip().upper() for f in v]
        unknown = sorted(set(out) - KNOWN_FORMATS)
        if unknown:
            raise ValueError(f"unsupported formats {unknown}; choose from {sorted(KNOWN_FORMATS)}")
        return out
