"""The consent tables: cameos, who may use them, forbidden words, consent requests, the cameo audit."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiosqlite

from bot.jobs import Job, JobState
from bot.store._base import StoreError
from bot.store.jobs import _row_to_job

if TYPE_CHECKING:
    from bot.store import Store


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
    # The face embedding of the likeness (float32 bytes), for refusing the same face to another owner.
    embedding: bytes | None = None
    embedding_model: str | None = None
    # Who vouched that the cameo shows the person who registered it: ``admin:<key>``, ``profile``
    # (it matched their platform profile photo) or ``not_required`` (verification was off).
    verified_by: str | None = None
    verified_at: float | None = None


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

    async def save(
        self, cameo: Cameo, *, actor_key: str, action: str, detail: str = "", files: Iterable[str] = ()
    ) -> None:
        """Inserts or replaces the cameo row, lists its new ``files`` and appends an audit event, in one transaction."""
        now = self._s._clock()
        async with self._s._tx():
            await self._s._db.execute(
                "INSERT INTO cameos (owner_key, platform, workspace_id, user_id, display_name, status, audience, "
                "asset_path, asset_hash, asset_kind, likeness_path, embedding, embedding_model, verified_by, "
                "verified_at, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner_key) DO UPDATE SET "
                "display_name = excluded.display_name, status = excluded.status, audience = excluded.audience, "
                "asset_path = excluded.asset_path, asset_hash = excluded.asset_hash, "
                "asset_kind = excluded.asset_kind, likeness_path = excluded.likeness_path, "
                "embedding = excluded.embedding, embedding_model = excluded.embedding_model, "
                "verified_by = excluded.verified_by, verified_at = excluded.verified_at, "
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
                    cameo.embedding,
                    cameo.embedding_model,
                    cameo.verified_by,
                    cameo.verified_at,
                    now,
                    now,
                ),
            )
            for path in files:
                await self._s._db.execute(
                    "INSERT OR IGNORE INTO cameo_files (owner_key, path, created_at) VALUES (?, ?, ?)",
                    (cameo.owner_key, path, now),
                )
            await self._append(cameo.owner_key, actor_key, action, None, detail, now)

    async def files(self, owner_key: str) -> list[str]:
        """Every file any registration of this owner wrote that is not known to be deleted."""
        rows = await self._s._read_all("SELECT path FROM cameo_files WHERE owner_key = ? ORDER BY id", (owner_key,))
        return [r[0] for r in rows]

    async def forget_files(self, owner_key: str, paths: Iterable[str]) -> None:
        """Drops the rows of files that were deleted."""
        async with self._s._tx():
            for path in paths:
                await self._s._db.execute("DELETE FROM cameo_files WHERE owner_key = ? AND path = ?", (owner_key, path))

    async def registered_faces(self, *, other_than: str, model: str) -> list[tuple[str, bytes]]:
        """``(owner_key, embedding)`` of every active cameo but ``other_than``'s, in ``model``'s space."""
        rows = await self._s._read_all(
            "SELECT owner_key, embedding FROM cameos WHERE status = 'active' AND embedding IS NOT NULL "
            "AND embedding_model = ? AND owner_key != ?",
            (model, other_than),
        )
        return [(r[0], r[1]) for r in rows]

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

    async def hold(
        self,
        job_id: str,
        *,
        owner_key: str,
        requester_key: str,
        timeout_s: float,
        new_id: Callable[[], str],
        tries: int = 5,
    ) -> tuple[Job, ConsentRequest]:
        """Moves the job to ``pending_consent`` and writes its consent request in one transaction.

        A request id that is already taken (ids are random) rolls the whole transaction back and
        the hold is tried again with a fresh id, so a job is never left waiting without a request.
        """
        for _ in range(tries):
            now = self._s._clock()
            request = ConsentRequest(new_id(), owner_key, requester_key, job_id, "pending", now, now + timeout_s)

            def insert(conn: sqlite3.Connection, job: Job, request: ConsentRequest = request) -> None:
                _insert_request(conn, request)

            try:
                job = await self._s.transition(
                    job_id, JobState.PENDING_CONSENT, expect=[JobState.RECEIVED], also=insert
                )
            except Exception as exc:
                if _is_request_id_collision(exc):
                    continue
                raise
            return job, request
        raise StoreError(f"no free consent request id after {tries} tries")

    async def stale_holds(self, *, created_before: float) -> list[tuple[Job, str | None]]:
        """Jobs in ``pending_consent`` with no pending request, older than ``created_before``.

        Each comes with its request's status (None when it has none): a crash between an approval
        and the admission leaves ``approved``; a database from before the one-transaction hold may
        have a job without any request.
        """
        rows = await self._s._read_all(
            "SELECT j.*, c.status AS consent_status FROM jobs j LEFT JOIN consent_requests c ON c.job_id = j.id "
            "WHERE j.state = 'pending_consent' AND j.created_at < ? AND (c.status IS NULL OR c.status != 'pending')",
            (created_before,),
        )
        return [(_row_to_job(r), r["consent_status"]) for r in rows]

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


def _insert_request(conn: sqlite3.Connection, request: ConsentRequest) -> None:
    conn.execute(
        "INSERT INTO consent_requests (id, owner_key, requester_key, job_id, status, created_at, expires_at) "
        "VALUES (?, ?, ?, ?, 'pending', ?, ?)",
        (request.id, request.owner_key, request.requester_key, request.job_id, request.created_at, request.expires_at),
    )
    conn.execute(
        "INSERT INTO cameo_audit (at, owner_key, actor_key, action, job_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (request.created_at, request.owner_key, request.requester_key, "consent_requested", request.job_id, request.id),
    )


def _is_request_id_collision(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, sqlite3.IntegrityError) and "consent_requests.id" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
