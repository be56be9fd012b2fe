"""systemd units: `systemd-analyze verify` finds nothing to say, and the settings match vlgate's drain.

systemd-analyze is required (Debian: `apt-get install -y --no-install-recommends systemd`); without it
these tests fail rather than skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vlgate.config import load_config

UNITS = Path(__file__).parents[1] / "systemd"
GPU_UNITS = ["vlgate.service", "vlgate-launch.service"]
ALL_UNITS = [*GPU_UNITS, "vlgate-serve.service"]
INSTALLED = "/opt/vlgate/venv/bin/vlgate"


def analyze() -> str:
    """systemd-analyze, installed from Debian's packages when missing (the test setup's job, not the user's)."""
    tool = shutil.which("systemd-analyze")
    if tool is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"],
                       capture_output=True, env=env, timeout=600)
        tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: apt-get install -y --no-install-recommends systemd"
    return tool


def directives(name: str) -> dict[str, list[str]]:
    """`Section.Key` -> values (keys such as Environment= may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def verify(tmp_path: Path, names: list[str], edit: tuple[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Verify copies whose ExecStart points at this machine's vlgate (verify checks it is executable)."""
    vlgate = shutil.which("vlgate")
    assert vlgate, "vlgate console script missing (pip install -e .)"
    paths = []
    for name in names:
        text = (UNITS / name).read_text().replace(INSTALLED, vlgate)
        if edit:
            text = text.replace(*edit)
        (tmp_path / name).write_text(text)
        paths.append(str(tmp_path / name))
    return subprocess.run([analyze(), "verify", *paths], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def test_units_verify_cleanly(tmp_path: Path) -> None:
    r = verify(tmp_path, ALL_UNITS)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_verify_would_catch_a_broken_unit(tmp_path: Path) -> None:
    r = verify(tmp_path, ["vlgate.service"], ("KillMode=mixed", "KillMode=gently"))
    assert "Failed to parse kill mode specification, ignoring: gently" in r.stderr


@pytest.mark.parametrize("name", ALL_UNITS)
def test_stop_matches_the_drain(name: str) -> None:
    d = directives(name)
    config = load_config()
    assert d["Service.KillMode"] == ["mixed"]  # SIGTERM to vlgate alone; it stops its own children in order
    assert d["Service.KillSignal"] == ["SIGTERM"]
    assert d["Service.Restart"] == ["on-failure"]
    assert d["Service.EnvironmentFile"] == ["-/etc/vlgate/vlgate.env"]
    needed = config.gateway.drain_grace_s + (config.launcher.stop_timeout_s if name in GPU_UNITS else 0)
    assert int(d["Service.TimeoutStopSec"][0]) >= needed + 10
    command = {"vlgate.service": "up", "vlgate-launch.service": "launch", "vlgate-serve.service": "serve"}[name]
    assert d["Service.ExecStart"] == [f"{INSTALLED} {command} --config /etc/vlgate/config.yaml"]


@pytest.mark.parametrize("name", GPU_UNITS)
def test_gpu_units_keep_the_gpu_reachable(name: str) -> None:
    d = directives(name)
    for breaks_cuda in ("PrivateDevices", "MemoryDenyWriteExecute", "DevicePolicy", "ProcSubset", "PrivateUsers"):
        assert f"Service.{breaks_cuda}" not in d, breaks_cuda
    for hardening in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "ProtectKernelModules"):
        assert d[f"Service.{hardening}"] != ["no"]
    assert d["Service.ExecStartPre"] == [f"{INSTALLED} install-server --config /etc/vlgate/config.yaml"]
    assert "Service.CacheDirectory" in d  # writable llama-server build + Hugging Face cache under ProtectSystem


def test_env_file_example_names_the_secrets() -> None:
    text = (UNITS / "vlgate.env.example").read_text()
    for key in ("HF_TOKEN=", "HF_HUB_OFFLINE=", "VLGATE_API_KEYS=", "CUDA_VISIBLE_DEVICES="):
        assert key in text
