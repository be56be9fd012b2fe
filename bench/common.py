"""What the bench scripts share: a free loopback port, waiting for a URL to answer 200."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def rss_mb(pid: int) -> float:
    """A process's resident memory (MB), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (e.g. the llama-servers of a `vlgate up`)."""
    import os

    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(") ", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def machine() -> str:
    """The CPU model and core count, for a result's "how measured" line."""
    import os
    import platform
    from pathlib import Path

    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                 platform.processor())
    return f"{model}, {os.cpu_count()} cores"


def emit(lines: list[str], markdown: str | None) -> None:
    """Print a result's markdown section, and write it to `markdown` (bench/report.py collects them) if given."""
    from pathlib import Path

    text = "\n".join(lines).rstrip("\n") + "\n"
    print(text)
    if markdown:
        Path(markdown).write_text(text)
