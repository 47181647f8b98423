"""Job rows: insert, read, update, the one state-changing call, and the scheduler's queries.

``transition`` is the only code that writes ``jobs.state`` (a test scans the source for others).
It checks the move against ``bot.jobs.MOVES`` and the caller's ``expect`` inside one
``BEGIN IMMEDIATE`` transaction, and in that same transaction settles (to ``delivered``) or
releases (to ``failed``, ``cancelled``, ``refused``) the job's reservation, so a job's state and
its money can never disagree.
"""

from __future__ import annotations

import dataclasses
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

import aiosqlite

from bot.jobs import (
    ACTIVE_STATES,
    RELEASING_STATES,
    SETTLING_STATES,
    Job,
    JobOptions,
    JobState,
    can_move,
)
from bot.store._base import Database, IllegalTransition, NoSuchJob, StopRequested, StoreError

_JOB_COLUMNS = (
    "id, request_key, platform, workspace_id, user_id, user_name, channel_id, thread_id, prompt, model, "
    "size, seconds, cameo, state, cost_micros, budget_period, provider, provider_video_id, progress, "
    "card_ref, clip_path, delivered_ref, error, tries, cancel_requested, remix_of, reference_path, "
    "created_at, updated_at, started_at, aspect, resolution, audio, seed, negative"
)
_USER_KEY_OF_J = "j.platform || ':' || j.workspace_id || ':' || j.user_id"
_ID_TRIES = 8  # fresh ids tried when an insert collides on the id (40 random bits: practically never)

# Fields a caller may change; ``state`` is not one of them (see ``transition``).
_UPDATABLE = frozenset(
    {
        "thread_id",
        "provider",
        "provider_video_id",
        "progress",
        "card_ref",
        "clip_path",
        "delivered_ref",
        "error",
        "tries",
        "cancel_requested",  # kept for older callers; ``request_stop`` says how the job must end
        "reference_path",
        "user_name",
        "started_at",
        "render_started_at",
        "provider_position",
    }
)
# The job with its reserve row (if any) and whether it was already settled or released.
_MOVE_READ = """
    SELECT j.*,
        r.user_key AS reserve_user_key, r.period AS reserve_period, r.amount_micros AS reserve_amount,
        EXISTS (SELECT 1 FROM ledger WHERE job_id = j.id AND kind != 'reserve') AS already_closed
    FROM jobs j
    LEFT JOIN ledger r ON r.job_id = j.id AND r.kind = 'reserve'
    WHERE j.id = ?
"""

#: ``also``: runs inside the transition's transaction, after the move (e.g. a consent request row).
AlsoFn = Callable[[sqlite3.Connection, Job], None]


