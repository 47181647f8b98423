"""The provider failing in every way the /v1/videos spec allows, through the whole bot.

Each case runs a clip request through ``ReelBot.handle``, the real worker and the real
``OpenAIVideosProvider`` over loopback HTTP against ``FakeVideosServer`` with an injected fault,
and checks the three promises of the issue: nothing is lost (the job reaches an end state), the
person is told (the terminal adapter's posts say what happened), and nothing failed is billed (the
ledger released it; only delivered clips are settled).

``tests/test_worker_openai.py`` already covers 429 with Retry-After on create, 503 bursts on
retrieve, moderation, a bad key, a retired model, HTML instead of a clip, a truncated clip, relay
shapes, a reset create, a render that never finishes, and a short outage; this file covers the
rest. Waits go through recorders that count virtual seconds but barely sleep, so "the host is
down for five minutes" takes about a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.console import ConsoleDelivery
from bot.app import App, build_app
from bot.config import Settings
from bot.jobs import ChatRequest, Job, JobState, Requester
from bot.providers.openai_videos import OpenAIVideosProvider
from tests.fakes.videos_server import FakeVideosServer

pytestmark = pytest.mark.timeout(60)

COST = 400_000  # the default clip: sora-2, 4 s


class VirtualSleep:
    """Records the waits asked for, adds them up as virtual seconds, and sleeps at most ``cap`` for real."""

    def __init__(self, cap: float = 0.01) -> None:
        self.cap = cap
        self.waits: list[float] = []

    @property
    def total(self) -> float:
        return sum(self.waits)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(min(max(seconds, 0.0), self.cap))


class Bot:
    """The assembled bot with its fake service, delivery and sleep recorders."""

    def __init__(self, app: App, fake: FakeVideosServer, provider_sleep: VirtualSleep, worker_sleep: VirtualSleep):
        self.app = app
        self.fake = fake
        self.provider_sleep = provider_sleep
        self.worker_sleep = worker_sleep

    @property
    def delivery(self) -> ConsoleDelivery:
        return self.app.bot.deliveries["console"]  # type: ignore[return-value]

    async def ask(self, text: str = "a calico cat playing piano") -> Job:
        reply = await self.app.bot.handle(
            ChatRequest(
                requester=Requester("console", "w1", "alice", "@alice"),
                request_key=f"k-{time.monotonic_ns()}",
                channel_id="terminal",
                text=text,
            )
        )
        assert reply.ok and reply.job is not None, reply.text
        return reply.job

    async def run(self, text: str = "a calico cat playing piano") -> Job:
        job = await self.ask(text)
        return await self.app.worker.wait_for(job.id, timeout=40)

    def told(self, job: Job) -> list[str]:
        return [post for post in self.delivery.posts if job.id in post and "📎" not in post]

    async def assert_failed_told_unbilled(self, job: Job, *fragments: str) -> None:
        assert job.state is JobState.FAILED, (job.state, job.error)
        for fragment in fragments:
            assert fragment in (job.error or ""), job.error
        told = [post for post in self.told(job) if "failed" in post]
        assert told and "not charged" in told[-1], self.delivery.posts
        assert await self.app.store.ledger_for(job.id) == [("reserve", COST), ("release", COST)]
        await self.assert_balanced()

    async def assert_delivered_once(self, job: Job) -> None:
        assert job.state is JobState.DELIVERED, (job.state, job.error)
        clips = [post for post in self.delivery.posts if "📎" in post and job.id in post]
        assert len(clips) == 1, self.delivery.posts
        assert await self.app.store.ledger_for(job.id) == [("reserve", COST), ("settle", COST)]
        await self.assert_balanced()

    async def assert_balanced(self) -> None:
        totals = await self.app.store.ledger_totals()
        open_jobs = await self.app.store.jobs_in_states(
            [JobState.QUEUED, JobState.SUBMITTING, JobState.RENDERING, JobState.DOWNLOADING, JobState.DELIVERING]
        )
        assert totals.reserved == totals.settled + totals.released + sum(j.cost_micros for j in open_jobs)


async def open_bot(settings: Settings, fake: FakeVideosServer, *, request_timeout: float = 2.0) -> Bot:
    provider_sleep, worker_sleep = VirtualSleep(), VirtualSleep()
    provider = OpenAIVideosProvider(
        api_key=fake.api_key, base_url=fake.base_url, sleep=provider_sleep, request_timeout=request_timeout
    )
    app = await build_app(settings, provider=provider)
    app.bot.register(ConsoleDelivery(quiet=True))
    app.worker.tick_seconds = 0.05
    app.worker._sleep = worker_sleep
    await app.worker.start()
    return Bot(app, fake, provider_sleep, worker_sleep)


@pytest.fixture
async def fake() -> AsyncIterator[FakeVideosServer]:
    async with FakeVideosServer(render_seconds=0.4) as server:
        yield server


@pytest.fixture
async def bot(make_settings: Callable[..., Settings], fake: FakeVideosServer) -> AsyncIterator[Bot]:
    assembled = await open_bot(make_settings(), fake)
    try:
        yield assembled
    finally:
        await assembled.app.close()


# --- 429 ---------------------------------------------------------------------------------------------


async def test_429_without_retry_after_backs_off_and_then_delivers(bot: Bot) -> None:
    bot.fake.rate_limit("create", times=3)
    bot.fake.rate_limit("retrieve", times=2)
    job = await bot.run()
    await bot.assert_delivered_once(job)
    assert bot.fake.count("create") == 4
    # No server wait: exponential backoff with jitter (0.5 s, 1 s, 2 s times 0.75-1).
    backoffs = bot.provider_sleep.waits[:3]
    assert 0.375 <= backoffs[0] <= 0.5 and 0.75 <= backoffs[1] <= 1.0 and 1.5 <= backoffs[2] <= 2.0


async def test_429_with_retry_after_ms_waits_exactly_that(bot: Bot) -> None:
    bot.fake.rate_limit("retrieve", times=1, retry_after_ms=1500)
    bot.fake.rate_limit("create", times=1, retry_after="7", retry_after_ms=250)
    job = await bot.run()
    await bot.assert_delivered_once(job)
    assert 0.25 in bot.provider_sleep.waits and 1.5 in bot.provider_sleep.waits
    assert 7.0 not in bot.provider_sleep.waits  # retry-after-ms wins over Retry-After


async def test_429_asking_for_minutes_is_waited_by_the_worker_not_inside_a_call(bot: Bot) -> None:
    bot.fake.rate_limit("create", times=1, retry_after=300)
    job = await bot.run()
    await bot.assert_delivered_once(job)
    assert 300.0 in bot.worker_sleep.waits and 300.0 not in bot.provider_sleep.waits
    assert bot.fake.count("create") == 2


async def test_a_429_storm_that_never_ends_fails_the_job_unbilled(bot: Bot) -> None:
    bot.fake.rate_limit("create", times=None)
    job = await bot.run()
    await bot.assert_failed_told_unbilled(job, "rate limited")
    assert not bot.fake.videos  # no render was ever started at the provider


async def test_insufficient_quota_is_not_retried_by_the_worker_and_is_unbilled(bot: Bot) -> None:
    bot.fake.inject(
        "create",
        status=429,
        code="insufficient_quota",
        type="insufficient_quota",
        times=None,
        message="You exceeded your current quota, please check your plan and billing details.",
    )
    job = await bot.run()
    await bot.assert_failed_told_unbilled(job)
    # The client retries a 429 like the SDKs do (1 + 4 sends); the worker then gives up at once.
    assert bot.fake.count("create") == 5
    assert (await bot.app.store.get_job(job.id)).tries == 0


async def test_insufficient_quota_tells_the_person_an_admin_must_act(bot: Bot) -> None:
    bot.fake.inject("create", status=429, code="insufficient_quota", type="insufficient_quota", times=None)
    job = await bot.run()
    assert job.state is JobState.FAILED
    assert "try again in a little while" not in job.error and "admin" in job.error


# --- 5xx ---------------------------------------------------------------------------------------------


async def test_a_500_burst_longer_than_the_clients_retries_is_ridden_out_by_the_worker(bot: Bot) -> None:
    bot.fake.server_errors("create", times=7, status=500)  # 5 in the first call, 2 in the second
    bot.fake.server_errors("content", times=3, status=503)
    job = await bot.run()
    await bot.assert_delivered_once(job)
    assert bot.fake.count("create") == 8 and len(bot.fake.videos) == 1


async def test_503_that_never_ends_fails_the_job_unbilled_after_the_worker_gives_up(bot: Bot) -> None:
    bot.fake.server_errors("create", times=None, status=503)
    job = await bot.run()
    await bot.assert_failed_told_unbilled(job, "internal error")
    assert bot.fake.count("create") == 5 * 5  # 5 worker tries x (1 + 4 client retries)
    assert not bot.fake.videos


# --- timeouts, resets, garbage -------------------------------------------------------------------------


async def test_timeouts_on_reads_are_retried_and_the_clip_arrives(
    make_settings: Callable[..., Settings], fake: FakeVideosServer
) -> None:
    bot = await open_bot(make_settings(), fake, request_timeout=0.3)
    try:
        fake.inject("retrieve", delay=1.0, times=2)
        fake.inject("content", delay=1.0, times=1)
        job = await bot.run()
        await bot.assert_delivered_once(job)
    finally:
        await bot.app.close()


async def test_a_create_that_timed_out_after_reaching_the_service_is_adopted_not_resent(
    make_settings: Callable[..., Settings], fake: FakeVideosServer
) -> None:
    bot = await open_bot(make_settings(), fake, request_timeout=0.3)
    try:
        fake.inject("create", delay=1.0, process=True)
        job = await bot.run()
        await bot.assert_delivered_once(job)
        assert fake.count("create") == 1  # never sent twice: it would have been billed twice
    finally:
        await bot.app.close()


async def test_connection_resets_on_reads_are_retried(bot: Bot) -> None:
    bot.fake.inject("retrieve", reset=True, times=2)
    bot.fake.inject("content", truncate_after=10_000, times=1)
    job = await bot.run()
    await bot.assert_delivered_once(job)
    assert bot.fake.count("content") == 2


async def test_garbage_json_on_retrieve_is_retried(bot: Bot) -> None:
    bot.fake.inject("retrieve", garbage=True, times=3)
    job = await bot.run()
    await bot.assert_delivered_once(job)


async def test_garbage_json_from_create_fails_without_resending(bot: Bot) -> None:
    bot.fake.inject("create", garbage=True)
    job = await bot.run()
    await bot.assert_failed_told_unbilled(job, "stopped answering")
    assert bot.fake.count("create") == 1


async def test_a_video_the_service_forgot_fails_unbilled(bot: Bot) -> None:
    job = await bot.ask()
    while not bot.fake.videos:
        await asyncio.sleep(0.01)
    bot.fake.videos.clear()  # the service lost it (404 from now on)
    done = await bot.app.worker.wait_for(job.id, timeout=30)
    await bot.assert_failed_told_unbilled(done, "no longer knows")


# --- jobs that never finish, clips that are not videos -----------------------------------------------------


async def test_a_job_stuck_in_the_services_queue_hits_the_deadline(
    make_settings: Callable[..., Settings], fake: FakeVideosServer
) -> None:
    fake.plan(queue_seconds=10_000)
    bot = await open_bot(make_settings(REELBOT_RENDER_DEADLINE_S=1.0), fake)
    try:
        job = await bot.run()
        await bot.assert_failed_told_unbilled(job, "did not finish")
        assert fake.count("delete") == 1 and not fake.videos  # not left running (and billing) at the service
    finally:
        await bot.app.close()


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"\x89PNG\r\n\x1a\n" + bytes(4000), "video/mp4"),  # labelled a video, is a picture
        (b'{"error": {"message": "expired"}}', "application/json"),
        (b"", "video/mp4"),
    ],
    ids=["png-labelled-mp4", "json-body", "empty"],
)
async def test_a_clip_that_is_not_a_video_fails_unbilled(bot: Bot, content: bytes, content_type: str) -> None:
    bot.fake.plan(content=content, content_type=content_type)
    job = await bot.run()
    await bot.assert_failed_told_unbilled(job, "not a video")
    assert not (bot.app.settings.clips_dir / f"{job.id}.mp4").exists()


async def test_a_clip_of_the_wrong_length_is_never_delivered(bot: Bot) -> None:
    from tests.fakes.videos_server import encode_mp4

    bot.fake.plan(content=encode_mp4(1280, 720, 8))  # paid for 4 s, got 8 s
    job = await bot.run()
    await bot.assert_failed_told_unbilled(job, "broken")


# --- the host down for minutes ------------------------------------------------------------------------------


async def test_the_host_down_for_five_minutes_while_rendering_then_back(bot: Bot) -> None:
    job = await bot.ask()
    while (await bot.app.store.get_job(job.id)).state is not JobState.RENDERING:
        await asyncio.sleep(0.01)
    await bot.fake.stop()
    down_at = bot.provider_sleep.total + bot.worker_sleep.total
    while bot.provider_sleep.total + bot.worker_sleep.total - down_at < 300:
        assert (await bot.app.store.get_job(job.id)).state is JobState.RENDERING
        await asyncio.sleep(0.02)
    await bot.fake.start()
    done = await bot.app.worker.wait_for(job.id, timeout=30)
    await bot.assert_delivered_once(done)
    assert bot.fake.count("create") == 1


async def test_the_host_down_when_the_render_is_started_fails_unbilled_and_starts_nothing(bot: Bot) -> None:
    await bot.fake.stop()
    try:
        job = await bot.run()
    finally:
        await bot.fake.start()
    await bot.assert_failed_told_unbilled(job, "could not be reached")
    assert bot.provider_sleep.total + bot.worker_sleep.total > 20  # it kept trying for a while first
    assert not bot.fake.videos and bot.fake.count("create") == 0


async def test_the_host_down_during_the_download_then_back(bot: Bot) -> None:
    bot.fake.inject("content", delay=0.0, status=502, times=6)  # a proxy in front answers 502 for a while
    job = await bot.run()
    await bot.assert_delivered_once(job)
    assert bot.fake.count("content") == 7
