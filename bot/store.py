"""All of reelbot's SQL: jobs, budgets and their ledger, platform dedupe, consent and audit.

One SQLite file in WAL mode. Schema changes are versioned migrations applied at open. Every job
state change is one committed row update, so a crash loses nothing that was said to happen.

Money moves only inside ``BEGIN IMMEDIATE`` transactions: the write lock is taken before the
budget is read, so concurrent requests (in this process or another) cannot both spend the last
dollar. Each job has at most one reserve row and at most one of settle/release in the ledger,
enforced by a unique index, which makes settlement idempotent.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from bot.jobs import ACTIVE_STATES, FINAL_STATES, Job, JobOptions, JobState

_T = TypeVar("_T")

_MIGRATIONS: tuple[str, ...] = (
    # 1: jobs, budgets, ledger, dedupe, audit
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        request_key TEXT NOT NULL UNIQUE,
        platform TEXT NOT NULL,
        workspace_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        user_name TEXT NOT NULL,
        channel_id TEXT NOT NULL,
        thread_id TEXT,
        prompt TEXT NOT NULL,
        model TEXT NOT NULL,
        size TEXT NOT NULL,
        seconds INTEGER NOT NULL,
        cameo TEXT,
        state TEXT NOT NULL,
        cost_micros INTEGER NOT NULL,
        budget_period TEXT,
        provider TEXT NOT NULL DEFAULT '',
        provider_video_id TEXT,
        progress INTEGER NOT NULL DEFAULT 0,
        card_ref TEXT,
        clip_path TEXT,
        delivered_ref TEXT,
        error TEXT,
        tries INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        remix_of TEXT,
        reference_path TEXT,
        lease_owner TEXT,
        lease_expires REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        queued_at REAL,
        started_at REAL
    );
    CREATE INDEX jobs_by_state ON jobs(state, queued_at);
    CREATE INDEX jobs_by_user ON jobs(platform, workspace_id, user_id, created_at);
    CREATE TABLE budget_limits (
        subject TEXT PRIMARY KEY,
        limit_micros INTEGER NOT NULL CHECK (limit_micros >= 0),
        set_by TEXT NOT NULL,
        set_at REAL NOT NULL
    );
    CREATE TABLE budget_usage (
        user_key TEXT NOT NULL,
        period TEXT NOT NULL,
        spent_micros INTEGER NOT NULL DEFAULT 0 CHECK (spent_micros >= 0),
        reserved_micros INTEGER NOT NULL DEFAULT 0 CHECK (reserved_micros >= 0),
        warned INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_key, period)
    );
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        user_key TEXT NOT NULL,
        period TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('reserve', 'settle', 'release')),
        amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0),
        at REAL NOT NULL
    );
    CREATE UNIQUE INDEX ledger_once ON ledger(job_id, CASE kind WHEN 'reserve' THEN 0 ELSE 1 END);
    CREATE TABLE seen_events (
        key TEXT PRIMARY KEY,
        at REAL NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    """,
    # 2: likeness consent. The audit is append-only: triggers refuse updates and deletes.
    """
    CREATE TABLE cameos (
        owner_key TEXT PRIMARY KEY,
        platform TEXT NOT NULL,
        workspace_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        display_name TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('unconfirmed', 'active', 'revoked')),
        audience TEXT NOT NULL DEFAULT 'only_me'
            CHECK (audience IN ('only_me', 'approved', 'workspace', 'everyone')),
        asset_path TEXT,
        asset_hash TEXT,
        asset_kind TEXT,
        likeness_path TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX cameos_by_user ON cameos(platform, user_id);
    CREATE TABLE cameo_allowed (
        owner_key TEXT NOT NULL,
        user_key TEXT NOT NULL,
        PRIMARY KEY (owner_key, user_key)
    );
    CREATE TABLE cameo_forbidden (
        owner_key TEXT NOT NULL,
        word TEXT NOT NULL,
        PRIMARY KEY (owner_key, word)
    );
    CREATE TABLE consent_requests (
        id TEXT PRIMARY KEY,
        owner_key TEXT NOT NULL,
        requester_key TEXT NOT NULL,
        job_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'withdrawn')),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        decided_at REAL
    );
    CREATE INDEX consent_pending ON consent_requests(status, expires_at);
    CREATE TABLE cameo_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        owner_key TEXT NOT NULL,
        actor_key TEXT NOT NULL,
        action TEXT NOT NULL,
        job_id TEXT,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX cameo_audit_by_owner ON cameo_audit(owner_key, id);
    CREATE TRIGGER cameo_audit_no_update BEFORE UPDATE ON cameo_audit
        BEGIN SELECT RAISE(ABORT, 'the cameo audit is append-only'); END;
    CREATE TRIGGER cameo_audit_no_delete BEFORE DELETE ON cameo_audit
        BEGIN SELECT RAISE(ABORT, 'the cameo audit is append-only'); END
    """,
    # 3: usage follows the ledger. Every reserve, settle and release row moves the owner's
    # budget_usage in the same statement, so the two cannot disagree and admission saves a write.
    """
    CREATE TRIGGER ledger_moves_usage AFTER INSERT ON ledger BEGIN
        INSERT INTO budget_usage (user_key, period) VALUES (NEW.user_key, NEW.period)
            ON CONFLICT (user_key, period) DO NOTHING;
        UPDATE budget_usage SET
            reserved_micros = reserved_micros
                + CASE NEW.kind WHEN 'reserve' THEN NEW.amount_micros ELSE -NEW.amount_micros END,
            spent_micros = spent_micros + CASE NEW.kind WHEN 'settle' THEN NEW.amount_micros ELSE 0 END
        WHERE user_key = NEW.user_key AND period = NEW.period;
    END
    """,
    # 4: when the render itself started (submission may have waited out rate limits before it).
    """
    ALTER TABLE jobs ADD COLUMN render_started_at REAL
    """,
)

