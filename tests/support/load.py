"""Steady client load on a gateway from a few threads (half of them streams), counting every failure.

A stream counts as good only when it ends with `data: [DONE]`: a cut stream is a failure too.
"""

from __future__ import annotations

import threading
from typing import Self

import httpx


class Load:
    def __init__(self, url: str, threads: int = 4, max_tokens: int = 300, api_key: str | None = None) -> None:
        self.url, self.max_tokens, self.ok, self.failed = url, max_tokens, 0, []
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        body = {"model": "youtu-vl", "max_tokens": self.max_tokens, "stream": i % 2 == 1,
                "messages": [{"role": "user", "content": f"worker {i}"}]}
        with httpx.Client(timeout=60, headers=self.headers) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url + "/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    self.failed.append(repr(exc))
                    continue
                if r.status_code == 200 and (not body["stream"] or r.text.rstrip().endswith("data: [DONE]")):
                    self.ok += 1
                else:
                    self.failed.append(f"{r.status_code} {r.text[:200]}")

    def __enter__(self) -> Self:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)
