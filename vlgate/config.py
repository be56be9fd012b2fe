"""The config: YAML validated by pydantic, with clear messages (field path + what is wrong)."""

from __future__ import annotations

import ipaddress
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

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
from vlgate.store.settings import StorageSettings


class ConfigError(Exception):
    """A config that cannot be used; the message is one clear line per problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendConfig(_Strict):
    url: str | None = Field(default=None, description="base URL of a llama-server or a node's vlgate, "
                            "e.g. http://127.0.0.1:8081")
    dns: str | None = Field(default=None, description="instead of url: a DNS name (e.g. a headless Service) whose "
                            "every address is a backend, re-resolved every gateway.discovery.interval_s")
    port: int | None = Field(default=None, ge=1, le=65535, description="with dns: the port on every address")
    scheme: Literal["http", "https"] = Field(default="http", description="with dns: how to reach every address")
    api_key: str | None = Field(default=None, description="the backend's own --api-key, sent upstream")
    name: str | None = None
    slots: int | None = Field(default=None, ge=1, description="fixed slot count; default: read from /slots or /props")

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v

    @model_validator(mode="after")
    def _url_or_dns(self) -> BackendConfig:
        if (self.url is None) == (self.dns is None):
            raise ValueError("give either url or dns (+ port)")
        if self.dns is not None and self.port is None:
            raise ValueError("dns needs a port")
        return self


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
    busy_interval_s: float = Field(default=0.25, gt=0, description="poll period while other gateway replicas hold "
                                   "slots of the backend (their load is only known from /slots)")


class DiscoveryConfig(_Strict):
    """Backends given by DNS name: how often to re-resolve, and which server to ask."""

    interval_s: float = Field(default=5.0, gt=0, description="re-resolve every dns backend this often")
    timeout_s: float = Field(default=2.0, gt=0, description="one lookup; a failed lookup keeps the last addresses")
    nameservers: list[str] = Field(default_factory=list, description="host or host:port ([v6]:port); "
                                   "default: the system resolver (/etc/resolv.conf)")


class LimitsConfig(_Strict):
    """The front door (Envoy/NGINX-style limits): what a client may hold open or send before a body."""

    max_header_bytes: int = Field(default=16 * 1024, ge=1024, description="request line + headers; beyond: 431")
    max_headers: int = Field(default=100, ge=8, description="request header count; beyond: 431")
    header_timeout_s: float = Field(default=10.0, gt=0, description="headers must arrive within this (slowloris)")
    max_connections: int = Field(default=4096, ge=1, description="open connections; beyond: 503 and close")
    body_timeout_s: float = Field(default=60.0, gt=0, description="a request body must arrive whole within this "
                                  "(a client that declares a body and goes silent); beyond: 408")
    max_buffered_bytes: int = Field(default=512 * 1024 * 1024, ge=1024 * 1024,
                                    description="request bodies held at once across all connections; a new "
                                    "request past it: 503 + Retry-After")


class OutlierConfig(_Strict):
    """Passive outlier ejection: a backend failing requests again and again is taken out for a while."""

    consecutive_failures: int = Field(default=3, ge=1, description="failed requests in a row that eject a backend")
    base_ejection_s: float = Field(default=5.0, gt=0, description="first ejection; doubles with each repeat")
    max_ejection_s: float = Field(default=300.0, gt=0)
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1,
                                      description="retries in flight at most this share of active requests")
    min_retry_concurrency: int = Field(default=3, ge=0, description="retries always allowed at once")


class AffinityConfig(_Strict):
    """Sending a request to the backend that holds its prefix (gateway/routing/, bench/fleet_sim.py)."""

    load: float = Field(default=1.5, ge=1.0, description="the holder is preferred while its load <= this x the mean")
    wait_s: float = Field(default=5.0, ge=0, description="a busy holder is waited for this long (0: never)")


class WatchdogConfig(_Strict):
    """Wedged generations: a slot busy without progress, or /slots hanging (gateway/watchdog.py)."""

    enabled: bool = True
    stall_s: float = Field(default=120.0, gt=0, description="a processing slot without progress this long is wedged")
    slots_timeout_s: float = Field(default=10.0, gt=0)
    slots_timeouts: int = Field(default=3, ge=1, description="/slots timing out this many times in a row: wedged")


class TracingConfig(_Strict):
    """OpenTelemetry traces (gateway/observe/tracing.py; `pip install 'vlgate[otel]'`). Left unset, the standard
    OTEL_* variables decide: on when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set."""

    enabled: bool | None = Field(default=None, description="true: on (the SDK's default endpoint when none is "
                                 "given); false: off even with OTEL_* set; unset: on when an OTLP endpoint is set")
    endpoint: str | None = Field(default=None, description="the collector's OTLP/HTTP base URL, e.g. "
                                 "http://otel-collector:4318 (/v1/traces is appended); default: the OTEL_* variables")
    service_name: str | None = Field(default=None, description="service.name; default OTEL_SERVICE_NAME, else vlgate")


class KeyLimitConfig(_Strict):
    """Limits of one API key (by name): unset = unlimited."""

    concurrency: int | None = Field(default=None, ge=1, description="requests at once; more wait in the queue")
    requests_per_minute: int | None = Field(default=None, ge=1, description="beyond: 429 + Retry-After")
    tokens_per_minute: int | None = Field(default=None, ge=1,
                                          description="prompt + completion tokens the backends reported; beyond: 429")


class NamedKey(_Strict):
    """An API key with a name: usage is counted per name (the key itself is never shown)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:@-]+$")
    key: str = Field(min_length=1)
    admin: bool = Field(default=False, description="sees the fleet (backend URLs, every key's usage) and may use "
                        "/admin; other keys see only their own usage")


