"""The config: YAML validated by pydantic, with clear messages (field path + what is wrong)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from vlgate.images.settings import ImageSettings
from vlgate.launcher.settings import LauncherSettings
from vlgate.presets.settings import PresetsSettings


class ConfigError(Exception):
    """A config that cannot be used; the message is one clear line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(_Strict):
    url: str = Field(description="base URL of a llama-server, e.g. http://127.0.0.1:8081")
    api_key: str | None = Field(default=None, description="the backend's own --api-key, sent upstream")
    name: str | None = None
    slots: int | None = Field(default=None, ge=1, description="fixed slot count; default: read from /slots or /props")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v


class QueueConfig(_Strict):
    size: int = Field(default=256, ge=0, description="requests waiting for a free slot; beyond it: 429")
    timeout_s: float = Field(default=30.0, gt=0, description="longest wait for a slot; beyond it: 503")


class RetryConfig(_Strict):
    attempts: int = Field(default=3, ge=1, le=10, description="tries across backends before the client sees an error")
    backoff_s: float = Field(default=0.05, ge=0, description="first backoff; doubles with jitter")
    backoff_max_s: float = Field(default=1.0, ge=0)
    first_byte_timeout_s: float = Field(default=300.0, gt=0,
                                        description="streams: no response headers in time -> retry elsewhere")


class HealthConfig(_Strict):
    interval_s: float = Field(default=2.0, gt=0, description="health/slots poll period per backend")
    timeout_s: float = Field(default=2.0, gt=0)


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model: str = Field(default="youtu-vl", description="model id served at /v1/models; requests may name it or omit it")
    api_keys: list[str] = Field(default_factory=list)
    api_keys_file: str | None = Field(default=None, description="one key per line; # comments allowed")
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="larger bodies get 413 before buffering")
    request_timeout_s: float = Field(default=900.0, gt=0,
                                     description="non-stream: longest wait for the whole answer (then 503, no retry)")
    stream_idle_timeout_s: float = Field(default=300.0, gt=0,
                                         description="streams: no bytes this long -> the stream ends with an error event")
    default_slots: int = Field(default=1, ge=1, description="slots assumed until a backend's /props answers")
    log_json: bool = Field(default=False, description="one JSON line per request")
    drain_grace_s: float = Field(default=30.0, ge=0, description="on SIGTERM: how long in-flight requests may finish")
    queue: QueueConfig = QueueConfig()
    retry: RetryConfig = RetryConfig()
    health: HealthConfig = HealthConfig()


class Config(_Strict):
    gateway: GatewayConfig = GatewayConfig()
    backends: list[BackendConfig] = Field(default_factory=list)
    images: ImageSettings = ImageSettings()
    launcher: LauncherSettings = LauncherSettings()
    presets: PresetsSettings = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_image_budget(self) -> Config:
        """The gateway must resize to the grid llama-server uses: one token budget for both."""
        grid = self.images.grid
        if "max_tokens" not in grid.model_fields_set:
            grid.max_tokens = self.launcher.image_max_tokens
        elif "image_max_tokens" in self.launcher.model_fields_set and grid.max_tokens != self.launcher.image_max_tokens:
            raise ValueError(f"images.grid.max_tokens ({grid.max_tokens}) must equal launcher.image_max_tokens "
                             f"({self.launcher.image_max_tokens}): the gateway resizes to llama-server's grid")
        return self

    def resolved_api_keys(self) -> list[str]:
        """Keys from the config, the keys file and VLGATE_API_KEYS (comma separated)."""
        keys = list(self.gateway.api_keys)
        if self.gateway.api_keys_file:
            try:
                text = Path(self.gateway.api_keys_file).expanduser().read_text()
            except OSError as exc:
                raise ConfigError(f"gateway.api_keys_file: cannot read {self.gateway.api_keys_file!r} ({exc.strerror})")
            keys += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        env = os.environ.get("VLGATE_API_KEYS", "")
        keys += [k.strip() for k in env.split(",") if k.strip()]
        return keys


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_yaml(path: str | os.PathLike[str]) -> Any:
    try:
        with open(path) as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {os.fspath(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid YAML: {exc}") from None


def default_config_text() -> str:
    return resources.files("vlgate").joinpath("configs/default.yaml").read_text()


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """The config at `path`, or the embedded default (configs/default.yaml)."""
    if path is None:
        return parse_config(yaml.safe_load(default_config_text()), "configs/default.yaml")
    return parse_config(load_yaml(path), os.fspath(path))
