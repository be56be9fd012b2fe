"""The store inside a real gateway process (`vlgate serve`): SQLite in the data directory by default,
PostgreSQL when `storage.url` names it, the retention sweeper, the store's size in /metrics and /status,
and a clear startup error when the database cannot be reached."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

from support.fakebackend import FakeBackend
from support.gateway_process import GatewayProcess
from support.llama import free_port
from support.wait import wait_until
from vlgate.store import new_store
from vlgate.store.base import BATCH, RESPONSE, Record, Store


@contextlib.contextmanager
def gateway(tmp: Path, storage: dict[str, Any] | None = None, data_dir: Path | None = None) -> Iterator[GatewayProcess]:
    fb = FakeBackend().start()
    config: dict[str, Any] = {"backends": [{"url": fb.url}]}
    if storage is not None:
        config["storage"] = storage
    gw = GatewayProcess(config, tmp, env={"VLGATE_DATA_DIR": str(data_dir)} if data_dir else None)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        fb.stop()


def status(gw: GatewayProcess) -> dict[str, Any]:
    store: dict[str, Any] = httpx.get(gw.url + "/status", timeout=5).json()["store"]
    return store


def metric(gw: GatewayProcess, name: str, **labels: str) -> float | None:
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
    m = re.search(rf"^{re.escape(name + wanted)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def in_store(url: str, scenario: Any) -> Any:
    """Runs `await scenario(store)` on a store of our own on the gateway's database (another replica)."""
    async def main() -> Any:
        store: Store = new_store(url)
        await store.start()
        try:
            return await scenario(store)
        finally:
            await store.close()
    return asyncio.run(main())


def test_default_store_is_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with gateway(tmp_path, data_dir=data) as gw:
        block = status(gw)
        assert block["enabled"] is True and block["backend"] == "sqlite"
        assert block["url"] == f"sqlite:///{data}/vlgate.db"
        assert (data / "vlgate.db").is_file()
        assert gw.stop() == 0  # a clean shutdown closes the store
    with sqlite3.connect(data / "vlgate.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] >= 1


def test_storage_disabled_keeps_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with gateway(tmp_path, storage={"enabled": False}, data_dir=data) as gw:
        assert status(gw) == {"enabled": False}
        assert metric(gw, "vlgate_store_records", kind="response") is None
    assert not data.exists()


def test_postgres_store_with_size_in_metrics_and_status(tmp_path: Path, postgres_url: str) -> None:
    url = postgres_url.replace("postgresql://vlgate@", "postgresql://vlgate:s3cretpw@")  # trust auth ignores it
    data = tmp_path / "data"
    with gateway(tmp_path, storage={"url": url}, data_dir=data) as gw:
        block = status(gw)
        assert block["backend"] == "postgresql" and block["url"] == url.replace("s3cretpw", "***")
        assert "s3cretpw" not in httpx.get(gw.url + "/status", timeout=5).text
        assert not data.exists()  # nothing in SQLite

        async def fill(store: Store) -> None:
            await store.add([Record(RESPONSE, "resp_1", "alice", {"id": "resp_1", "text": "x" * 500}),
                             Record(RESPONSE, "resp_2", "bob", {"id": "resp_2"}),
                             Record(BATCH, "batch_1", "alice", {"id": "batch_1", "status": "in_progress"}),
                             Record(BATCH, "batch_2", "alice", {"id": "batch_2", "status": "completed"})])
        in_store(postgres_url, fill)
        wait_until(lambda: metric(gw, "vlgate_store_records", kind="response") == 2, 10, "response count in /metrics")
        size = metric(gw, "vlgate_store_bytes", kind="response")
        assert size is not None and 500 < size < 700
        assert metric(gw, "vlgate_store_records", kind="batch") == 2
        assert metric(gw, "vlgate_batches", status="in_progress") == 1
        assert metric(gw, "vlgate_batches", status="completed") == 1
        block = status(gw)
        assert block["kinds"]["response"]["records"] == 2 and block["batches"] == {"completed": 1, "in_progress": 1}
        with psycopg.connect(postgres_url) as conn:  # the gateway made the schema there
            assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (1,)


def test_sweeper_deletes_expired_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    url = f"sqlite:///{data}/vlgate.db"
    with gateway(tmp_path, storage={"retention": {"sweep_interval_s": 0.2}}, data_dir=data) as gw:
        async def fill(store: Store) -> None:
            now = time.time()
            await store.add([Record(RESPONSE, "resp_old", "alice", {"id": "resp_old"}, expires_at=now + 0.5),
                             Record(RESPONSE, "resp_kept", "alice", {"id": "resp_kept"}, expires_at=now + 3600)])
        in_store(url, fill)

        async def present(store: Store) -> list[str]:
            return [r.id for r in (await store.list_page(RESPONSE, "alice"))[0]]
        assert in_store(url, present) == ["resp_kept", "resp_old"]
        took = wait_until(lambda: in_store(url, present) == ["resp_kept"], 10, "the sweeper to delete resp_old")
        assert took < 5
        wait_until(lambda: metric(gw, "vlgate_store_swept_records_total") == 1, 5, "swept count in /metrics")


def test_unreachable_database_is_a_clear_startup_error(tmp_path: Path) -> None:
    url = f"postgresql://vlgate:s3cretpw@127.0.0.1:{free_port()}/vlgate"
    fb = FakeBackend().start()
    gw = GatewayProcess({"backends": [{"url": fb.url}], "storage": {"url": url}}, tmp_path)
    try:
        try:
            gw.start(timeout=30)
        except RuntimeError as exc:
            failure = str(exc)
        else:
            raise AssertionError("the gateway started without its database")
    finally:
        gw.stop()
        fb.stop()
    assert gw.proc is not None and gw.proc.returncode not in (0, None)
    assert url.replace("s3cretpw", "***") in failure
    assert "s3cretpw" not in gw.log_path.read_text()
