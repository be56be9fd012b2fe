"""Launcher settings (the `launcher:` section of the config)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class LauncherSettings(BaseModel):
    model_config = ConfigDict(extra="allow")
