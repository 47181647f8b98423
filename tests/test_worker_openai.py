"""The worker and the real /v1/videos client against the fake server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.console import ConsoleDelivery
from bot.app import App, build_app
from bot.config import Settings
from bot.jobs import ChatRequest, InputFile, Job, JobState, Requester
from bot.providers.openai_videos import OpenAIVideosProvider
from tests.fakes.videos_server import FakeVideosServer
from tests.media_factory import image_bytes

pytestmark = pytest.mark.timeout(60)


def ask(text: str, user: str = "alice", attachments: tuple[InputFile, ...] = ()) -> ChatRequest:
    return ChatRequest(
        requester=Requester("console", "w1", user, f"@{user}"),
        request_key=f"k-{time.monotonic_ns()}",
        channel_id="terminal",
        text=text,
        attachments=attachments,
    )


async def no_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeVideosServer]:
    async with FakeVideosServer(render_seconds=0.6) as server:
        yield server


async def open_app(settings: Settings, fake: FakeVideosServer, key: str | None = None) -> App:
    provider = OpenAIVideosProvider(
        api_key=key or fake.api_key, base_url=fake.base_url, sleep=no_sleep, request_timeout=2.0
    )
    app = await build_app(settings, provider=provider)
    delivery = ConsoleDelivery(quiet=True)
    app.bot.register(delivery)
    app.worker.tick_seconds = 0.05
    app.worker._sleep = lambda s: asyncio.sleep(min(s, 0.2))
    await app.worker.start()
    return app


@pytest.fixture
async def app(make_settings: Callable[..., Settings], fake: FakeVideosServer) -> AsyncIterator[App]:
    application = await open_app(make_settings(), fake)
    yield application
    await application.close()


async def run(app: App, text: str, **kwargs: object) -> Job:
    reply = await app.bot.handle(ask(text, **kwargs))
    assert reply.ok, reply.text
    return await app.worker.wait_for(reply.job.id, timeout=30)


async def test_a_clip_through_the_protocol(app: App, fake: FakeVideosServer) -> None:
    job = await run(app, "a calico cat playing piano --pro --seconds 8 --portrait")
    assert job.state is JobState.DELIVERED, job.error
    create = fake.calls("create")[0]
    assert create.json == {
        "prompt": "a calico cat playing piano",
        "model": "sora-2-pro",
        "seconds": "8",
        "size": "720x1280",
    }
    assert job.provider_video_id.startswith("video_")
    assert await app.store.ledger_for(job.id) == [("reserve", 2_400_000), ("settle", 2_400_000)]


async def test_a_reference_image_goes_as_multipart_at_the_exact_size(app: App, fake: FakeVideosServer) -> None:
    picture = InputFile("boat.jpg", "image/jpeg", image_bytes("JPEG", 900, 900))
    job = await run(app, "a paper boat", attachments=(picture,))
    assert job.state is JobState.DELIVERED, job.error
    create = fake.calls("create")[0]
    assert create.body_kind == "multipart"
    assert create.form["seconds"] == "4"


async def test_rate_limits_and_server_errors_are_ridden_out(app: App, fake: FakeVideosServer) -> None:
    fake.rate_limit("create", times=2, retry_after=1)
    fake.server_errors("retrieve", times=3, status=503)
    job = await run(app, "a windy beach")
    assert job.state is JobState.DELIVERED, job.error
    assert fake.count("create") == 3


async def test_moderation_is_explained_and_not_billed(app: App, fake: FakeVideosServer) -> None:
    fake.moderate_next_create()
    job = await run(app, "something the service refuses")
    assert job.state is JobState.FAILED and "moderation" in job.error
    fake.plan(fail_code="moderation_blocked", fail_message="Your request was blocked by our moderation system.")
    job = await run(app, "something refused later")
    assert job.state is JobState.FAILED and "moderation" in job.error
    totals = await app.store.ledger_totals()
    assert totals.settled == 0 and totals.released == totals.reserved


async def test_a_bad_key_is_an_admin_problem(make_settings: Callable[..., Settings], fake: FakeVideosServer) -> None:
    app = await open_app(make_settings(), fake, key="sk-a-wrong-key-000000000")
    try:
        job = await run(app, "a cat")
        assert job.state is JobState.FAILED and "API key" in job.error
    finally:
        await app.close()


async def test_a_retired_model_is_explained(app: App, fake: FakeVideosServer) -> None:
    fake.model_not_found("create", status=404)
    job = await run(app, "a cat")
    assert job.state is JobState.FAILED and "does not offer this model" in job.error


async def test_a_clip_that_is_not_a_video_fails_unbilled(app: App, fake: FakeVideosServer) -> None:
    fake.plan(content=b"<html>not a video</html>", content_type="text/html")
    job = await run(app, "a cat")
    assert job.state is JobState.FAILED and "not a video" in job.error
    assert await app.store.ledger_for(job.id) == [("reserve", 400_000), ("release", 400_000)]


async def test_a_truncated_clip_fails_the_probe_unbilled(app: App, fake: FakeVideosServer) -> None:
    fake.plan(content_size=300_000)  # MP4-looking bytes that do not decode
    job = await run(app, "a cat")
    assert job.state is JobState.FAILED and "broken" in job.error
    assert not (app.settings.clips_dir / f"{job.id}.mp4").exists()


async def test_relay_variants_are_understood(make_settings: Callable[..., Settings]) -> None:
    async with FakeVideosServer(render_seconds=0.5, relay=True) as relay:
        app = await open_app(make_settings(), relay)
        try:
            job = await run(app, "a cat")
            assert job.state is JobState.DELIVERED, job.error
        finally:
            await app.close()


async def test_a_create_whose_answer_was_lost_is_adopted_not_sent_twice(app: App, fake: FakeVideosServer) -> None:
    fake.inject("create", reset=True, process=True)
    job = await run(app, "a cat")
    assert job.state is JobState.DELIVERED, job.error
    assert fake.count("create") == 1 and fake.count("list") >= 1
    assert job.provider_video_id == next(iter(fake.videos))
    assert await app.store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]


async def test_a_lost_create_that_started_nothing_fails_unbilled(app: App, fake: FakeVideosServer) -> None:
    fake.inject("create", reset=True)  # dropped before the service made anything
    job = await run(app, "a cat")
    assert job.state is JobState.FAILED and "stopped answering" in job.error
    assert fake.count("create") == 1 and not fake.videos
    assert await app.store.ledger_for(job.id) == [("reserve", 400_000), ("release", 400_000)]


async def test_a_lost_create_never_adopts_another_jobs_render(app: App, fake: FakeVideosServer) -> None:
    first = await run(app, "the same prompt twice")
    assert first.state is JobState.DELIVERED
    fake.inject("create", reset=True)
    # The listing only offers the first job's render (same spec): it must not be taken.
    second = await run(app, "the same prompt twice")
    assert second.state is JobState.FAILED and "stopped answering" in second.error
    assert second.provider_video_id is None


async def test_a_render_that_never_finishes_hits_the_deadline(
    make_settings: Callable[..., Settings], fake: FakeVideosServer
) -> None:
    fake.plan(never_finish=True)
    app = await open_app(make_settings(REELBOT_RENDER_DEADLINE_S=1.5), fake)
    try:
        job = await run(app, "a cat")
        assert job.state is JobState.FAILED and "did not finish" in job.error
        assert fake.count("delete") == 1
    finally:
        await app.close()


async def test_remix_of_a_delivered_clip(app: App, fake: FakeVideosServer) -> None:
    job = await run(app, "a cat")
    requester = Requester("console", "w1", "alice", "@alice")
    reply = await app.bot.remix(requester, job.id, "the same cat, at night", request_key="remix-1")
    assert reply.ok, reply.text
    remixed = await app.worker.wait_for(reply.job.id, timeout=30)
    assert remixed.state is JobState.DELIVERED
    assert fake.calls("remix")[0].json == {"prompt": "the same cat, at night"}


async def test_the_host_down_for_a_while_then_back(app: App, fake: FakeVideosServer) -> None:
    job_reply = await app.bot.handle(ask("a cat"))
    while (await app.store.get_job(job_reply.job.id)).state is not JobState.RENDERING:
        await asyncio.sleep(0.02)
    await fake.stop()
    await asyncio.sleep(1.0)
    await fake.start()  # the same port: the provider's retries find it again
    job = await app.worker.wait_for(job_reply.job.id, timeout=30)
    assert job.state in (JobState.DELIVERED, JobState.FAILED)
    if job.state is JobState.FAILED:  # videos are in the server's memory, so a restart may lose them
        assert "no longer knows" in job.error
    totals = await app.store.ledger_totals()
    assert totals.reserved == totals.settled + totals.released


async def test_a_restart_after_the_create_was_sent_adopts_the_render(
    make_settings: Callable[..., Settings], fake: FakeVideosServer
) -> None:
    settings = make_settings()
    first = await open_app(settings, fake)
    try:  # a failure here must still close the database (its thread would keep pytest from exiting)
        await first.worker.stop()  # this process "dies" right after sending the create
        job = (await first.bot.handle(ask("a cat adopted after a crash"))).job
        await first.store.transition(job.id, JobState.SUBMITTING, started_at=time.time())
        await first.provider.create(first.worker._spec(job))
    finally:
        await first.close()

    second = await open_app(settings, fake)
    try:
        done = await second.worker.wait_for(job.id, timeout=30)
        assert done.state is JobState.DELIVERED
        assert fake.count("create") == 1 and fake.count("list") == 1
        assert await second.store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]
    finally:
        await second.close()


async def test_the_poll_schedule_counts_from_the_render_not_from_a_slow_submission(
    app: App, fake: FakeVideosServer
) -> None:
    fake.render_seconds = 3.0
    fake.inject("create", delay=0.6)  # the service takes its time before it starts anything
    reply = await app.bot.handle(ask("a cat"))
    assert reply.ok
    while (rendering := await app.store.get_job(reply.job.id)).state is not JobState.RENDERING:
        await asyncio.sleep(0.02)
    while not app.worker.renders.watching:
        await asyncio.sleep(0.02)
    (watched,) = app.worker.renders._watched.values()
    assert rendering.render_started_at - rendering.started_at >= 0.6
    assert watched.started == rendering.render_started_at  # the schedule's clock starts with the render
    job = await app.worker.wait_for(reply.job.id, timeout=30)
    assert job.state is JobState.DELIVERED, job.error
    assert app.worker.renders.watching == 0
