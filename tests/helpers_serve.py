"""The real ``reelbot serve`` as a child process against the fake Slack / Discord running in the test.

- ``ServeBot``: a data dir, the env that points ``reelbot serve`` at a fake platform, the serve
  processes started on it (SIGKILLed in ``close()``), and an async read-only look at its SQLite file.
- ``SlowSlack`` / ``FlakyDiscord``: the fakes with two knobs the fakes themselves lack, added by
  subclassing (the fakes are not edited): a delay around the clip upload (to hold the bot in
  ``delivering``, before or after the platform has recorded the clip) and, for Discord, 429 answers
  (Slack's fake already has ``fail(method, "ratelimited", status=429, retry_after=...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.discord_api import FakeDiscord, _json
from tests.fakes.slack_api import FakeSlack
from tests.helpers_processes import Db, ReelbotProcess, reelbot_env

FINAL = frozenset({"delivered", "failed", "cancelled", "refused"})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the fakes, with a delay and 429s --------------------------------------------------------------------


class Hold:
    """Holds requests until ``release()`` (or ``limit`` seconds): a slow platform, cancelled at teardown."""

    def __init__(self, limit: float = 30.0) -> None:
        self.limit = limit
        self._released = asyncio.Event()

    async def __call__(self, active: bool) -> None:
        if active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), self.limit)

    def release(self) -> None:
        self._released.set()


def abandoned(request: web.Request) -> bool:
    """The client went away while its request was held (it was killed): the platform never got it all."""
    return request.transport is None or request.transport.is_closing()


class SlowSlack(FakeSlack):
    """``FakeSlack`` whose ``files.completeUploadExternal`` can be held.

    ``hold_before``: held before the fake records the upload (a kill in this window leaves no clip in
    Slack); ``hold_after``: held after it recorded the clip and before it answers (a kill here leaves
    the clip posted but the bot not knowing). ``release()`` lets held requests go, and stops holding.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold_before = False
        self.hold_after = False
        self.completes_started = 0
        self._hold = Hold()

    def release(self) -> None:
        self.hold_before = self.hold_after = False
        self._hold.release()

    async def close(self) -> None:
        self.release()
        await super().close()

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["method"] != "files.completeUploadExternal":
            return await super()._api(request)
        self.completes_started += 1
        await self._hold(self.hold_before)
        if abandoned(request):
            return web.json_response({"ok": False, "error": "request_abandoned"})
        response = await super()._api(request)
        await self._hold(self.hold_after)
        return response


@dataclass
class RateLimit:
    method: str  # "POST" (a message, ``uploads_only``: one with a file) or "PATCH" (a card edit)
    retry_after: float
    uploads_only: bool = False
    via: bool = True  # False: a 429 without ``Via``, as Cloudflare answers (discord.py does not retry it)


