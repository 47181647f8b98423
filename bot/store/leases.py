"""Leases: which process drives a job, so several processes can share one data dir."""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import Iterable

from bot.store._base import Database


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


class LeaseStore(Database):
    """Claiming, renewing and releasing jobs."""

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
