"""Image normalization settings (the `images:` section of the config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ImageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
