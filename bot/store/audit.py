"""Platform event dedupe and the general audit log."""

from __future__ import annotations

from bot.store._base import Database


class AuditStore(Database):
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
