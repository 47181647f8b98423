"""The real ``reelbot serve`` with provider keys only: it renders terminal jobs and takes signed webhooks."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.fakes.fal_queue import DEFAULT_USER_ID, FakeFalQueue
from tests.helpers_processes import run_reelbot
from tests.helpers_serve import ServeBot, free_port

pytestmark = pytest.mark.timeout(120)


async def test_serve_with_only_a_fal_key_renders_terminal_jobs_and_is_woken_by_fals_webhook(tmp_path) -> None:
    async with FakeFalQueue(render_seconds=1.0) as fal:
        port = free_port()
        bot = ServeBot(
            tmp_path,
            FAL_KEY=fal.api_key,
            FAL_QUEUE_URL=fal.queue_url,
            FAL_JWKS_URL=fal.jwks_url,
            FAL_USER_ID=DEFAULT_USER_ID,
            REELBOT_PUBLIC_URL=f"http://127.0.0.1:{port}",
            REELBOT_HTTP_PORT=port,
        )
        try:
            await bot.start()
            async with httpx.AsyncClient(trust_env=False) as client:
                assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            text = "/video a fox in the snow --model veo-3.1-lite --seconds 4 --silent"
            queued = await asyncio.to_thread(
                run_reelbot, ["console", "--as", "alice", "--no-wait", "--json", text], bot.env, tmp_path
            )
            assert queued.returncode == 0, queued
            assert queued.json["model"] == "veo-3.1-lite" and queued.json["provider"] == "fal"
            assert queued.json["cost_usd"] == "0.12"  # 4 s x $0.03 silent at 720p
            started = time.monotonic()
            await bot.wait_for("the clip", lambda s: set(s.values()) == {"delivered"}, within=25)
            took = time.monotonic() - started
            # The safety-net poll comes 30 s apart while a webhook is expected: only the webhook explains this.
            assert took < 20, took
            [delivery] = [d for d in fal.webhooks if d.status is not None]
            assert delivery.status == 200 and delivery.url.startswith(f"http://127.0.0.1:{port}/webhooks/fal?job=")
            [submit] = fal.calls("submit")
            assert submit.json["duration"] == "4s" and submit.json["generate_audio"] is False
            assert fal.count("status") <= 3
            [job] = bot.jobs().values()
            assert job["cost_micros"] == 120_000
        finally:
            bot.close()