_JOB_COLUMNS = (
    "id, request_key, platform, workspace_id, user_id, user_name, channel_id, thread_id, prompt, model, "
    "size, seconds, cameo, state, cost_micros, budget_period, provider, provider_video_id, progress, "
    "card_ref, clip_path, delivered_ref, error, tries, cancel_requested, remix_of, reference_path, "
    "created_at, updated_at, started_at"
)
_USER_KEY_OF_J = "j.platform || ':' || j.workspace_id || ':' || j.user_id"
# Everything admission decides on, in one read: the job, its owner's limit (own, else the
# workspace default, else the configured fallback), this period's usage, and an earlier reserve.
_ADMIT_READ = f"""
    SELECT j.*,
        COALESCE(
            (SELECT limit_micros FROM budget_limits WHERE subject = {_USER_KEY_OF_J}),
            (SELECT limit_micros FROM budget_limits WHERE subject = ?),
            ?
        ) AS budget_limit,
        COALESCE(u.spent_micros, 0) AS budget_spent,
        COALESCE(u.reserved_micros, 0) AS budget_reserved,
        COALESCE(u.warned, 0) AS budget_warned,
        EXISTS (SELECT 1 FROM ledger WHERE job_id = j.id AND kind = 'reserve') AS already_reserved
    FROM jobs j
    LEFT JOIN budget_usage u ON u.user_key = {_USER_KEY_OF_J} AND u.period = ?
    WHERE j.id = ?
"""
# The job with its reserve row (if any) and whether it was already settled or released.
_FINISH_READ = """
    SELECT j.*,
        r.user_key AS reserve_user_key, r.period AS reserve_period, r.amount_micros AS reserve_amount,
        EXISTS (SELECT 1 FROM ledger WHERE job_id = j.id AND kind != 'reserve') AS already_closed
    FROM jobs j
    LEFT JOIN ledger r ON r.job_id = j.id AND r.kind = 'reserve'
    WHERE j.id = ?
"""
_UPDATABLE = frozenset(
    {
        "thread_id",
        "state",
        "provider",
        "provider_video_id",
        "progress",
        "card_ref",
        "clip_path",
        "delivered_ref",
        "error",
        "tries",
        "cancel_requested",
        "reference_path",
        "user_name",
        "started_at",
        "render_started_at",
    }
)


def _statements(script: str) -> Iterator[str]:
    """Splits a migration into statements; a trigger's body keeps its inner semicolons."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""
    if pending.strip():
        yield pending.strip()


def lease_owner_id() -> str:
    """``host:pid:token``: lets another process on this host tell when a lease's owner has died."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def lease_owner_is_gone(owner: str) -> bool:
    """True when ``owner`` was a process on this host that no longer exists (killed, crashed)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def new_job_id() -> str:
    """A short id people can type: 8 characters of lowercase base32 (40 random bits)."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


@dataclass(frozen=True, slots=True)
class Usage:
    spent_micros: int
    reserved_micros: int
    limit_micros: int
    warned: bool = False

    @property
    def remaining_micros(self) -> int:
        return max(0, self.limit_micros - self.spent_micros - self.reserved_micros)


@dataclass(frozen=True, slots=True)
class Admission:
    """The outcome of reserving a job's cost.

    ``warn`` is true exactly once per user and period: the first admission that takes committed
    spending (spent + reserved) to 80% of the limit or more.
    """

    admitted: bool
    usage: Usage
    warn: bool = False


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    reserved: int
    settled: int
    released: int


class StoreError(RuntimeError):
    pass