def _host_name(v: str) -> str:
    """An allowed_hosts entry: a bare host name or address (no scheme, port or path), lowercase."""
    name = v.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if name != "*" and (not name or (any(c in name for c in "/:@ \t") and not _is_v6(name))):
        raise ValueError(f"{v!r}: give a host name like 'gateway.example.com' (no scheme, port or path)")
    return name


def _is_v6(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).version == 6
    except ValueError:
        return False


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    model: str = Field(default="youtu-vl", description="model id served at /v1/models; requests may name it or omit it")
    api_keys: list[str | NamedKey] = Field(default_factory=list,
                                          description="keys, or {name, key} (plain keys get a name from their hash)")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host header names served besides loopback ones (localhost, 127.x, [::1]); "
        "a loopback bind serves only those (DNS rebinding), another bind checks Host only when this is set; "
        "'.example.com' also allows subdomains, '*' turns the check off")
    metrics_token: str | None = Field(default=None, description="if set, GET /metrics needs 'Bearer <token>' "
                                      "(also VLGATE_METRICS_TOKEN)")
    api_keys_file: str | None = Field(default=None, description="one key per line; # comments allowed")
    max_body_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="larger bodies get 413 before buffering")
    request_timeout_s: float = Field(default=900.0, gt=0,
                                     description="non-stream: longest wait for the whole answer (then 503, no retry)")
    stream_idle_timeout_s: float = Field(
        default=300.0, gt=0, description="streams: no bytes this long -> the stream ends with an error event")
    default_slots: int = Field(default=1, ge=1, description="slots assumed until a backend's /props answers")
    pipeline_parallel: int = Field(default=4, ge=1, le=64,
                                   description="pipeline presets: most step requests one client request runs at once")
    pipeline_full_size: int = Field(default=2, ge=1, le=64,
                                    description="pipeline steps and overlays that hold an image's full-size pixels "
                                    "at once, gateway-wide (up to ~7 bytes a pixel each: 280 MB at 40 MP); "
                                    "more wait within the request's deadline (restart to change)")
    log_json: bool = Field(default=False, description="one JSON line per request")
    drain_grace_s: float = Field(default=30.0, ge=0, description="on SIGTERM: how long in-flight requests may finish")
    drain_delay_s: float = Field(default=5.0, ge=0, description="on SIGTERM: /ready answers 503 (listener open) at "
                                 "least this long, so load balancers polling readiness see it (SIGINT skips it)")
    discovery: DiscoveryConfig = DiscoveryConfig()
    queue: QueueConfig = QueueConfig()
    retry: RetryConfig = RetryConfig()
    health: HealthConfig = HealthConfig()
    limits: LimitsConfig = LimitsConfig()
    affinity: AffinityConfig = AffinityConfig()
    watchdog: WatchdogConfig = WatchdogConfig()
    key_limits: dict[str, KeyLimitConfig] = Field(
        default_factory=dict, description="per API key name; '*' applies to every key without its own entry")
    outlier: OutlierConfig = OutlierConfig()
    tracing: TracingConfig = TracingConfig()

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, v: list[str]) -> list[str]:
        return [_host_name(h) for h in v]


class Config(_Strict):
    gateway: GatewayConfig = GatewayConfig()
    backends: list[BackendConfig] = Field(default_factory=list)
    images: ImageSettings = ImageSettings()
    launcher: LauncherSettings = LauncherSettings()
    presets: PresetsSettings = Field(default_factory=dict)
    storage: StorageSettings = StorageSettings()

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

    def resolved_api_keys(self) -> list[str | NamedKey]:
        """Keys from the config, the keys file and VLGATE_API_KEYS (comma separated)."""
        keys: list[str | NamedKey] = list(self.gateway.api_keys)
        if self.gateway.api_keys_file:
            try:
                text = Path(self.gateway.api_keys_file).expanduser().read_text()
            except OSError as exc:
                raise ConfigError(
                    f"gateway.api_keys_file: cannot read {self.gateway.api_keys_file!r} ({exc.strerror})") from None
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
