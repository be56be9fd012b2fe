"""Launcher settings (the `launcher:` section of the config).

Everything a backend's command line is made of lives here, with defaults that reproduce the
model's documented flags; `backends:` entries override any of it per backend.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A slot must hold the image, the text of the prompt (system prompt, question, chat template)
# and the whole answer. Rounded up to 256 so llama.cpp's context padding never shortens a slot.
CTX_ALIGN = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSource(_Strict):
    """Where the GGUF and its mmproj come from: local paths, else the Hugging Face Hub."""

    repo: str = "tencent/Youtu-VL-4B-Instruct-GGUF"
    revision: str | None = Field(default=None, description="branch, tag or commit; None = main")
    file: str = "Youtu-VL-4B-Instruct-Q8_0.gguf"
    mmproj_file: str = "mmproj-Youtu-VL-4b-Instruct-BF16.gguf"
    path: str | None = Field(default=None, description="local model GGUF: skips the hub for it")
    mmproj: str | None = Field(default=None, description="local mmproj GGUF: skips the hub for it")
    cache_dir: str | None = Field(default=None, description="hub cache; None = HF_HUB_CACHE / ~/.cache/huggingface/hub")


class Sampling(_Strict):
    """The model's documented sampling defaults (requests may still override them)."""

    temp: float = 0.1
    top_p: float = 0.001
    repeat_penalty: float = 1.05


class RestartPolicy(_Strict):
    """Crashed backends come back with exponential backoff + jitter; a crash loop parks them."""

    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=60.0, gt=0)
    backoff_jitter_s: float = Field(default=1.0, ge=0)
    crash_loop_count: int = Field(default=5, ge=1, description="this many crashes ...")
    crash_loop_window_s: float = Field(default=300.0, gt=0, description="... within this window: parked as failed")
    stable_after_s: float = Field(default=120.0, ge=0, description="ready this long: backoff starts over")
    parked_cooldown_s: float = Field(default=300.0, gt=0,
                                     description="a parked backend is tried again after this (doubling per park)")
    parked_cooldown_max_s: float = Field(default=1800.0, gt=0)


class BackendOverride(_Strict):
    """One backend of an explicit `backends:` list; unset fields inherit the launcher-wide value."""

    name: str | None = None
    gpu: int | str | None = Field(default=None, description="CUDA device index or UUID; None = CPU")
    port: int | None = Field(default=None, ge=1, le=65535)
    parallel: int | None = Field(default=None, ge=1)
    ctx_size: int | None = Field(default=None, ge=256)
    threads: int | None = Field(default=None, ge=1)
    extra_args: list[str] = Field(default_factory=list, description="appended after the launcher-wide extra_args")
    env: dict[str, str] = Field(default_factory=dict, description="merged over the launcher-wide env")


class LauncherSettings(_Strict):
    server_binary: str | None = Field(default=None, description="llama-server path; None = PATH, else a cached build")
    model: ModelSource = ModelSource()
    alias: str | None = Field(default=None, description="--alias; None = gateway.model")
    host: str = Field(default="127.0.0.1", description="where backends listen (0.0.0.0 for a fleet node)")
    port_base: int = Field(default=8081, ge=0, le=65535,
                           description="backend i listens on port_base + i; 0 = free ports")
    gpus: Literal["auto"] | list[int | str] = Field(
        default="auto", description="auto = CUDA_VISIBLE_DEVICES, else nvidia-smi; [] = CPU only"
    )
    cpu_backends: int = Field(default=1, ge=1, description="CPU instances when there is no GPU")
    backends: list[BackendOverride] = Field(
        default_factory=list, description="explicit backends (overrides gpus/cpu_backends)"
    )
    parallel: int = Field(default=4, ge=1, description="--parallel: slots per backend")
    image_max_tokens: int = Field(default=2048, ge=1)
    n_predict: int = Field(default=12280, ge=1, description="-n: longest answer")
    prompt_tokens: int = Field(default=1024, ge=0, description="text budget per request (system + question + template)")
    ctx_size: int | None = Field(default=None, ge=256, description="None = parallel * slot_ctx (see slot_ctx)")
    n_gpu_layers: int | Literal["all"] = Field(default="all", description="-ngl on GPU backends (CPU: 0)")
    threads: int | None = Field(default=None, ge=1, description="-t; None = llama.cpp's choice")
    sampling: Sampling = Sampling()
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    log_dir: str | None = Field(default=None, description="None = ~/.cache/vlgate/logs")
    log_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    log_backups: int = Field(default=3, ge=0)
    load_timeout_s: float = Field(default=900.0, gt=0, description="not ready in time: killed and counted as a crash")
    health_interval_s: float = Field(default=2.0, gt=0)
    hang_timeout_s: float = Field(default=60.0, gt=0, description="ready, but /health silent this long: "
                                  "killed and counted as a crash (a hung process never exits by itself)")
    stop_timeout_s: float = Field(default=20.0, ge=0, description="SIGTERM to SIGKILL")
    restart: RestartPolicy = RestartPolicy()

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, v: object) -> object:
        if v == "auto" or (isinstance(v, list) and all(isinstance(g, int | str) for g in v)):
            return v
        raise ValueError("must be auto, or a list of GPU indices/UUIDs ([] = CPU only)")

    @field_validator("n_gpu_layers", mode="before")
    @classmethod
    def _ngl(cls, v: object) -> object:
        if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            return v
        raise ValueError("must be all, or a number of layers (>= 0)")

    @model_validator(mode="after")
    def _backoff_order(self) -> LauncherSettings:
        if self.restart.backoff_max_s < self.restart.backoff_initial_s:
            raise ValueError("restart.backoff_max_s must be >= restart.backoff_initial_s")
        return self

    def slot_ctx(self) -> int:
        """Tokens one slot needs: image + prompt text + the longest answer, rounded up to CTX_ALIGN."""
        need = self.image_max_tokens + self.prompt_tokens + self.n_predict
        return -(-need // CTX_ALIGN) * CTX_ALIGN

    def ctx_for(self, parallel: int) -> int:
        """--ctx-size for `parallel` slots (llama-server splits -c evenly across slots)."""
        return self.ctx_size if self.ctx_size is not None else parallel * self.slot_ctx()
