"""A real tiny llama-server, or the recording fake backend, behind a real gateway (`vlgate serve`), for
module-scoped fixtures."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.llama import LlamaServer


@contextlib.contextmanager
def llama_behind_gateway(tmp: Path, binary: Path, model: Any, *, mmproj: bool = False, slots: int = 2,
                         ctx: int = 2048, extra_args: Sequence[str] = ("--jinja",),
                         gateway: dict[str, Any] | None = None) -> Iterator[tuple[GatewayProcess, LlamaServer]]:
    """`model`: the `tiny_model` fixture. Yields once the gateway's /ready says 200 (works with API keys too)."""
    server = LlamaServer(binary, model.model, mmproj=model.mmproj if mmproj else None, slots=slots, ctx=ctx,
                         extra_args=extra_args, log_dir=tmp / "llama").start()
    # drain_delay_s 0: a test gateway stops at once (the delay is for load balancers)
    gw = GatewayProcess({"backends": [{"url": server.url}], "gateway": {"drain_delay_s": 0, **(gateway or {})}}, tmp)
    try:
        gw.start()
        deadline = time.monotonic() + 30
        while httpx.get(gw.url + "/ready", timeout=2).status_code != 200:
            assert time.monotonic() < deadline, gw.log()
            time.sleep(0.05)
        yield gw, server
    finally:
        gw.stop()
        server.stop()


@contextlib.contextmanager
def fake_behind_gateway(tmp: Path, gateway: dict[str, Any] | None = None,
                        **fake: Any) -> Iterator[tuple[GatewayProcess, FakeBackend]]:
    """A recording FakeBackend (`fake`: its fields) behind a gateway, ready."""
    fb = FakeBackend(**fake).start()
    gw = GatewayProcess({"backends": [{"url": fb.url}], "gateway": {"drain_delay_s": 0, **(gateway or {})}}, tmp)
    try:
        gw.start()
        gw.wait_ready()
        yield gw, fb
    finally:
        gw.stop()
        fb.stop()


@contextlib.contextmanager
def stopped_at_exit() -> Iterator[list[tuple[GatewayProcess, Any]]]:
    """A list a test fixture appends its (gateway, backend) pairs to: all stopped, by PID, when it ends."""
    started: list[tuple[GatewayProcess, Any]] = []
    try:
        yield started
    finally:
        for gw, backend in started:
            gw.stop()
            backend.stop()
