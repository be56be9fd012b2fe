#!/usr/bin/env python3
"""GPU check: a CUDA llama-server, one backend per GPU under `vlgate up`, the gateway, NVML numbers.

    python scripts/gpu_check.py [--server-binary PATH] [--ready-timeout 900] [--keep]

On a machine with NVIDIA GPUs it
  1. finds the GPUs as `vlgate up` does (CUDA_VISIBLE_DEVICES, else nvidia-smi: vlgate/launcher/gpus.py);
  2. obtains a CUDA llama-server: `VLGATE_BUILD_CUDA=1 vlgate install-server` (the pinned source built with
     the portable flags plus -DGGML_CUDA=ON, cached under ~/.cache/vlgate; a llama-server on PATH comes
     first, so when that one sees no CUDA device the cached CUDA build is made instead), and checks with
     `llama-server --list-devices` that it sees CUDA devices;
  3. runs `vlgate up` with the tiny model of `vlgate up --demo` on every GPU (`--demo` itself pins the tiny
     model to two CPU backends, so the same model goes in a config that names the GPUs), free ports;
  4. waits for `/ready` with every backend ready, sends a text and an image chat completion through the
     gateway, and reads `GET /status` until every backend shows `gpu_stats` (NVML, nvidia-ml-py);
  5. prints a short report: GPUs, backends ready, per-GPU memory used (and what the backends added), the
     chat latencies; then stops `vlgate up` (SIGTERM: it drains and stops its backends).

Exit status: 0 all checks passed; 1 a check failed (one `gpu_check: FAIL: ...` line says which);
2 this machine cannot run the check (no NVIDIA GPU, no CUDA toolkit to build with), said in one line.
Nothing is built or started when there is no GPU.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

try:
    import vlgate  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vlgate.launcher import gpus as gpu_detect  # stdlib only: the no-GPU answer costs nothing

MIB = 1024 * 1024


class CheckFailed(Exception):
    pass


def say(msg: str) -> None:
    print(f"gpu_check: {msg}", flush=True)


def cannot_run(msg: str) -> NoReturn:
    print(f"gpu_check: FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


def vlgate_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vlgate.cli", *args]


def find_gpus() -> list[str]:
    found = gpu_detect.detect()
    if found:
        return found
    if gpu_detect.from_env(os.environ) is not None:
        why = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
    elif shutil.which("nvidia-smi") is None:
        why = "no nvidia-smi on PATH: no NVIDIA driver"
    else:
        why = "nvidia-smi lists no GPU"
    cannot_run(f"no NVIDIA GPU on this machine ({why}); this check needs one")


def cuda_devices(binary: Path) -> list[str]:
    """`llama-server --list-devices` lines naming a CUDA device ([] for a CPU build)."""
    try:
        out = subprocess.run([str(binary), "--list-devices"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CheckFailed(f"{binary} --list-devices: {exc}") from None
    return [line.strip() for line in (out.stdout + out.stderr).splitlines() if line.strip().startswith("CUDA")]


def server_binary(given: str | None) -> tuple[Path, list[str]]:
    if given:
        binary = Path(given)
        devices = cuda_devices(binary)
        if not devices:
            raise CheckFailed(f"{binary} sees no CUDA device (a CPU build? `--list-devices` lists none)")
        return binary, devices
    env = {**os.environ, "VLGATE_BUILD_CUDA": "1"}
    if shutil.which("llama-server") is None and (shutil.which("nvcc") is None or shutil.which("cmake") is None):
        missing = " and ".join(t for t in ("nvcc", "cmake") if shutil.which(t) is None)
        cannot_run(f"no {missing} on PATH to build the CUDA llama-server (install the CUDA toolkit and cmake, "
                   "or pass --server-binary)")
    say("obtaining llama-server: VLGATE_BUILD_CUDA=1 vlgate install-server (a first CUDA build takes a while)")
    out = subprocess.run(vlgate_cmd("install-server"), env=env, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise CheckFailed(f"vlgate install-server exited {out.returncode} (its output is above)")
    binary = Path(out.stdout.strip().splitlines()[-1])
    devices = cuda_devices(binary)
    if devices:
        return binary, devices
    say(f"{binary} sees no CUDA device (a CPU build first on PATH?): building the cached CUDA one")
    code = "from vlgate.launcher.binary import build_server; print(build_server(cuda=True))"
    out = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        raise CheckFailed(f"building the CUDA llama-server failed (exit {out.returncode}; its output is above)")
    binary = Path(out.stdout.strip().splitlines()[-1])
    devices = cuda_devices(binary)
    if not devices:
        raise CheckFailed(f"{binary}, built with -DGGML_CUDA=ON, sees no CUDA device (driver/runtime mismatch?)")
    return binary, devices


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_now(found: list[str]) -> dict[str, int | None]:
    from vlgate.gateway.observe.gpustats import Gpus

    nvml = Gpus()
    try:
        return {g: (s.memory_used if (s := nvml.sample(g)) else None) for g in found}
    finally:
        nvml.close()


def png_data_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Up:
    """`vlgate up` on a config naming the GPUs; stopped with SIGTERM (drain, then its backends)."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.path = workdir / "gpu_check.yaml"
        self.path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self.log_path = workdir / "vlgate-up.log"
        self.url = f"http://127.0.0.1:{config['gateway']['port']}"
        env = {k: v for k, v in os.environ.items() if k != "VLGATE_API_KEYS"}  # no keys: /status shows all
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(vlgate_cmd("up", "--config", str(self.path)), stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def tail(self, n: int = 15) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\n".join("    " + line for line in lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: vlgate and its llama-servers
                self.proc.wait(10)


def wait_ready(up: Up, count: int, timeout: float) -> tuple[list[dict[str, Any]], float]:
    import httpx

    started = time.monotonic()
    body: dict[str, Any] = {}
    while time.monotonic() - started < timeout:
        if up.proc.poll() is not None:
            raise CheckFailed(f"vlgate up exited {up.proc.returncode} before it was ready; its log ends:\n{up.tail()}")
        try:
            body = httpx.get(up.url + "/ready", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            body = {}
        backends = body.get("backends") or []
        if body.get("status") == "ready" and len(backends) == count and all(b.get("state") == "ready"
                                                                              for b in backends):
            return backends, time.monotonic() - started
        time.sleep(1)
    states = ", ".join(f"{b.get('name')} {b.get('state')}" for b in body.get("backends") or []) or "no answer"
    raise CheckFailed(f"not every backend was ready within {timeout:g} s ({states}); vlgate up's log ends:\n"
                      f"{up.tail()}")


def chat(url: str, model: str, content: Any) -> float:
    import httpx

    body = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": content}]}
    started = time.monotonic()
    try:
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
    except httpx.HTTPError as exc:
        raise CheckFailed(f"chat completion: {type(exc).__name__}: {exc}") from None
    ms = (time.monotonic() - started) * 1000
    if r.status_code != 200:
        raise CheckFailed(f"chat completion answered {r.status_code}: {r.text[:300]}")
    choice = r.json()["choices"][0]
    if not isinstance(choice["message"].get("content"), str):
        raise CheckFailed(f"chat completion without text: {json.dumps(choice)[:300]}")
    return ms


def gpu_status(url: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
    import httpx

    deadline = time.monotonic() + timeout
    backends: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        r = httpx.get(url + "/status", timeout=10)
        if r.status_code == 200:
            backends = r.json().get("backends") or []
            if len(backends) == count and all(b.get("gpu_stats") for b in backends):
                return backends
        time.sleep(1)
    missing = ", ".join(str(b.get("name")) for b in backends if not b.get("gpu_stats")) or "all"
    raise CheckFailed(f"GET /status shows no gpu_stats for {missing} within {timeout:g} s "
                      "(is nvidia-ml-py installed, and NVML working: `nvidia-smi`?)")


def run(args: argparse.Namespace, found: list[str]) -> None:
    from vlgate.config import load_config
    from vlgate.launcher.binary import cache_root
    from vlgate.tinymodel.model import write_tiny_model

    binary, devices = server_binary(args.server_binary)
    say(f"llama-server: {binary} ({'; '.join(devices)})")
    tiny = write_tiny_model(cache_root() / "demo")  # the model of `vlgate up --demo`
    before = memory_now(found)
    model = load_config(None).gateway.model
    workdir = Path(tempfile.mkdtemp(prefix="vlgate-gpu-check-"))
    config = {
        "gateway": {"host": "127.0.0.1", "port": args.port or free_port(), "model": model, "api_keys": [],
                    "drain_grace_s": 10},
        "launcher": {"server_binary": str(binary), "gpus": found, "parallel": 2, "n_predict": 256, "port_base": 0,
                     "model": {"path": str(tiny.model), "mmproj": str(tiny.mmproj)},
                     "log_dir": str(workdir / "logs"), "load_timeout_s": args.ready_timeout, "stop_timeout_s": 10},
    }
    up = Up(config, workdir)
    try:
        backends, took = wait_ready(up, len(found), args.ready_timeout)
        say(f"backends ready: {len(backends)}/{len(found)} "
            f"({', '.join(str(b.get('name')) for b in backends)}) after {took:.1f} s; gateway {up.url}")
        chat(up.url, model, "Hello")  # the first request per backend warms it; the next ones are timed
        text_ms = chat(up.url, model, "Hello")
        image_ms = chat(up.url, model, [{"type": "image_url", "image_url": {"url": png_data_url()}},
                                        {"type": "text", "text": "What is in this picture?"}])
        say(f"chat completion through the gateway: {text_ms:.0f} ms (text, 16 tokens), {image_ms:.0f} ms (image)")
        bad = []
        for b in gpu_status(up.url, len(found)):
            gpu, stats = str(b.get("gpu")), b["gpu_stats"]
            used, total = stats["memory_used"], stats["memory_total"]
            grown = "" if before.get(gpu) is None else f", +{(used - before[gpu]) / MIB:.0f} MiB with the backend"
            say(f"GPU {gpu} ({b.get('name')}): {used / MIB:.0f} / {total / MIB:.0f} MiB used{grown}, "
                f"{stats['utilization']}% busy, served {b.get('served')}")
            if before.get(gpu) is not None and used <= before[gpu]:
                bad.append(gpu)
        if bad:
            raise CheckFailed(f"GPU memory did not grow on GPU {', '.join(bad)}: the backend is not on that GPU?")
    finally:
        up.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"config and logs kept in {workdir}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="exit status: 0 passed, 1 a check failed, 2 cannot run here (no GPU)")
    p.add_argument("--server-binary", metavar="PATH", help="a CUDA llama-server to use instead of building one")
    p.add_argument("--port", type=int, help="the gateway's port (default: a free one)")
    p.add_argument("--ready-timeout", type=float, default=900.0, metavar="SECONDS",
                   help="for every backend to be ready (default 900)")
    p.add_argument("--keep", action="store_true", help="keep the generated config and the logs")
    args = p.parse_args(argv)
    found = find_gpus()
    say(f"GPUs: {', '.join(found)}")
    try:
        run(args, found)
    except CheckFailed as exc:
        print(f"gpu_check: FAIL: {exc}", file=sys.stderr, flush=True)
        return 1
    say("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
