"""Stored state: responses, conversations, files, batch jobs (interface in `base.py`).

`open_store` picks the implementation by the URL's scheme. PostgreSQL's driver (psycopg) is imported only
when a postgresql:// URL is configured: the core install works without the `postgres` extra.
"""

from __future__ import annotations

from vlgate.store.base import Store, StoreError
from vlgate.store.settings import StorageSettings
from vlgate.store.urls import backend_kind, redacted


def new_store(url: str) -> Store:
    """A store for `url`, not started."""
    kind = backend_kind(url)
    if kind == "sqlite":
        from vlgate.store.sqlite import SqliteStore
        return SqliteStore(url)
    if kind == "postgresql":
        try:
            from vlgate.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(f"storage.url is a PostgreSQL database ({redacted(url)}) but its driver is not "
                             f"installed ({exc.name}): pip install 'vlgate[postgres]'") from exc
        return PostgresStore(url)
    raise StoreError(f"storage.url {redacted(url)!r}: unknown scheme (use sqlite:///path or postgresql://...)")


async def open_store(settings: StorageSettings) -> Store:
    """The configured store, connected and migrated; StoreError (naming the URL, never its password) when
    the database cannot be reached."""
    store = new_store(settings.resolved_url())
    await store.start()
    return store
