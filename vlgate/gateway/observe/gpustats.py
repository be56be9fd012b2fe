"""GPU memory and utilisation of a backend's GPU through NVML (nvidia-ml-py), when there is one.

Only for backends `vlgate up` launched on a GPU (`Backend.gpu`). No NVIDIA driver, no NVML, or a GPU
token NVML does not know: nothing is reported (the page shows nothing rather than a guess).
CUDA_VISIBLE_DEVICES tokens are NVML indices when CUDA_DEVICE_ORDER=PCI_BUS_ID (as nvidia-smi numbers
them) or GPU UUIDs; both are accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("vlgate.gateway.observe.gpustats")


@dataclass(frozen=True, slots=True)
class GpuSample:
    memory_used: int
    memory_total: int
    utilization: int  # percent of the last sample period

    def describe(self) -> dict[str, int]:
        return {"memory_used": self.memory_used, "memory_total": self.memory_total, "utilization": self.utilization}


class Gpus:
    """Lazy NVML: initialised on the first GPU asked about; a failure switches it off for good."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._off = False
        self._handles: dict[str, Any] = {}

    def _init(self) -> Any:
        if self._nvml is None and not self._off:
            try:
                import pynvml
            except ImportError as exc:
                log.info("nvidia-ml-py missing, no GPU numbers on the status page: %s", exc)
                self._off = True
                return None
            try:
                pynvml.nvmlInit()
                self._nvml = pynvml
            except pynvml.NVMLError as exc:  # no driver, no GPU: no numbers
                log.info("NVML unavailable, no GPU numbers on the status page: %s", exc)
                self._off = True
        return self._nvml

    def sample(self, gpu: str | None) -> GpuSample | None:
        if gpu is None or "," in gpu:
            return None
        nvml = self._init()
        if nvml is None:
            return None
        try:
            handle = self._handles.get(gpu)
            if handle is None:
                handle = (nvml.nvmlDeviceGetHandleByIndex(int(gpu)) if gpu.isdigit()
                          else nvml.nvmlDeviceGetHandleByUUID(gpu))
                self._handles[gpu] = handle
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            return GpuSample(int(mem.used), int(mem.total), int(util.gpu))
        except (nvml.NVMLError, ValueError) as exc:  # an unknown token, a GPU fallen off the bus
            log.debug("NVML sample of GPU %s failed: %s", gpu, exc)
            return None

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                log.debug("NVML shutdown failed: %s", exc)
            self._nvml = None
