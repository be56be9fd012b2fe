"""A real tiny llama-server behind a real gateway that stores state (SQLite in a data dir of the test's own, or
a real PostgreSQL database), with two API keys, for the stored-responses, conversations and agents tests.
`restart()` starts a new gateway process on the same store (the restart tests)."""

from __future__ import annotations

import base64
import io
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image

from support.gateway_process import GatewayProcess
from support.llama import LlamaServer

KEY_A, KEY_B = "sk-team-a", "sk-team-b"
KEYS = [{"name": "team-a", "key": KEY_A}, {"name": "team-b", "key": KEY_B}]
LEASE_S = 2.0  # background responses' lease (storage.batches.lease_s): a lost run is failed this fast


class StatefulStack:
    def __init__(self, tmp: Path, llama: LlamaServer, storage_url: str | None = None) -> None:
        self.tmp, self.llama, self.storage_url = tmp, llama, storage_url
        self.data_dir = tmp / "data"
        storage: dict[str, Any] = {"data_dir": str(self.data_dir), "batches": {"lease_s": LEASE_S}}
        if storage_url:
            storage["url"] = storage_url
        self.config: dict[str, Any] = {
            "backends": [{"url": llama.url}],
            "gateway": {"drain_delay_s": 0, "api_keys": KEYS},
            "storage": storage,
        }
        self.gw = self._start()

    def _start(self) -> GatewayProcess:
        gw = GatewayProcess(self.config, self.tmp).start()
        gw.wait_ready()
        return gw

    def restart(self, sig: int | None = None) -> GatewayProcess:
        """Stop the gateway (SIGTERM, or `sig`, e.g. SIGKILL) and start a new one on the same data dir."""
        if sig is None:
            self.gw.stop()
        else:
            self.gw.stop(sig)
        self.gw = self._start()
        return self.gw

    def client(self, key: str = KEY_A, **kwargs: Any) -> openai.OpenAI:
        return sdk_client(self.gw, key, **kwargs)

    def http(self, method: str, path: str, key: str = KEY_A, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.gw.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                             **kwargs)

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the gateway's store directly (what is really kept, not what the API says); `?` placeholders."""
        if self.storage_url:
            import psycopg

            with psycopg.connect(self.storage_url) as conn:
                return list(conn.execute(sql.replace("?", "%s"), params).fetchall())
        with sqlite3.connect(self.data_dir / "vlgate.db", timeout=10) as db:
            return list(db.execute(sql, params))

    def wait_status(self, response_id: str, done: tuple[str, ...] = ("completed", "incomplete", "failed", "cancelled"),
                    timeout: float = 60.0, key: str = KEY_A) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            r = self.client(key).responses.retrieve(response_id)
            if r.status in done or time.monotonic() > deadline:
                return r
            time.sleep(0.05)


@contextmanager
def stateful_stack(tmp: Path, binary: Path, model: Any, *, ctx: int = 4096,
                   storage_url: str | None = None) -> Iterator[StatefulStack]:
    """`model`: the `tiny_model` fixture; `storage_url`: a PostgreSQL database (else SQLite in `tmp`).
    Yields once the gateway's backend is ready."""
    llama = LlamaServer(binary, model.model, mmproj=model.mmproj, slots=2, ctx=ctx, extra_args=["--jinja"],
                        log_dir=tmp / "llama").start()
    stack = None
    try:
        stack = StatefulStack(tmp, llama, storage_url)
        yield stack
    finally:
        if stack is not None:
            stack.gw.stop()
        llama.stop()


_SPEC: dict[str, Any] = {}


# where the spec's schema is stricter than OpenAI's own answers: its examples of a queued or cancelled response
# (POST /responses/{id}/cancel) and of the stream's lifecycle events carry `"usage": null`
_AS_OPENAI_ANSWERS = {"usage: None is not of type 'object'"}


def spec_errors(value: Any, component: str) -> list[str]:
    """What is wrong with `value` as the official spec's `components/schemas/<component>` (tests/data), less
    what OpenAI's own answers do too."""
    import json

    import jsonschema

    if not _SPEC:
        _SPEC.update(json.loads((Path(__file__).parents[1] / "data" / "openai-openapi.json").read_text()))
    validator = jsonschema.Draft202012Validator({**_SPEC, "$ref": f"#/components/schemas/{component}"})
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in validator.iter_errors(value)]
    return [e for e in errors if e not in _AS_OPENAI_ANSWERS]


@contextmanager
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """For a fixture parametrized over "sqlite" / "postgresql": None (SQLite), or a fresh database on the
    session's real PostgreSQL server (dropped afterwards)."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    name = server.new_database()
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


def png(size: tuple[int, int], color: tuple[int, int, int]) -> str:
    """A flat PNG as a data: URL (the gateway normalizes it: a stored item keeps the normalized image)."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def sdk_error(call: Any) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the SDK call's error (it must fail)."""
    with pytest.raises(openai.APIStatusError) as exc:
        call()
    assert isinstance(exc.value.body, dict)
    return exc.value.status_code, exc.value.body


def sdk_client(gw: GatewayProcess, key: str, *, max_retries: int = 0, **kwargs: Any) -> openai.OpenAI:
    """The strict openai SDK on a gateway process, as key `key`."""
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, _strict_response_validation=True,
                         max_retries=max_retries, **kwargs)