def new_job_id() -> str:
    """A short id people can type: 8 characters of lowercase base32 (40 random bits)."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


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
        options=JobOptions(
            model=row["model"],
            size=row["size"],
            seconds=row["seconds"],
            cameo=row["cameo"],
            aspect=row["aspect"],
            resolution=row["resolution"],
            audio=None if row["audio"] is None else bool(row["audio"]),
            seed=row["seed"],
            negative=row["negative"],
        ),
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
        provider_position=row["provider_position"],
        attempts=row["attempts"],
        attempt_step=row["attempt_step"],
        not_before=row["not_before"],
        undelivered_at=row["undelivered_at"],
        stop_to=JobState(row["stop_to"]) if row["stop_to"] else None,
        stop_reason=row["stop_reason"],
    )


def move_in_tx(
    conn: sqlite3.Connection,
    job_id: str,
    to: JobState,
    *,
    expect: frozenset[JobState] | None,
    fields: dict[str, Any],
    now: float,
) -> Job:
    """The one statement that changes a job's state, with its money, inside the caller's transaction.

    Raises:
        NoSuchJob: no such job.
        IllegalTransition: the table or ``expect`` does not allow the move (``.job`` is the stored job).
        StopRequested: a forward move of a job whose stop was asked for.
    """
    row = conn.execute(_MOVE_READ, (job_id,)).fetchone()
    if row is None:
        raise NoSuchJob(f"no job {job_id}")
    job = _row_to_job(row)
    if expect is not None and job.state not in expect:
        raise IllegalTransition(f"job {job_id} is {job.state.value}, not {_names(expect)}", job=job, target=to)
    if not can_move(job.state, to):
        raise IllegalTransition(f"job {job_id} cannot move from {job.state.value} to {to.value}", job=job, target=to)
    if job.cancel_requested and to not in RELEASING_STATES:
        raise StopRequested(f"job {job_id} is being stopped; it cannot move to {to.value}", job=job, target=to)
    if (to in SETTLING_STATES or to in RELEASING_STATES) and row["reserve_amount"] is not None:
        if not row["already_closed"]:
            kind = "settle" if to in SETTLING_STATES else "release"
            conn.execute(  # the ledger_moves_usage trigger takes it off reserved (and onto spent when settled)
                "INSERT INTO ledger (job_id, user_key, period, kind, amount_micros, at) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, row["reserve_user_key"], row["reserve_period"], kind, row["reserve_amount"], now),
            )
    assignments = ["state = ?", "updated_at = ?", "attempts = 0", "attempt_step = NULL", "not_before = NULL"]
    params: list[Any] = [to.value, now]
    if to.is_final:
        assignments += ["lease_owner = NULL", "lease_expires = NULL"]
    if to is JobState.UNDELIVERED:
        assignments.append("undelivered_at = ?")
        params.append(now)
    for name, value in fields.items():
        assignments.append(f"{name} = ?")
        params.append(value.value if isinstance(value, JobState) else value)
    moved = conn.execute(
        f"UPDATE jobs SET {', '.join(assignments)} WHERE id = ? RETURNING *", (*params, job_id)
    ).fetchone()
    return _row_to_job(moved)


def _names(states: Iterable[JobState]) -> str:
    return " or ".join(sorted(s.value for s in states))


# Extra fields a transition (not ``update_job``) may write alongside the state.
_MOVE_FIELDS = _UPDATABLE | {"budget_period", "queued_at"}


class JobStore(Database):
    """The ``jobs`` table."""

    async def insert_job(self, job: Job) -> tuple[Job, bool]:
        """Writes a new job row, or returns the existing one for the same request key.

        A new job whose id collides with another job's is written under a fresh id.

        Returns:
            The stored job and whether this call created it.
        """
        for _ in range(_ID_TRIES):
            row, created = await self._run_tx(_insert_in_tx, job)
            if row is not None:
                return _row_to_job(row), created
            job = dataclasses.replace(job, id=new_job_id())
        raise StoreError(f"no free job id after {_ID_TRIES} tries")

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._read_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _row_to_job(row) if row else None

    async def get_job_by_request(self, request_key: str) -> Job | None:
        row = await self._read_one("SELECT * FROM jobs WHERE request_key = ?", (request_key,))
        return _row_to_job(row) if row else None

    async def update_job(self, job_id: str, *, expect: Iterable[JobState] | None = None, **fields: Any) -> Job:
        """Updates fields of a job (never its state: see ``transition``) in one committed statement.

        Args:
            expect: when given, the update only happens if the job is in one of these states.

        Raises:
            ValueError: for ``state`` or another field that is not updatable.
            StoreError: when the job does not exist or is not in an expected state.
        """
        if "state" in fields:
            raise ValueError("a job's state changes only through Store.transition")
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        values = list(fields.values())
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
                raise NoSuchJob(f"no job {job_id}")
            raise StoreError(f"job {job_id} is {current['state']}, not in an expected state")
        return _row_to_job(row)

    async def transition(
        self,
        job_id: str,
        to: JobState,
        *,
        expect: Iterable[JobState] | None = None,
        also: AlsoFn | None = None,
        **fields: Any,
    ) -> Job:
        """Moves a job to ``to``: the one way any job changes state.

        In one ``BEGIN IMMEDIATE`` transaction: checks the move against ``bot.jobs.MOVES`` (and
        ``expect``), settles the reservation on ``delivered`` or releases it on ``failed``,
        ``cancelled`` and ``refused``, writes ``fields``, then runs ``also(conn, moved_job)``; if
        ``also`` raises, nothing of it happened.

        Raises:
            NoSuchJob, IllegalTransition (``StopRequested`` for a forward move of a job being stopped).
        """
        unknown = set(fields) - _MOVE_FIELDS
        if unknown:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        expected = None if expect is None else frozenset(expect)
        return await self._run_tx(_transition_in_tx, job_id, to, expected, also, fields, self._clock())

    async def finish_job(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        delivered_ref: str | None = None,
        expect: Iterable[JobState] | None = None,
    ) -> Job | None:
        """``transition`` to a final state, for callers that want None rather than an exception.

        A job already in ``state`` is returned unchanged (so repeating a finish is harmless).

        Returns:
            The job as stored afterwards, or None when the move was not allowed: the job is in
            another final state, or not in ``expect``.
        """
        if not state.is_final:
            raise ValueError(f"{state} is not final")
        fields: dict[str, Any] = {}
        if error is not None:
            fields["error"] = error
        if delivered_ref is not None:
            fields["delivered_ref"] = delivered_ref
        try:
            return await self.transition(job_id, state, expect=expect, **fields)
        except IllegalTransition as exc:
            current: Job = exc.job
            return current if current.state is state else None

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
            "AND (lease_owner IS NULL OR lease_expires < ?) "
            "AND (not_before IS NULL OR not_before <= ? OR cancel_requested = 1))) "
            "ORDER BY queued_at, id",
            (*names, *waiting, *active, self._clock(), self._clock()),
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

    async def claim(
        self,
        job_id: str,
        owner: str,
        lease_seconds: float,
        *,
        max_in_flight: int | None = None,
        max_per_user: int | None = None,
    ) -> Job | None:
        """Takes the job for ``owner`` and counts one more attempt at its step, in one transaction.

        A queued job is also started (moved to ``submitting``) if the in-flight caps allow: the
        active jobs are counted inside this transaction, so processes sharing the data dir cannot
        both take the last slot. As arq's ``job_try``, the attempt count is written with the claim,
        so a crash loop is visible after any number of restarts.

        Returns:
            The claimed job (``attempts`` counts this attempt), or None when another live owner
            holds it, it is final, its backoff has not passed, or the caps are full.
        """
        return await self._run_tx(
            _claim_in_tx, job_id, owner, lease_seconds, max_in_flight, max_per_user, self._clock()
        )

    async def delay_step(self, job_id: str, owner: str, until: float) -> None:
        """After a crash in a step: lets go of the job, to be tried again no earlier than ``until``."""
        async with self._tx():
            await self._db.execute(
                "UPDATE jobs SET not_before = ?, lease_owner = NULL, lease_expires = NULL "
                "WHERE id = ? AND lease_owner = ?",
                (until, job_id, owner),
            )

    async def request_stop(self, job_id: str, to: JobState, reason: str) -> Job:
        """Asks the worker driving an active job to end it in ``to`` (cancelled or refused).

        The first stop asked for decides how the job ends. From now on ``transition`` refuses to
        move the job anywhere but to an end (``StopRequested``).

        Raises:
            IllegalTransition: the job is not active (``.job`` is the stored job).
        """
        if to not in RELEASING_STATES:
            raise ValueError(f"{to} is not a way to stop a job")
        return await self._run_tx(_request_stop_in_tx, job_id, to, reason, self._clock())

    async def expired_undelivered(self, before: float, platforms: Iterable[str]) -> list[Job]:
        """Undelivered jobs kept since before ``before`` (their lifetime is over)."""
        names = list(platforms)
        rows = await self._read_all(
            f"SELECT * FROM jobs WHERE state = 'undelivered' AND platform IN ({', '.join('?' * len(names))}) "
            "AND COALESCE(undelivered_at, updated_at) < ? ORDER BY id",
            (*names, before),
        )
        return [_row_to_job(r) for r in rows]

    async def leased_job_ids(self) -> set[str]:
        """Ids of jobs some process holds a live lease on."""
        rows = await self._read_all(
            "SELECT id FROM jobs WHERE lease_owner IS NOT NULL AND lease_expires >= ?", (self._clock(),)
        )
        return {r[0] for r in rows}

    async def has_work(self, platforms: Iterable[str]) -> bool:
        """Whether a worker serving ``platforms`` has anything left to drive (queued or active jobs)."""
        names = list(platforms)
        states = [JobState.QUEUED.value, *(s.value for s in ACTIVE_STATES)]
        row = await self._read_one(
            f"SELECT 1 FROM jobs WHERE platform IN ({', '.join('?' * len(names))}) "
            f"AND state IN ({', '.join('?' * len(states))}) LIMIT 1",
            (*names, *states),
        )
        return row is not None


def _insert_in_tx(conn: sqlite3.Connection, job: Job) -> tuple[sqlite3.Row | None, bool]:
    """Inserts the job; (row, created), or (None, False) when only its id collided."""
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
        job.options.aspect,
        job.options.resolution,
        None if job.options.audio is None else int(job.options.audio),
        job.options.seed,
        job.options.negative,
    )
    cursor = conn.execute(
        f"INSERT OR IGNORE INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * len(values))})", values
    )
    created = cursor.rowcount == 1
    row = conn.execute("SELECT * FROM jobs WHERE request_key = ?", (job.request_key,)).fetchone()
    return row, created


def _transition_in_tx(
    conn: sqlite3.Connection,
    job_id: str,
    to: JobState,
    expect: frozenset[JobState] | None,
    also: AlsoFn | None,
    fields: dict[str, Any],
    now: float,
) -> Job:
    job = move_in_tx(conn, job_id, to, expect=expect, fields=fields, now=now)
    if also is not None:
        also(conn, job)
    return job


def _claim_in_tx(
    conn: sqlite3.Connection,
    job_id: str,
    owner: str,
    lease_seconds: float,
    max_in_flight: int | None,
    max_per_user: int | None,
    now: float,
) -> Job | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None:
        return None
    job = _row_to_job(row)
    held = row["lease_owner"] is not None and row["lease_owner"] != owner and (row["lease_expires"] or 0) >= now
    backing_off = job.not_before is not None and job.not_before > now and not job.cancel_requested
    if held or job.state.is_final or backing_off:  # a stop does not wait out a crash's backoff
        return None
    if job.state is JobState.QUEUED and not job.cancel_requested:
        active = [s.value for s in ACTIVE_STATES]
        marks = ", ".join("?" * len(active))
        if max_in_flight is not None:
            total = conn.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", active).fetchone()[0]
            if total >= max_in_flight:
                return None
        if max_per_user is not None:
            mine = conn.execute(
                f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks}) AND platform = ? AND workspace_id = ? "
                "AND user_id = ?",
                (*active, job.platform, job.workspace_id, job.user_id),
            ).fetchone()[0]
            if mine >= max_per_user:
                return None
        move_in_tx(conn, job_id, JobState.SUBMITTING, expect=None, fields={"started_at": now}, now=now)
    claimed = conn.execute(
        "UPDATE jobs SET lease_owner = ?, lease_expires = ?, "
        "attempts = CASE WHEN attempt_step = state THEN attempts + 1 ELSE 1 END, attempt_step = state "
        "WHERE id = ? RETURNING *",
        (owner, now + lease_seconds, job_id),
    ).fetchone()
    return _row_to_job(claimed)


def _request_stop_in_tx(conn: sqlite3.Connection, job_id: str, to: JobState, reason: str, now: float) -> Job:
    active = [s.value for s in ACTIVE_STATES]
    row = conn.execute(
        "UPDATE jobs SET cancel_requested = 1, stop_to = COALESCE(stop_to, ?), "
        "stop_reason = COALESCE(stop_reason, ?), updated_at = ? "
        f"WHERE id = ? AND state IN ({', '.join('?' * len(active))}) RETURNING *",
        (to.value, reason, now, job_id, *active),
    ).fetchone()
    if row is not None:
        return _row_to_job(row)
    current = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if current is None:
        raise NoSuchJob(f"no job {job_id}")
    job = _row_to_job(current)
    raise IllegalTransition(f"job {job_id} is {job.state.value}, not active", job=job, target=to)
