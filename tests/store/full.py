"""An index on a disk that fills up: its writes fail the way SQLite's do then."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator

import aiosqlite

from appliance.store.index import SqliteIndex


class FullDiskIndex(SqliteIndex):
    """While `full`, every write transaction runs its statements and then fails to
    commit with the error SQLite gives on a full disk (and is rolled back)."""

    full = False
    failed = 0

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with super()._transaction() as db:
            yield db
            if self.full:
                self.failed += 1
                raise sqlite3.OperationalError("database or disk is full")
