"""The connection, its lock, transactions and migrations: what every part of the store shares."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bot.store.schema import MIGRATIONS, statements

_T = TypeVar("_T")


class StoreError(RuntimeError):
    pass


class NoSuchJob(StoreError):
    """The job id names no row."""


class IllegalTransition(StoreError):
    """A state change the transition table (``bot.jobs.MOVES``) or the caller's ``expect`` does not allow.

    Attributes:
        job: the job as stored when the move was refused (its real state).
        target: the state the caller asked for.
    """

    def __init__(self, message: str, *, job: Any, target: Any) -> None:
        super().__init__(message)
        self.job = job
        self.target = target


class StopRequested(IllegalTransition):
    """A forward move of a job whose cancellation (or refusal) was asked for: it may only end now."""


class Database:
    """One aiosqlite connection, the lock that serialises its transactions, and the migrations."""

    def __init__(self, *, db: aiosqlite.Connection, path: Path, clock=time.time) -> None:
        self._db = db
        self.path = path
        self._clock = clock
        # aiosqlite runs one connection on one thread; the lock keeps one coroutine's transaction
        # from interleaving with another coroutine's statements on the same connection.
        self._lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, clock=time.time) -> Any:
        """Opens (creating owner-only where new) the database and applies pending migrations."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        path.chmod(0o600)  # a database made by an older version, or copied in, is owner-only too
        db = await aiosqlite.connect(path, isolation_level=None, timeout=30)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA busy_timeout = 30000")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        store = cls(db=db, path=path, clock=clock)
        try:
            await store._migrate()
        except BaseException:
            await db.close()  # an open connection's thread would keep the process alive
            raise
        for suffix in ("-wal", "-shm"):
            sidecar = Path(f"{path}{suffix}")
            if sidecar.exists():
                sidecar.chmod(0o600)
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        async with self._tx():
            version = (await self._one("PRAGMA user_version"))[0]
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"{self.path} has schema version {version}, newer than this reelbot knows "
                    f"({len(MIGRATIONS)}); upgrade reelbot or use another REELBOT_DATA_DIR."
                )
            for number, script in enumerate(MIGRATIONS, start=1):
                if number <= version:
                    continue
                for statement in statements(script):
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return len(MIGRATIONS)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[None]:
        """One ``BEGIN IMMEDIATE`` transaction: takes SQLite's write lock before reading."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    # ``execute_fetchall`` is one trip to aiosqlite's thread; a cursor's execute, fetch and close
    # would be three, and every trip costs a thread hand-off while the write lock is held.
    async def _run_tx(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Runs ``fn(connection, *args)`` as one ``BEGIN IMMEDIATE`` transaction on the database thread.

        The money paths (admit, finish) are a handful of statements each; sent one by one, every
        statement is a hand-off between the event loop and aiosqlite's thread, and the write lock
        is held across all of them. As one call the lock is held for the statements alone: this
        is what lifts reservations from hundreds to thousands a second (benchmarks/README.md).
        aiosqlite has no public way to run a function on its thread; ``_execute`` is the method
        its own public ones are built on (pinned in pyproject.toml, exercised by every store test).
        """

        def in_tx() -> _T:
            conn = self._db._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        async with self._lock:
            return await self._db._execute(in_tx)

    async def _one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        rows = await self._db.execute_fetchall(sql, tuple(params))
        return next(iter(rows), None)

    async def _all(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        return list(await self._db.execute_fetchall(sql, tuple(params)))

    async def _read_one(self, sql: str, params: Iterable[Any] = ()) -> aiosqlite.Row | None:
        async with self._lock:
            return await self._one(sql, params)

    async def _read_all(self, sql: str, params: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self._lock:
            return await self._all(sql, params)
