"""The state store: one interface (`base.Store`), one module per database engine.

`open_store(settings)` is the one place an engine is chosen: PostgreSQL when
``DATABASE_URL`` is set, else the SQLite file at ``DATABASE_PATH``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Row, Store, StoreUnavailable

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Row", "Store", "StoreUnavailable", "close_shared", "open_store"]


def open_store(settings: Settings) -> Store:
    """Open a store on the configured database (cheap: share engines per process)."""
    database_url = getattr(settings, "database_url", None)
    if database_url:
        from .postgres import PostgresStore

        return PostgresStore.connect(database_url, pool_size=settings.database_pool_size)
    from .sqlite import SqliteStore

    return SqliteStore(settings.database_path)


def close_shared() -> None:
    """Close this process's shared connections (PostgreSQL pools), e.g. before a fork."""
    import sys

    postgres = sys.modules.get(f"{__name__}.postgres")
    if postgres is not None:
        postgres.PostgresStore.close_pools()