class FlakyDiscord(FakeDiscord):
    """``FakeDiscord`` that can answer channel-message POST/PATCH with 429 and be slow to take a clip.

    ``rate_limit(...)`` queues 429 answers: with ``Retry-After``, ``X-RateLimit-*`` headers and a
    JSON ``retry_after`` like Discord's. ``hold_before`` / ``hold_after`` hold a clip upload (a
    message POST with a file) before / after the fake stored the message, until ``release()``.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._limits: list[RateLimit] = []
        self.limited: list[tuple[str, str, float]] = []  # (method, path, retry_after) answered 429
        self.hold_before = False
        self.hold_after = False
        self.uploads_started = 0
        self._hold = Hold()

    def release(self) -> None:
        self.hold_before = self.hold_after = False
        self._hold.release()

    async def stop(self) -> None:
        self.release()
        await super().stop()

    def rate_limit(
        self, method: str, *, times: int = 1, retry_after: float = 0.5, uploads_only: bool = False, via: bool = True
    ) -> None:
        self._limits.extend([RateLimit(method, retry_after, uploads_only, via)] * times)

    def _take_limit(self, request: web.Request) -> RateLimit | None:
        is_upload = request.content_type.startswith("multipart/")
        for limit in self._limits:
            if limit.method == request.method and (is_upload or not limit.uploads_only):
                self._limits.remove(limit)
                return limit
        return None

    def _too_many(self, request: web.Request, limit: RateLimit) -> web.Response:
        self._log(request)
        self.limited.append((request.method, request.path, limit.retry_after))
        response = _json({"message": "You are being rate limited.", "retry_after": limit.retry_after, "global": False})
        response.set_status(429)
        response.headers.update(
            {
                "Retry-After": str(max(1, round(limit.retry_after))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": str(limit.retry_after),
                "X-RateLimit-Bucket": "fakebucket",
                "X-RateLimit-Scope": "user",
            }
        )
        if limit.via:
            response.headers["Via"] = "1.1 google"
        return response

    async def _post_message(self, request: web.Request) -> web.Response:
        limit = self._take_limit(request)
        if limit is not None:
            return self._too_many(request, limit)
        if not request.content_type.startswith("multipart/"):
            return await super()._post_message(request)
        self.uploads_started += 1
        await self._hold(self.hold_before)
        if abandoned(request):
            return web.Response(status=499, text="the client went away")
        response = await super()._post_message(request)
        await self._hold(self.hold_after)
        return response

    async def _edit_message(self, request: web.Request) -> web.Response:
        limit = self._take_limit(request)
        if limit is not None:
            return self._too_many(request, limit)
        return await super()._edit_message(request)


# --- reelbot serve ------------------------------------------------------------------------------------


def slack_serve_env(fake: FakeSlack, http_port: int) -> dict[str, object]:
    return {
        "SLACK_BOT_TOKEN": fake.bot_token,
        "SLACK_SIGNING_SECRET": fake.signing_secret,
        "SLACK_API_URL": fake.api_url,
        "REELBOT_HTTP_PORT": http_port,
    }


def discord_serve_env(fake: FakeDiscord) -> dict[str, object]:
    return {
        "DISCORD_BOT_TOKEN": fake.token,
        "DISCORD_API_URL": fake.api_url,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
    }


class ServeBot:
    """``reelbot serve`` processes run one after another on one data dir."""

    def __init__(self, tmp_path: Path, **env: object) -> None:
        self.tmp = tmp_path
        self.data = tmp_path / "data"
        self.env = reelbot_env(self.data, **env)
        self.db = Db(self.data / "reelbot.db")
        self.processes: list[ReelbotProcess] = []

    @property
    def process(self) -> ReelbotProcess:
        return self.processes[-1]

    async def start(self, within: float = 15) -> ReelbotProcess:
        """Starts ``reelbot serve`` and waits for its "reelbot is serving" line."""
        process = ReelbotProcess(["serve"], self.env, self.tmp)
        self.processes.append(process)
        deadline = time.monotonic() + within
        while "reelbot is serving" not in "".join(process.read_both()):
            if process.proc.poll() is not None:
                raise AssertionError(f"reelbot serve exited with {process.proc.returncode}:\n{process.read()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"reelbot serve did not start within {within} s:\n{process.read()}")
            await asyncio.sleep(0.05)
        return process

    def kill(self) -> None:
        """SIGKILL, then what the passing minute would do: the dead process's leases run out."""
        self.process.kill()
        with contextlib.closing(sqlite3.connect(self.db.path, timeout=10)) as db, db:
            db.execute("UPDATE jobs SET lease_expires = 0 WHERE lease_owner IS NOT NULL")

    def close(self) -> None:
        for process in self.processes:
            process.close()

    def output(self) -> str:
        return "\n".join(p.read() for p in self.processes)

    # --- the store, read-only -----------------------------------------------------------------------

    def jobs(self) -> dict[str, dict[str, Any]]:
        rows = self.db._query(
            "SELECT id, state, channel_id, thread_id, card_ref, delivered_ref, clip_path, error, request_key, "
            "cost_micros FROM jobs ORDER BY created_at"
        )
        keys = (
            "id",
            "state",
            "channel_id",
            "thread_id",
            "card_ref",
            "delivered_ref",
            "clip_path",
            "error",
            "request_key",
            "cost_micros",
        )
        return {row[0]: dict(zip(keys, row, strict=True)) for row in rows}

    def states(self) -> dict[str, str]:
        return {job_id: job["state"] for job_id, job in self.jobs().items()}

    async def wait_for(
        self, what: str, predicate: Callable[[dict[str, str]], bool], within: float = 20, interval: float = 0.02
    ) -> dict[str, str]:
        """Polls the job states (without blocking the fakes' event loop) until ``predicate`` holds."""
        deadline = time.monotonic() + within
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(sqlite3.OperationalError):
                states = self.states()
                if predicate(states):
                    return states
            await asyncio.sleep(interval)
        raise AssertionError(f"timed out waiting for {what}; jobs: {states}\n{self.output()[-4000:]}")

    async def wait_all_final(self, count: int, within: float = 30) -> dict[str, str]:
        return await self.wait_for(
            f"{count} jobs to finish",
            lambda s: len(s) == count and set(s.values()) <= FINAL,
            within=within,
        )
