"""Drop-in model names: the ids (and aliases) the backends report on their own `GET /v1/models`.

An app that talked to llama-server directly names its model by llama-server's id (the GGUF path, or
`--alias`); pointed at the gateway it keeps working, because the gateway serves those ids as well as
its configured name. Fetched once per backend, the first time it is ready.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from vlgate.backends import Backend, BackendState

log = logging.getLogger("vlgate.gateway.fleet.model_names")


def reported_ids(models: Any) -> list[str]:
    """Ids and aliases from an OpenAI-style `/v1/models` answer (llama-server adds `aliases`)."""
    ids: list[str] = []
    for card in (models.get("data") if isinstance(models, dict) else None) or ():
        if not isinstance(card, dict):
            continue
        for name in [card.get("id"), *(card.get("aliases") or ())]:
            if isinstance(name, str) and name and name not in ids:
                ids.append(name)
    return ids


class BackendModels:
    def __init__(self) -> None:
        self._ids: dict[str, list[str]] = {}  # backend name -> ids; [] while fetching
        self._tasks: set[asyncio.Task[None]] = set()

    def ids(self) -> list[str]:
        """Every reported id, in backend order, without repeats."""
        return list(dict.fromkeys(name for ids in self._ids.values() for name in ids))

    def on_state(self, backend: Backend, client: httpx.AsyncClient) -> None:
        """A backend listener: fetch its ids the first time it is ready."""
        if backend.state is not BackendState.READY or backend.name in self._ids:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # state set from outside the loop: fetch at the next transition
            return
        self._ids[backend.name] = []
        task = loop.create_task(self._fetch(backend, client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, backend: Backend, client: httpx.AsyncClient) -> None:
        try:
            r = await client.get(backend.url + "/v1/models", headers=backend.auth_headers())
            r.raise_for_status()
            self._ids[backend.name] = reported_ids(r.json())
        except (httpx.HTTPError, ValueError) as exc:  # unknown for now: try again when it is next ready
            log.warning("model ids of %s unavailable: %s", backend.name, exc)
            self._ids.pop(backend.name, None)