def _row_to_job(row: aiosqlite.Row) -> Job:
    return Job(
        id=row["id"],
        request_key=row["request_key"],
        platform=row["platform"],
        workspace_id=row["workspace_id"],
        user_id=row["user_id"],
        user_name=row["user_name"],
        channel_id=row["channel_id"],
        thread_id=row["thread_id"],
        prompt=row["prompt"],
        options=JobOptions(model=row["model"], size=row["size"], seconds=row["seconds"], cameo=row["cameo"]),
        state=JobState(row["state"]),
        cost_micros=row["cost_micros"],
        budget_period=row["budget_period"],
        provider=row["provider"],
        provider_video_id=row["provider_video_id"],
        progress=row["progress"],
        card_ref=row["card_ref"],
        clip_path=row["clip_path"],
        delivered_ref=row["delivered_ref"],
        error=row["error"],
        tries=row["tries"],
        cancel_requested=bool(row["cancel_requested"]),
        remix_of=row["remix_of"],
        reference_path=row["reference_path"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        render_started_at=row["render_started_at"],
    )


def _admit_in_tx(
    conn: sqlite3.Connection,
    job_id: str,
    period: str,
    default_subject: str,
    fallback_limit: int,
    queued_state: JobState,
    now: float,
) -> Admission:
    row = conn.execute(_ADMIT_READ, (default_subject, fallback_limit, period, job_id)).fetchone()
    if row is None:
        raise StoreError(f"no job {job_id}")
    job = _row_to_job(row)
    limit, spent, reserved = row["budget_limit"], row["budget_spent"], row["budget_reserved"]
    warned, already = bool(row["budget_warned"]), bool(row["already_reserved"])
    if already or job.state not in (JobState.RECEIVED, JobState.PENDING_CONSENT):
        return Admission(already, Usage(spent, reserved, limit, warned))
    if spent + reserved + job.cost_micros > limit:
        conn.execute("UPDATE jobs SET state = 'refused', error = 'budget', updated_at = ? WHERE id = ?", (now, job_id))
        return Admission(False, Usage(spent, reserved, limit, warned))
    reserved += job.cost_micros
    warn = not warned and limit > 0 and (spent + reserved) * 5 >= limit * 4
    conn.execute(  # the ledger_moves_usage trigger adds it to budget_usage
        "INSERT INTO ledger (job_id, user_key, period, kind, amount_micros, at) VALUES (?, ?, ?, 'reserve', ?, ?)",
        (job_id, job.user_key, period, job.cost_micros, now),
    )
    if warn:
        conn.execute("UPDATE budget_usage SET warned = 1 WHERE user_key = ? AND period = ?", (job.user_key, period))
    conn.execute(
        "UPDATE jobs SET state = ?, budget_period = ?, queued_at = ?, updated_at = ? WHERE id = ?",
        (queued_state.value, period, now, now, job_id),
    )
    return Admission(True, Usage(spent, reserved, limit, warned or warn), warn=warn)


def _finish_in_tx(
    conn: sqlite3.Connection,
    job_id: str,
    state: JobState,
    error: str | None,
    delivered_ref: str | None,
    expect: frozenset[JobState] | None,
    now: float,
) -> Job | None:
    row = conn.execute(_FINISH_READ, (job_id,)).fetchone()
    if row is None:
        raise StoreError(f"no job {job_id}")
    job = _row_to_job(row)
    if job.state.is_final:
        return job
    if expect is not None and job.state not in expect:
        return None
    if row["reserve_amount"] is not None and not row["already_closed"]:
        kind = "settle" if state is JobState.DELIVERED else "release"
        conn.execute(  # the ledger_moves_usage trigger takes it off reserved (and onto spent when settled)
            "INSERT INTO ledger (job_id, user_key, period, kind, amount_micros, at) VALUES (?, ?, ?, ?, ?, ?)",
            (job_id, row["reserve_user_key"], row["reserve_period"], kind, row["reserve_amount"], now),
        )
    row = conn.execute(
        "UPDATE jobs SET state = ?, error = COALESCE(?, error), delivered_ref = COALESCE(?, delivered_ref), "
        "lease_owner = NULL, lease_expires = NULL, updated_at = ? WHERE id = ? RETURNING *",
        (state.value, error, delivered_ref, now, job_id),
    ).fetchone()
    assert row is not None
    return _row_to_job(row)


class Store:
    """The SQLite store. Open with ``await Store.open(path)``; close with ``await store.close()``."""

    def __init__(self, *, db: aiosqlite.Connection, path: Path, clock=time.time) -> None:
        self._db = db
        self.path = path
        self._clock = clock
        # aiosqlite runs one connection on one thread; the lock keeps one coroutine's transaction
        # from interleaving with another coroutine's statements on the same connection.
        self._lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: Path, *, clock=time.time) -> Store:
        """Opens (creating owner-only where new) the database and applies pending migrations."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        db = await aiosqlite.connect(path, isolation_level=None, timeout=30)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA busy_timeout = 30000")
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        store = cls(db=db, path=path, clock=clock)
        await store._migrate()
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
            for number, script in enumerate(_MIGRATIONS, start=1):
                if number <= version:
                    continue
                for statement in _statements(script):
                    await self._db.execute(statement)
                await self._db.execute(f"PRAGMA user_version = {number}")

    @property
    def schema_version(self) -> int:
        return len(_MIGRATIONS)

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

    # --- jobs ------------------------------------------------------------------------------

    async def insert_job(self, job: Job) -> tuple[Job, bool]:
        """Writes a new job row, or returns the existing one for the same request key.

        Returns:
            The stored job and whether this call created it.
        """
        values = (
            job.id,
            job.request_key,
            job.platform,
            job.workspace_id,
            job.user_id,
            job.user_name,
            job.channel_id,
            job.thread_id,
            job.prompt,
            job.options.model,
            job.options.size,
            job.options.seconds,
            job.options.cameo,
            job.state.value,
            job.cost_micros,
            job.budget_period,
            job.provider,
            job.provider_video_id,
            job.progress,
            job.card_ref,
            job.clip_path,
            job.delivered_ref,
            job.error,
            job.tries,
            int(job.cancel_requested),
            job.remix_of,
            job.reference_path,
            job.created_at,
            job.updated_at,
            job.started_at,
        )
        async with self._tx():
            cursor = await self._db.execute(
                f"INSERT OR IGNORE INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * len(values))})",
                values,
            )
            created = cursor.rowcount == 1
            row = await self._one("SELECT * FROM jobs WHERE request_key = ?", (job.request_key,))
        assert row is not None
        return _row_to_job(row), created

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._read_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(row) if row else None

    async def get_job_by_request(self, request_key: str) -> Job | None:
        row = await self._read_one("SELECT * FROM jobs WHERE request_key = ?", (request_key,))
        return _row_to_job(row) if row else None

    async def update_job(self, job_id: str, *, expect: Iterable[JobState] | None = None, **fields: Any) -> Job:
        """Updates fields of a job in one committed statement.

        Args:
            expect: when given, the update only happens if the job is in one of these states.

        Raises:
            StoreError: when the job does not exist or is not in an expected state.
        """
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = [v.value if isinstance(v, JobState) else v for v in fields.values()]
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE jobs SET {assignments}, updated_at = ? WHERE id = ?"
        params: list[Any] = [*values, self._clock(), job_id]
        if expect is not None:
            states = [s.value for s in expect]
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            params += states
        async with self._tx():
            row = await self._one(sql + " RETURNING *", params)
            if row is None:
                current = await self._one("SELECT state FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            if current is None:
                raise StoreError(f"no job {job_id}")
            raise StoreError(f"job {job_id} is {current['state']}, not in an expected state")
        return _row_to_job(row)

    async def video_in_use(self, video_id: str, *, other_than: str) -> bool:
        """Whether a job other than ``other_than`` already renders ``video_id``."""
        row = await self._read_one(
            "SELECT 1 FROM jobs WHERE provider_video_id = ? AND id != ? LIMIT 1", (video_id, other_than)
        )
        return row is not None

    async def jobs_for_user(self, platform: str, workspace_id: str, user_id: str, limit: int = 10) -> list[Job]:
        rows = await self._read_all(
            "SELECT * FROM jobs WHERE platform = ? AND workspace_id = ? AND user_id = ? "
            "ORDER BY created_at DESC LIMIT ?",
            (platform, workspace_id, user_id, limit),
        )
        return [_row_to_job(r) for r in rows]

    async def jobs_in_states(self, states: Iterable[JobState], platforms: Iterable[str] | None = None) -> list[Job]:
        state_values = [s.value for s in states]
        sql = f"SELECT * FROM jobs WHERE state IN ({', '.join('?' * len(state_values))})"
        params: list[Any] = list(state_values)
        if platforms is not None:
            names = list(platforms)
            sql += f" AND platform IN ({', '.join('?' * len(names))})"
            params += names
        rows = await self._read_all(sql + " ORDER BY queued_at, id", params)
        return [_row_to_job(r) for r in rows]

    async def orphaned_jobs(self, states: Iterable[JobState], platforms: Iterable[str]) -> list[Job]:
        """Jobs in ``states`` that no live process holds a lease on (left behind by a crash)."""
        state_values = [s.value for s in states]
        names = list(platforms)
        rows = await self._read_all(
            f"SELECT * FROM jobs WHERE state IN ({', '.join('?' * len(state_values))}) "
            f"AND platform IN ({', '.join('?' * len(names))}) AND (lease_owner IS NULL OR lease_expires < ?) "
            "ORDER BY queued_at, id",
            (*state_values, *names, self._clock()),
        )
        return [_row_to_job(r) for r in rows]

    async def queue_position(self, job_id: str) -> int | None:
        """1 for the next queued job to start; None when the job is not queued."""
        row = await self._read_one(
            "SELECT (SELECT COUNT(*) FROM jobs q WHERE q.state = 'queued' AND q.platform = j.platform "
            "AND (q.queued_at < j.queued_at OR (q.queued_at = j.queued_at AND q.id <= j.id))) "
            "FROM jobs j WHERE j.id = ? AND j.state = 'queued'",
            (job_id,),
        )
        return row[0] if row else None

    async def count_active(self, user_key: str | None = None) -> int:
        states = [s.value for s in ACTIVE_STATES]
        sql = f"SELECT COUNT(*) FROM jobs WHERE state IN ({', '.join('?' * len(states))})"
        params: list[Any] = list(states)
        if user_key is not None:
            sql += " AND platform || ':' || workspace_id || ':' || user_id = ?"
            params.append(user_key)
        row = await self._read_one(sql, params)
        return row[0] if row else 0

    # --- leases: which process drives a job -------------------------------------------------

    async def claim_job(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        """Takes the job for ``owner`` unless another live owner holds it."""
        now = self._clock()
        async with self._tx():
            cursor = await self._db.execute(
                "UPDATE jobs SET lease_owner = ?, lease_expires = ? WHERE id = ? AND "
                "(lease_owner IS NULL OR lease_owner = ? OR lease_expires < ?)",
                (owner, now + lease_seconds, job_id, owner, now),
            )
        return cursor.rowcount == 1

    async def renew_lease(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        async with self._tx():
            cursor = await self._db.execute(
                "UPDATE jobs SET lease_expires = ? WHERE id = ? AND lease_owner = ?",
                (self._clock() + lease_seconds, job_id, owner),
            )
        return cursor.rowcount == 1

    async def renew_leases(self, owner: str, job_ids: Iterable[str], lease_seconds: float) -> int:
        """Extends ``owner``'s leases on ``job_ids`` in one statement; returns how many it held."""
        ids = json.dumps(list(job_ids))
        async with self._tx():
            cursor = await self._db.execute(
                "UPDATE jobs SET lease_expires = ? WHERE lease_owner = ? AND id IN (SELECT value FROM json_each(?))",
                (self._clock() + lease_seconds, owner, ids),
            )
        return cursor.rowcount

    async def schedulable_jobs(self, platforms: Iterable[str]) -> list[Job]:
        """What a scheduling pass may act on: queued and received jobs, and active jobs nobody drives.

        Active jobs under a live lease (this process's or another's) are left out, so a busy
        bot does not re-read every running job every second.
        """
        names = list(platforms)
        waiting = (JobState.QUEUED.value, JobState.RECEIVED.value)
        active = [s.value for s in ACTIVE_STATES]
        rows = await self._read_all(
            f"SELECT * FROM jobs WHERE platform IN ({', '.join('?' * len(names))}) AND "
            f"(state IN (?, ?) OR (state IN ({', '.join('?' * len(active))}) "
            "AND (lease_owner IS NULL OR lease_expires < ?))) ORDER BY queued_at, id",
            (*names, *waiting, *active, self._clock()),
        )
        return [_row_to_job(r) for r in rows]

    async def active_counts(self, platforms: Iterable[str]) -> dict[str, int]:
        """Active jobs per user key (``platform:workspace:user``), for the in-flight caps."""
        names = list(platforms)
        active = [s.value for s in ACTIVE_STATES]
        rows = await self._read_all(
            f"SELECT {_USER_KEY_OF_J}, COUNT(*) FROM jobs j WHERE j.platform IN ({', '.join('?' * len(names))}) "
            f"AND j.state IN ({', '.join('?' * len(active))}) GROUP BY j.platform, j.workspace_id, j.user_id",
            (*names, *active),
        )
        return {r[0]: r[1] for r in rows}

    async def cancels_requested(self, owner: str) -> list[str]:
        """Ids of active jobs ``owner`` drives whose cancellation was asked for."""
        active = [s.value for s in ACTIVE_STATES]
        rows = await self._read_all(
            f"SELECT id FROM jobs WHERE state IN ({', '.join('?' * len(active))}) "
            "AND lease_owner = ? AND cancel_requested = 1",
            (*active, owner),
        )
        return [r[0] for r in rows]

    async def release_lease(self, job_id: str, owner: str) -> None:
        async with self._tx():
            await self._db.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL WHERE id = ? AND lease_owner = ?",
                (job_id, owner),
            )

    async def expire_dead_leases(self) -> int:
        """Frees the leases of processes on this host that died holding them; returns how many owners."""
        rows = await self._read_all(
            "SELECT DISTINCT lease_owner FROM jobs WHERE lease_owner IS NOT NULL AND lease_expires >= ?",
            (self._clock(),),
        )
        gone = [row[0] for row in rows if lease_owner_is_gone(row[0])]
        if gone:
            async with self._tx():
                for owner in gone:
                    await self._db.execute(
                        "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = ?", (owner,)
                    )
        return len(gone)

    async def release_leases(self, owner: str) -> None:
        """Lets go of every job this owner drives (a clean stop), so a restart resumes them at once."""
        async with self._tx():
            await self._db.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_expires = NULL WHERE lease_owner = ?", (owner,)
            )

    # --- budgets ---------------------------------------------------------------------------

    async def _limit_for(self, user_key: str, default_subject: str, fallback: int) -> int:
        row = await self._one("SELECT limit_micros FROM budget_limits WHERE subject = ?", (user_key,))
        if row is None:
            row = await self._one("SELECT limit_micros FROM budget_limits WHERE subject = ?", (default_subject,))
        return row[0] if row else fallback

    async def _usage_row(self, user_key: str, period: str) -> tuple[int, int, bool]:
        row = await self._one(
            "SELECT spent_micros, reserved_micros, warned FROM budget_usage WHERE user_key = ? AND period = ?",
            (user_key, period),
        )
        return (row[0], row[1], bool(row[2])) if row else (0, 0, False)

    async def usage(self, user_key: str, period: str, *, default_subject: str, fallback_limit: int) -> Usage:
        async with self._lock:
            spent, reserved, warned = await self._usage_row(user_key, period)
            limit = await self._limit_for(user_key, default_subject, fallback_limit)
        return Usage(spent, reserved, limit, warned)

    async def admit(
        self, job_id: str, *, period: str, default_subject: str, fallback_limit: int, queued_state: JobState
    ) -> Admission:
        """Reserves the job's cost against its owner's budget, or refuses it, atomically.

        On success the job moves to ``queued_state`` with a ``reserve`` ledger row; on refusal it
        becomes ``refused`` and nothing is reserved. Calling it again for an admitted job is a no-op
        that reports the current usage.
        """
        return await self._run_tx(
            _admit_in_tx, job_id, period, default_subject, fallback_limit, queued_state, self._clock()
        )

    async def finish_job(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        delivered_ref: str | None = None,
        expect: Iterable[JobState] | None = None,
    ) -> Job | None:
        """Moves a job to a final state and settles or releases its reservation in one transaction.

        ``delivered`` settles (the person pays); ``failed``, ``cancelled`` and ``refused`` release.
        Idempotent: a job already final is left as it is and returned unchanged.

        Returns:
            The job as stored afterwards, or None when ``expect`` did not match.
        """
        if state not in FINAL_STATES:
            raise ValueError(f"{state} is not final")
        expected = None if expect is None else frozenset(expect)
        return await self._run_tx(_finish_in_tx, job_id, state, error, delivered_ref, expected, self._clock())

    async def set_limit(self, subject: str, limit_micros: int, *, set_by: str) -> None:
        """Sets a budget limit for a user key, or for ``default:<platform>:<workspace>``."""
        async with self._tx():
            await self._db.execute(
                "INSERT INTO budget_limits (subject, limit_micros, set_by, set_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (subject) DO UPDATE SET limit_micros = excluded.limit_micros, "
                "set_by = excluded.set_by, set_at = excluded.set_at",
                (subject, limit_micros, set_by, self._clock()),
            )
            await self._db.execute(
                "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, 'budget_set', ?, ?)",
                (self._clock(), set_by, subject, str(limit_micros)),
            )

    async def usage_report(self, key_prefix: str, period: str) -> list[tuple[str, int, int]]:
        """(user_key, spent, reserved) for every user under ``key_prefix`` with usage this period."""
        rows = await self._read_all(
            "SELECT user_key, spent_micros, reserved_micros FROM budget_usage WHERE period = ? "
            "AND substr(user_key, 1, ?) = ? AND (spent_micros > 0 OR reserved_micros > 0) "
            "ORDER BY spent_micros + reserved_micros DESC",
            (period, len(key_prefix), key_prefix),
        )
        return [(r[0], r[1], r[2]) for r in rows]

    async def ledger_totals(self) -> LedgerTotals:
        rows = await self._read_all("SELECT kind, COALESCE(SUM(amount_micros), 0) FROM ledger GROUP BY kind")
        sums = {r[0]: r[1] for r in rows}
        return LedgerTotals(sums.get("reserve", 0), sums.get("settle", 0), sums.get("release", 0))

    async def ledger_for(self, job_id: str) -> list[tuple[str, int]]:
        rows = await self._read_all("SELECT kind, amount_micros FROM ledger WHERE job_id = ? ORDER BY id", (job_id,))
        return [(r[0], r[1]) for r in rows]

    # --- platform dedupe and audit -----------------------------------------------------------

    async def first_sighting(self, key: str) -> bool:
        """Records a platform event id; true only the first time it is seen (durable dedupe)."""
        async with self._tx():
            cursor = await self._db.execute(
                "INSERT OR IGNORE INTO seen_events (key, at) VALUES (?, ?)", (key, self._clock())
            )
        return cursor.rowcount == 1

    async def audit(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        async with self._tx():
            await self._db.execute(
                "INSERT INTO audit (at, actor, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                (self._clock(), actor, action, subject, detail),
            )


@dataclass(frozen=True, slots=True)
class Cameo:
    owner_key: str
    platform: str
    workspace_id: str
    user_id: str
    display_name: str
    status: str
    audience: str
    asset_path: str | None
    asset_hash: str | None
    asset_kind: str | None
    likeness_path: str | None


@dataclass(frozen=True, slots=True)
class ConsentRequest:
    id: str
    owner_key: str
    requester_key: str
    job_id: str
    status: str
    created_at: float
    expires_at: float


@dataclass(frozen=True, slots=True)
class CameoEvent:
    at: float
    actor_key: str
    action: str
    job_id: str | None
    detail: str


def _cameo(row: aiosqlite.Row) -> Cameo:
    return Cameo(*(row[name] for name in Cameo.__slots__))


def _consent(row: aiosqlite.Row) -> ConsentRequest:
    return ConsentRequest(*(row[name] for name in ConsentRequest.__slots__))


class CameoStore:
    """The consent tables, on the same connection and lock as ``Store``."""

    def __init__(self, store: Store) -> None:
        self._s = store

    async def get(self, owner_key: str) -> Cameo | None:
        row = await self._s._read_one("SELECT * FROM cameos WHERE owner_key = ?", (owner_key,))
        return _cameo(row) if row else None

    async def find(self, platform: str, user_id: str, workspace_id: str) -> Cameo | None:
        """The cameo of ``user_id`` on ``platform``, preferring the asker's own workspace."""
        row = await self._s._read_one(
            "SELECT * FROM cameos WHERE platform = ? AND user_id = ? ORDER BY workspace_id = ? DESC, "
            "status = 'active' DESC LIMIT 1",
            (platform, user_id, workspace_id),
        )
        return _cameo(row) if row else None

    async def save(self, cameo: Cameo, *, actor_key: str, action: str, detail: str = "") -> None:
        """Inserts or replaces the cameo row and appends an audit event, in one transaction."""
        now = self._s._clock()
        async with self._s._tx():
            await self._s._db.execute(
                "INSERT INTO cameos (owner_key, platform, workspace_id, user_id, display_name, status, audience, "
                "asset_path, asset_hash, asset_kind, likeness_path, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner_key) DO UPDATE SET "
                "display_name = excluded.display_name, status = excluded.status, audience = excluded.audience, "
                "asset_path = excluded.asset_path, asset_hash = excluded.asset_hash, "
                "asset_kind = excluded.asset_kind, likeness_path = excluded.likeness_path, "
                "updated_at = excluded.updated_at",
                (
                    cameo.owner_key,
                    cameo.platform,
                    cameo.workspace_id,
                    cameo.user_id,
                    cameo.display_name,
                    cameo.status,
                    cameo.audience,
                    cameo.asset_path,
                    cameo.asset_hash,
                    cameo.asset_kind,
                    cameo.likeness_path,
                    now,
                    now,
                ),
            )
            await self._append(cameo.owner_key, actor_key, action, None, detail, now)

    async def _append(
        self, owner_key: str, actor_key: str, action: str, job_id: str | None, detail: str, now: float
    ) -> None:
        await self._s._db.execute(
            "INSERT INTO cameo_audit (at, owner_key, actor_key, action, job_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (now, owner_key, actor_key, action, job_id, detail),
        )

    async def log(
        self, owner_key: str, actor_key: str, action: str, *, job_id: str | None = None, detail: str = ""
    ) -> None:
        async with self._s._tx():
            await self._append(owner_key, actor_key, action, job_id, detail, self._s._clock())

    async def history(self, owner_key: str, limit: int = 200) -> list[CameoEvent]:
        rows = await self._s._read_all(
            "SELECT at, actor_key, action, job_id, detail FROM cameo_audit WHERE owner_key = ? ORDER BY id DESC "
            "LIMIT ?",
            (owner_key, limit),
        )
        return [CameoEvent(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def set_allowed(self, owner_key: str, user_key: str, allowed: bool, *, actor_key: str) -> None:
        async with self._s._tx():
            if allowed:
                await self._s._db.execute(
                    "INSERT OR IGNORE INTO cameo_allowed (owner_key, user_key) VALUES (?, ?)", (owner_key, user_key)
                )
            else:
                await self._s._db.execute(
                    "DELETE FROM cameo_allowed WHERE owner_key = ? AND user_key = ?", (owner_key, user_key)
                )
            await self._append(
                owner_key, actor_key, "allowed" if allowed else "disallowed", None, user_key, self._s._clock()
            )

    async def is_allowed(self, owner_key: str, user_key: str) -> bool:
        row = await self._s._read_one(
            "SELECT 1 FROM cameo_allowed WHERE owner_key = ? AND user_key = ?", (owner_key, user_key)
        )
        return row is not None

    async def allowed_users(self, owner_key: str) -> list[str]:
        rows = await self._s._read_all(
            "SELECT user_key FROM cameo_allowed WHERE owner_key = ? ORDER BY 1", (owner_key,)
        )
        return [r[0] for r in rows]

    async def set_forbidden(self, owner_key: str, words: list[str], forbidden: bool, *, actor_key: str) -> None:
        async with self._s._tx():
            for word in words:
                if forbidden:
                    await self._s._db.execute(
                        "INSERT OR IGNORE INTO cameo_forbidden (owner_key, word) VALUES (?, ?)", (owner_key, word)
                    )
                else:
                    await self._s._db.execute(
                        "DELETE FROM cameo_forbidden WHERE owner_key = ? AND word = ?", (owner_key, word)
                    )
            await self._append(
                owner_key,
                actor_key,
                "forbidden_words" if forbidden else "unforbidden_words",
                None,
                " ".join(words),
                self._s._clock(),
            )

    async def forbidden_words(self, owner_key: str) -> list[str]:
        rows = await self._s._read_all("SELECT word FROM cameo_forbidden WHERE owner_key = ? ORDER BY 1", (owner_key,))
        return [r[0] for r in rows]

    async def add_request(self, request: ConsentRequest) -> None:
        async with self._s._tx():
            await self._s._db.execute(
                "INSERT INTO consent_requests (id, owner_key, requester_key, job_id, status, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                (
                    request.id,
                    request.owner_key,
                    request.requester_key,
                    request.job_id,
                    request.created_at,
                    request.expires_at,
                ),
            )
            await self._append(
                request.owner_key,
                request.requester_key,
                "consent_requested",
                request.job_id,
                request.id,
                request.created_at,
            )

    async def get_request(self, request_id: str) -> ConsentRequest | None:
        row = await self._s._read_one("SELECT * FROM consent_requests WHERE id = ?", (request_id,))
        return _consent(row) if row else None

    async def request_for_job(self, job_id: str) -> ConsentRequest | None:
        row = await self._s._read_one("SELECT * FROM consent_requests WHERE job_id = ?", (job_id,))
        return _consent(row) if row else None

    async def decide(self, request_id: str, status: str, *, actor_key: str) -> ConsentRequest | None:
        """Moves a pending request to ``status``; None when it was no longer pending."""
        now = self._s._clock()
        async with self._s._tx():
            cursor = await self._s._db.execute(
                "UPDATE consent_requests SET status = ?, decided_at = ? WHERE id = ? AND status = 'pending'",
                (status, now, request_id),
            )
            row = await self._s._one("SELECT * FROM consent_requests WHERE id = ?", (request_id,))
            if cursor.rowcount == 1 and row is not None:
                await self._append(row["owner_key"], actor_key, status, row["job_id"], request_id, now)
        return _consent(row) if cursor.rowcount == 1 and row is not None else None

    async def pending(
        self, owner_key: str | None = None, *, expired_before: float | None = None
    ) -> list[ConsentRequest]:
        sql = "SELECT * FROM consent_requests WHERE status = 'pending'"
        params: list[Any] = []
        if owner_key is not None:
            sql += " AND owner_key = ?"
            params.append(owner_key)
        if expired_before is not None:
            sql += " AND expires_at < ?"
            params.append(expired_before)
        rows = await self._s._read_all(sql + " ORDER BY created_at", params)
        return [_consent(r) for r in rows]

    async def jobs_using(self, owner_key: str, states: Iterable[JobState]) -> list[Job]:
        values = [s.value for s in states]
        rows = await self._s._read_all(
            f"SELECT * FROM jobs WHERE cameo = ? AND state IN ({', '.join('?' * len(values))}) ORDER BY created_at",
            (owner_key, *values),
        )
        return [_row_to_job(r) for r in rows]
