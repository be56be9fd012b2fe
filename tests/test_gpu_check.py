"""scripts/gpu_check.py on a machine without a GPU: one clear line, exit 2, nothing built or started.

The GPU is hidden both ways `vlgate up` would look for one (vlgate/launcher/gpus.py), so this holds on a
GPU machine too: CUDA_VISIBLE_DEVICES set empty, or unset with no nvidia-smi on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.py"


@pytest.mark.parametrize("hidden", ["CUDA_VISIBLE_DEVICES empty", "no nvidia-smi on PATH"])
def test_without_a_gpu_it_fails_in_one_line_and_builds_nothing(hidden: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["VLGATE_CACHE_DIR"] = str(cache)  # a build or the tiny model would land here
    if hidden == "CUDA_VISIBLE_DEVICES empty":
        env["CUDA_VISIBLE_DEVICES"] = ""
        expected = "CUDA_VISIBLE_DEVICES='' hides every GPU"
    else:
        (tmp_path / "bin").mkdir()
        env["PATH"] = str(tmp_path / "bin")  # no nvidia-smi, nvcc, cmake or llama-server
        expected = "no nvidia-smi on PATH"
    started = time.monotonic()
    r = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=60, check=False)
    assert time.monotonic() - started < 30
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    (line,) = r.stderr.splitlines()
    assert line.startswith("gpu_check: FAIL: no NVIDIA GPU on this machine (") and expected in line, line
    assert not cache.exists()  # nothing built, no model written
