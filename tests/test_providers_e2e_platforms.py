"""Real providers from the platforms: fal and OpenRouter fakes behind the real Slack (Bolt) and Discord
(discord.py) adapters, each against its fake platform on 127.0.0.1: the happy path and a failover.

The providers are built from settings by ``build_app`` (``FAL_KEY``/``FAL_QUEUE_URL``,
``OPENROUTER_API_KEY``/``OPENROUTER_BASE_URL``), as ``reelbot serve`` builds them. Every wait is a
condition with a deadline.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.app import build_app
from bot.config import Settings
from bot.jobs import JobState
from bot.media import inspect_clip
from tests.fakes.discord_api import DiscordHarness, FakeDiscord
from tests.fakes.fal_queue import FakeFalQueue
from tests.fakes.openrouter_api import FakeOpenRouter
from tests.fakes.slack_api import FakeSlack, SlackBot, slack_env

pytestmark = pytest.mark.timeout(60)

ALICE = "U_ALICE"
CHANNEL = "C_GENERAL"


@pytest.fixture
async def providers() -> AsyncIterator[tuple[FakeFalQueue, FakeOpenRouter]]:
    async with (
        FakeFalQueue(render_seconds=0.3) as fal,
        FakeOpenRouter(shaped_clips=True, pending_s=0.05, in_progress_s=0.25) as openrouter,
    ):
        yield fal, openrouter


def provider_env(fal: FakeFalQueue, openrouter: FakeOpenRouter) -> dict[str, str]:
    return {
        "FAL_KEY": fal.api_key,
        "FAL_QUEUE_URL": fal.queue_url,
        "OPENROUTER_API_KEY": openrouter.api_key,
        "OPENROUTER_BASE_URL": openrouter.base_url,
    }


# -- Slack ----------------------------------------------------------------------------------------------------


@pytest.fixture
async def slack(
    providers: tuple[FakeFalQueue, FakeOpenRouter], make_settings: Callable[..., Settings]
) -> AsyncIterator[SlackBot]:
    """The Slack adapter (HTTP mode) on the app ``build_app`` makes from settings: providers and all."""
    from adapters.slack import SlackAdapter

    async with FakeSlack() as fake:
        settings = make_settings(**slack_env(fake, "http"), **provider_env(*providers))
        app = await build_app(settings)
        adapter = SlackAdapter.from_settings(app.bot, settings, host="127.0.0.1", port=0)
        await adapter.start()
        fake.mode, fake.bot_url = "http", adapter.url
        app.worker.tick_seconds = 0.05
        await app.worker.start()
        bot = SlackBot(fake=fake, app=app, adapter=adapter)
        try:
            yield bot
        finally:
            await bot.stop()


async def slack_command(slack: SlackBot, text: str) -> str:
    before = len(slack.fake.responses)
    ack = await slack.fake.command(text, user=ALICE, channel=CHANNEL)
    assert ack.status == 200 and ack.elapsed < 3.0, ack
    await slack.settle()
    answers = [r for r in slack.fake.responses[before:] if r.get("_user") == ALICE]
    assert answers, f"no answer to {text!r}"
    return answers[-1]["text"]


async def test_slack_veo_on_fal_to_a_clip_in_the_thread(slack: SlackBot, providers) -> None:
    fal, openrouter = providers
    answer = await slack_command(slack, "a paper boat --model veo-3.1-fast --seconds 4")
    assert "queued" in answer and "$0.60" in answer
    job = await slack.delivered((await slack.only_job()).id, within=30)
    assert job.state is JobState.DELIVERED and job.provider == "fal"
    [submit] = fal.calls("submit")
    assert submit.path == "/fal-ai/veo3.1/fast" and submit.json["duration"] == "4s"
    [upload] = slack.fake.uploads
    assert upload.thread_ts == job.card_ref and upload.data == Path(job.clip_path).read_bytes()
    assert "veo-3.1-fast" in upload.initial_comment and "via fal.ai" in upload.initial_comment
    assert inspect_clip(Path(job.clip_path)).has_audio
    assert await slack.store.ledger_for(job.id) == [("reserve", 600_000), ("settle", 600_000)]
    assert openrouter.count("create") == 0


async def test_slack_failover_to_openrouter_is_said_in_the_thread(slack: SlackBot, providers) -> None:
    fal, openrouter = providers
    fal.rate_limit(retry_after=600)  # rate limited past its wait: the next provider is tried
    await slack_command(slack, "a paper boat --model veo-3.1-lite --seconds 4")
    job = await slack.delivered((await slack.only_job()).id, within=30)
    assert job.state is JobState.DELIVERED and job.provider == "openrouter"
    assert not fal.queued and openrouter.count("create") == 1
    replies = [m.get("text", "") for m in slack.fake.thread(CHANNEL, job.card_ref)]
    moved = [t for t in replies if "fal.ai could not take job" in t]
    assert len(moved) == 1 and "through OpenRouter instead, at the same price" in moved[0]
    [upload] = slack.fake.uploads
    assert "via OpenRouter" in upload.initial_comment and "$0.20" in upload.initial_comment
    assert "via OpenRouter" in str(slack.fake.message(CHANNEL, job.card_ref))
    assert await slack.store.ledger_for(job.id) == [("reserve", 200_000), ("settle", 200_000)]


# -- Discord --------------------------------------------------------------------------------------------------


@pytest.fixture
async def discord_env(
    providers: tuple[FakeFalQueue, FakeOpenRouter], make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[FakeDiscord, DiscordHarness]]:
    saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    fake = FakeDiscord()
    await fake.start()
    harness = DiscordHarness(fake, make_settings, **provider_env(*providers))
    try:
        await harness.start()  # provider=None: build_app makes fal and OpenRouter from the settings
        harness.app.worker.tick_seconds = 0.05
        yield fake, harness
    finally:
        with contextlib.suppress(Exception):
            await harness.stop()
        await fake.stop()
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved
    fake.assert_interactions_answered_in_time()


def thread_texts(fake: FakeDiscord, thread: int) -> list[str]:
    return [str(m.get("content") or "") for m in fake.messages.get(thread, [])]


async def discord_create(fake: FakeDiscord, harness: DiscordHarness, options: dict[str, Any]) -> Any:
    rec = await fake.slash("video create", options)
    assert "queued" in await rec.reply()
    return await harness.job_for(rec)


async def test_discord_veo_on_fal_to_a_clip_in_the_thread(discord_env, providers) -> None:
    fake, harness = discord_env
    fal, openrouter = providers
    job = await discord_create(fake, harness, {"prompt": "a paper boat", "model": "veo-3.1-fast", "seconds": 4})
    assert job.cost_micros == 600_000
    job = await harness.wait_state(job.id, "delivered", within=30)
    assert job.provider == "fal"
    [submit] = fal.calls("submit")
    assert submit.path == "/fal-ai/veo3.1/fast" and submit.json["duration"] == "4s"
    thread = int(job.card_ref)
    (upload,) = fake.files_in(thread)
    assert upload.data == Path(job.clip_path).read_bytes()
    caption = fake.message(thread, job.delivered_ref.split(":")[1])["content"]
    assert "veo-3.1-fast" in caption and "via fal.ai" in caption and "$0.60" in caption
    assert await harness.app.store.ledger_for(job.id) == [("reserve", 600_000), ("settle", 600_000)]
    assert openrouter.count("create") == 0


async def test_discord_failover_to_openrouter_is_said_in_the_thread(discord_env, providers) -> None:
    fake, harness = discord_env
    fal, openrouter = providers
    fal.rate_limit(retry_after=600)
    job = await discord_create(fake, harness, {"prompt": "a paper boat", "model": "veo-3.1-lite", "seconds": 4})
    job = await harness.wait_state(job.id, "delivered", within=30)
    assert job.provider == "openrouter" and not fal.queued
    [create] = openrouter.calls("create")
    assert create.json["model"] == "google/veo-3.1-lite"
    thread = int(job.card_ref)
    said = thread_texts(fake, thread)
    moved = [t for t in said if "fal.ai could not take job" in t]
    assert len(moved) == 1 and "through OpenRouter instead, at the same price" in moved[0]
    caption = fake.message(thread, job.delivered_ref.split(":")[1])["content"]
    assert "via OpenRouter" in caption and "$0.20" in caption
    assert await harness.app.store.ledger_for(job.id) == [("reserve", 200_000), ("settle", 200_000)]
