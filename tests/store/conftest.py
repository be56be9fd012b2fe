"""The store's tests run every scenario on both implementations: SQLite in a temp file and a real
PostgreSQL server (tests/support/postgres.py), each test on a fresh empty database."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from support.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)
from vlgate.store import new_store
from vlgate.store.base import Store

Scenario = Callable[[Store, str], Awaitable[None]]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def started(url: str) -> Store:
    store = new_store(url)
    await store.start()
    return store


@pytest.fixture
def store_run(store_url: str) -> Callable[[Scenario], None]:
    """`store_run(scenario)`: runs `await scenario(store, url)` on a started store, closed after."""
    def run(scenario: Scenario) -> None:
        async def main() -> None:
            store = await started(store_url)
            try:
                await asyncio.wait_for(scenario(store, store_url), 120)
            finally:
                await store.close()
        asyncio.run(main())
    return run
