"""Gateway memory across backend restarts: `vlgate up --demo`, SIGKILL a llama-server N times, sample RSS.

    python bench/restart_memory.py --kills 40

Prints the vlgate process's RSS (MB) after warm-up and after every 10 kills, and the growth per kill.
Only loopback addresses; every process started is stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from common import children, free_port, rss_mb


def wait_ready(url: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            body = httpx.get(url + "/ready", timeout=2).json()
            if sum(b.get("state") == "ready" for b in body.get("backends", [])) >= n:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    raise SystemExit(f"not {n} ready backends within {timeout}s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=40)
    args = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "up.yaml"
        cfg.write_text(yaml.safe_dump({
            "gateway": {"port": port},
            "launcher": {"restart": {"backoff_initial_s": 0.05, "backoff_max_s": 0.1, "backoff_jitter_s": 0.01,
                                     "crash_loop_count": 10_000}},
        }))
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "vlgate.cli", "up", "--demo", "--config", str(cfg),
                                 "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(url, 2)
            for _ in range(5):  # warm-up: first restarts allocate what later ones reuse
                os.kill(children(proc.pid)[0], signal.SIGKILL)
                time.sleep(0.3)
                wait_ready(url, 2)
            start = rss_mb(proc.pid)
            print(f"after warm-up: {start:.1f} MB")
            for i in range(1, args.kills + 1):
                os.kill(children(proc.pid)[0], signal.SIGKILL)
                time.sleep(0.3)
                wait_ready(url, 2)
                if i % 10 == 0:
                    print(f"after {i} kills: {rss_mb(proc.pid):.1f} MB")
            end = rss_mb(proc.pid)
            print(f"growth: {(end - start) * 1024 / args.kills:.1f} KB per kill and restart "
                  f"({start:.1f} -> {end:.1f} MB over {args.kills})")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
