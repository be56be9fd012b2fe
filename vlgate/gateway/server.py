"""Run the gateway under uvicorn with a drain on SIGTERM/SIGINT.

On a signal: `/ready` turns 503 at once (the balancer is marked draining), uvicorn stops
accepting, and in-flight requests and streams get `grace_s` to finish.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette


class PortInUse(Exception):
    pass


def check_port_free(host: str, port: int) -> None:
    """Fail early with a clear line instead of uvicorn's traceback-ish exit."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {host} is already in use; pick another with --port") from None
            raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_drain = on_drain

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._on_drain()
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after shutdown; a finished drain is a clean exit (0), and the
        # launcher still has backends to stop after serve() returns
        self._captured_signals.clear()


def uvicorn_config(app: Starlette, host: str, port: int, grace_s: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=int(grace_s) if grace_s else None,
        lifespan="on",
        backlog=2048,
    )


async def serve(app: Starlette, host: str, port: int, grace_s: float) -> None:
    """Serve until SIGTERM/SIGINT, then drain. Returns when the gateway has stopped."""
    check_port_free(host, port)
    gateway = app.state.gateway
    server = _DrainingServer(uvicorn_config(app, host, port, grace_s), on_drain=gateway.start_draining)
    await server.serve()


def run(app: Starlette, host: str, port: int, grace_s: float) -> None:
    import asyncio

    import uvloop

    uvloop.install() if hasattr(uvloop, "install") else None
    asyncio.run(serve(app, host, port, grace_s))
