"""Migrations: replicas starting at once on one fresh database each succeed and the schema is applied once;
a reopened SQLite file keeps its data; a database that cannot be reached, or a PostgreSQL URL without the
driver installed, is a clear error that never shows the password."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from support.llama import free_port
from vlgate.store import migrations, new_store
from vlgate.store.base import RESPONSE, Record, Store, StoreError


async def _start_many(url: str, n: int) -> list[Store]:
    stores = [new_store(url) for _ in range(n)]
    await asyncio.gather(*(store.start() for store in stores))
    return stores


async def _close(stores: list[Store]) -> None:
    for store in stores:
        await store.close()


def test_replicas_starting_at_once_on_fresh_postgres(postgres_url: str) -> None:
    async def main() -> None:
        stores = await _start_many(postgres_url, 6)
        try:  # every replica works on the one schema
            await stores[0].add([Record(RESPONSE, "resp_1", "alice", {"id": "resp_1"})])
            for store in stores:
                assert await store.get(RESPONSE, "resp_1", "alice") is not None
        finally:
            await _close(stores)
    asyncio.run(main())
    with psycopg.connect(postgres_url) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [v for (v,) in versions] == list(range(1, migrations.LATEST + 1))


def test_replicas_starting_at_once_on_fresh_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/dir/store.db"  # the directories are made
    async def main() -> None:
        await _close(await _start_many(url, 4))
    asyncio.run(main())
    with sqlite3.connect(tmp_path / "sub/dir/store.db") as conn:
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
    assert [v for (v,) in versions] == list(range(1, migrations.LATEST + 1))


def test_reopened_sqlite_keeps_its_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/store.db"

    async def first() -> None:
        store = new_store(url)
        await store.start()
        await store.add([Record(RESPONSE, "resp_1", "alice", {"id": "resp_1", "output": "kept"})])
        await store.close()

    async def second() -> None:
        store = new_store(url)
        await store.start()
        try:
            got = await store.get(RESPONSE, "resp_1", "alice")
            assert got is not None and got.data["output"] == "kept"
            more = Record(RESPONSE, "resp_2", "alice", {"id": "resp_2"})
            await store.add([more])
            assert more.seq > got.seq
        finally:
            await store.close()
    asyncio.run(first())
    asyncio.run(second())
    with sqlite3.connect(tmp_path / "store.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (migrations.LATEST,)


def test_unreachable_postgres_names_the_url_without_its_password() -> None:
    url = f"postgresql://vlgate:hunter2secret@127.0.0.1:{free_port()}/nowhere"
    store = new_store(url)
    with pytest.raises(StoreError) as caught:
        asyncio.run(store.start())
    message = str(caught.value)
    assert url.replace("hunter2secret", "***") in message
    assert "hunter2secret" not in message
    assert "refused" in message.lower() or "connect" in message.lower()


def test_postgres_url_without_the_driver_says_how_to_install_it() -> None:
    """The core install has no psycopg: the import is blocked in a fresh interpreter."""
    code = ("import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
            "from vlgate.store import new_store\n"
            "from vlgate.store.base import StoreError\n"
            "try:\n    new_store('postgresql://u:s3cretpw@localhost/db')\n"
            "except StoreError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'vlgate[postgres]'" in out.stdout and "postgresql://u:***@localhost/db" in out.stdout
    assert "s3cretpw" not in out.stdout
    # and the core modules never import it: SQLite works without the driver
    code = ("import sys; sys.modules['psycopg'] = None; sys.modules['psycopg_pool'] = None\n"
            "import asyncio, tempfile\n"
            "from vlgate.store import new_store\n"
            "import vlgate.gateway.gateway\n"
            "async def main():\n    s = new_store('sqlite:///' + tempfile.mkdtemp() + '/x.db')\n"
            "    await s.start()\n    await s.close()\n"
            "asyncio.run(main()); print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(StoreError, match="unknown scheme") as caught:
        new_store("mysql://u:s3cretpw@host/db")
    assert "s3cretpw" not in str(caught.value)
