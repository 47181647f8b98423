"""Money: budgets, limits, and the ledger of reserves, settles and releases (integer micro-USD)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from bot.jobs import FINAL_STATES, Job, JobState
from bot.store._base import Database, StoreError
from bot.store.jobs import _USER_KEY_OF_J, _row_to_job

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


class MoneyStore(Database):
    """Budgets and the ledger."""

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
