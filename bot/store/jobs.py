"""Job rows: insert, read, update and the queries the scheduler and commands make."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any

import aiosqlite

from bot.jobs import ACTIVE_STATES, Job, JobOptions, JobState
from bot.store._base import Database, StoreError

_JOB_COLUMNS = (
    "id, request_key, platform, workspace_id, user_id, user_name, channel_id, thread_id, prompt, model, "
    "size, seconds, cameo, state, cost_micros, budget_period, provider, provider_video_id, progress, "
    "card_ref, clip_path, delivered_ref, error, tries, cancel_requested, remix_of, reference_path, "
    "created_at, updated_at, started_at, aspect, resolution, audio, seed, negative"
)
_USER_KEY_OF_J = "j.platform || ':' || j.workspace_id || ':' || j.user_id"

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
    )


class JobStore(Database):
    """The ``jobs`` table."""

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
            job.options.aspect,
            job.options.resolution,
            None if job.options.audio is None else int(job.options.audio),
            job.options.seed,
            job.options.negative,
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
