"""Run the gateway under uvicorn with a drain on SIGTERM/SIGINT.

On a signal: `/ready` turns 503 at once, the listener stays open while in-flight work runs
(gateway/drain.py), then uvicorn closes it.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette

from vlgate.gateway.frontdoor.drain import DrainingServer
from vlgate.gateway.frontdoor.hosts import HostPolicy
from vlgate.gateway.frontdoor.protocol import FrontDoorLimits, guarded_protocol

log = logging.getLogger("vlgate.gateway.server")


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


def host_policy(app: Starlette, bind_host: str) -> Callable[[], HostPolicy]:
    """The `Host` policy of the current config (a reload may change `allowed_hosts`), built once per change."""
    gw = app.state.gateway
    built: list[tuple[list[str], HostPolicy]] = []

    def current() -> HostPolicy:
        allowed = gw.config.gateway.allowed_hosts
        if not built or built[0][0] is not allowed:
            built[:] = [(allowed, HostPolicy.for_bind(bind_host, allowed))]
        return built[0][1]

    if not current().check and not gw.keys.enabled:
        log.warning("listening on %s with no API keys and no Host check: anyone who can reach it may use it, "
                    "see every backend and call /admin", bind_host or "all addresses")
    return current


def uvicorn_config(app: Starlette, host: str, port: int, grace_s: float) -> uvicorn.Config:
    limits = app.state.gateway.config.gateway.limits
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=guarded_protocol(FrontDoorLimits(limits.max_header_bytes, limits.max_headers, limits.header_timeout_s,
                                               limits.max_connections), host_policy(app, host)),
        ws="none",  # no WebSocket routes: an Upgrade request is an ordinary request (the Host check applies)
        access_log=False,
        # no handlers of uvicorn's own: its loggers propagate to the root's, so its lines take the gateway's
        # format (one JSON object per line with --log-json, cli/common.py)
        log_config=None,
        log_level="warning",
        timeout_graceful_shutdown=int(grace_s) if grace_s else None,
        lifespan="on",
        backlog=2048,
        # X-Forwarded-For rewriting costs ~4% of a core at c=16 (py-spy), and nothing here reads the client
        # address: an operator's load balancer in front keeps its own logs
        proxy_headers=False,
    )


async def serve(app: Starlette, host: str, port: int, grace_s: float) -> None:
    """Serve until SIGTERM/SIGINT, then drain. Returns when the gateway has stopped."""
    check_port_free(host, port)
    server = DrainingServer(uvicorn_config(app, host, port, grace_s), app.state.gateway)
    await server.serve()


def run(app: Starlette, host: str, port: int, grace_s: float) -> None:
    import asyncio

    import uvloop

    uvloop.install() if hasattr(uvloop, "install") else None
    asyncio.run(serve(app, host, port, grace_s))
