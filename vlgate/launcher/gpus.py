"""Which GPUs this machine has: CUDA_VISIBLE_DEVICES first, else `nvidia-smi`.

`nvcc` says nothing about GPUs (a CUDA toolkit installs fine on a CPU box), so it is never
consulted. The tokens returned are what each backend gets as its own CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping


def from_env(env: Mapping[str, str]) -> list[str] | None:
    """GPUs named by CUDA_VISIBLE_DEVICES; None when the variable is unset.

    Set but empty (or starting with -1) means "no GPU", as it does for CUDA itself.
    """
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    tokens: list[str] = []
    for token in (t.strip() for t in raw.split(",")):
        if not token or token.startswith("-"):
            break  # CUDA stops enumerating at the first invalid entry
        tokens.append(token)
    return tokens


def from_nvidia_smi(timeout: float = 20.0) -> list[str]:
    """GPU indices reported by nvidia-smi; [] when it is missing or finds none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


def detect(env: Mapping[str, str] | None = None) -> list[str]:
    """Visible GPUs, as CUDA_VISIBLE_DEVICES tokens (indices or UUIDs); [] = CPU only."""
    visible = from_env(os.environ if env is None else env)
    return visible if visible is not None else from_nvidia_smi()
