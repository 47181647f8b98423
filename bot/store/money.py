"""Money: budgets, limits, and the ledger of reserves, settles and releases (integer micro-USD)."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from bot.jobs import ADMITTING_STATES, FINAL_STATES, JobState
from bot.store._base import Database, StoreError
from bot.store.jobs import _USER_KEY_OF_J, _row_to_job, move_in_tx

log = logging.getLogger(__name__)

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
class LedgerMismatch:
    """One disagreement between the ledger and what it should imply.

    ``user_key``/``period`` name the budget row; for a job left with an open reservation after it
    ended, ``job_id`` names the job. The amounts are what the ledger implies and what is stored.
    """

    user_key: str
    period: str
    what: str
    ledger_micros: int
    stored_micros: int
    job_id: str | None = None

    def line(self) -> str:
        if self.job_id:
            return (
                f"ledger mismatch: job {self.job_id} of {self.user_key} in {self.period} has ended but its "
                f"reservation of {self.stored_micros} micro-USD was never settled or released"
            )
        return (
            f"ledger mismatch: {self.user_key} in {self.period}: {self.what} is {self.stored_micros} "
            f"micro-USD but the ledger says {self.ledger_micros}"
        )


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
    if already or job.state not in ADMITTING_STATES:
        return Admission(already, Usage(spent, reserved, limit, warned))
    if spent + reserved + job.cost_micros > limit:
        move_in_tx(conn, job_id, JobState.REFUSED, expect=ADMITTING_STATES, fields={"error": "budget"}, now=now)
        return Admission(False, Usage(spent, reserved, limit, warned))
    reserved += job.cost_micros
    warn = not warned and limit > 0 and (spent + reserved) * 5 >= limit * 4
    conn.execute(  # the ledger_moves_usage trigger adds it to budget_usage
        "INSERT INTO ledger (job_id, user_key, period, kind, amount_micros, at) VALUES (?, ?, ?, 'reserve', ?, ?)",
        (job_id, job.user_key, period, job.cost_micros, now),
    )
    if warn:
        conn.execute("UPDATE budget_usage SET warned = 1 WHERE user_key = ? AND period = ?", (job.user_key, period))
    move_in_tx(
        conn, job_id, queued_state, expect=ADMITTING_STATES, fields={"budget_period": period, "queued_at": now}, now=now
    )
    return Admission(True, Usage(spent, reserved, limit, warned or warn), warn=warn)


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

    async def check_ledger(self) -> list[LedgerMismatch]:
        """Compares ``budget_usage`` with the ledger, and each ended job with its ledger rows.

        Every difference is logged at ERROR, one line per user and period (or job), and returned
        (``reelbot doctor`` shows them). An empty list means the books balance.
        """
        finals = [s.value for s in FINAL_STATES]
        usage_rows = await self._read_all(
            """
            SELECT COALESCE(l.user_key, u.user_key) AS user_key, COALESCE(l.period, u.period) AS period,
                COALESCE(l.reserved, 0) AS l_reserved, COALESCE(l.spent, 0) AS l_spent,
                COALESCE(u.reserved_micros, 0) AS u_reserved, COALESCE(u.spent_micros, 0) AS u_spent
            FROM (SELECT user_key, period,
                    SUM(CASE kind WHEN 'reserve' THEN amount_micros ELSE -amount_micros END) AS reserved,
                    SUM(CASE kind WHEN 'settle' THEN amount_micros ELSE 0 END) AS spent
                  FROM ledger GROUP BY user_key, period) l
            FULL OUTER JOIN budget_usage u ON u.user_key = l.user_key AND u.period = l.period
            """
        )
        mismatches: list[LedgerMismatch] = []
        for r in usage_rows:
            if r["l_reserved"] != r["u_reserved"]:
                mismatches.append(
                    LedgerMismatch(r["user_key"], r["period"], "reserved", r["l_reserved"], r["u_reserved"])
                )
            if r["l_spent"] != r["u_spent"]:
                mismatches.append(LedgerMismatch(r["user_key"], r["period"], "spent", r["l_spent"], r["u_spent"]))
        open_rows = await self._read_all(
            f"""
            SELECT j.id, r.user_key, r.period, r.amount_micros FROM jobs j
            JOIN ledger r ON r.job_id = j.id AND r.kind = 'reserve'
            WHERE j.state IN ({", ".join("?" * len(finals))})
              AND NOT EXISTS (SELECT 1 FROM ledger c WHERE c.job_id = j.id AND c.kind != 'reserve')
            """,
            finals,
        )
        for r in open_rows:
            mismatches.append(LedgerMismatch(r[1], r[2], "the open reservation of an ended job", 0, r[3], job_id=r[0]))
        for mismatch in mismatches:
            log.error("%s", mismatch.line())
        return mismatches
