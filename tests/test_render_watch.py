"""Watching many renders: the list sweep of the real client, the shared watcher, a busy worker.

Everything runs against the fake /v1/videos server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.console import ConsoleDelivery
from bot.app import App, build_app
from bot.config import Settings
from bot.jobs import ChatRequest, JobState, Requester
from bot.providers.base import ErrorKind, ProviderError, ProviderVideo, RenderSpec, VideoStatus
from bot.providers.openai_videos import OpenAIVideosProvider
from bot.render_watch import RenderWatcher
from tests.fakes.videos_server import FakeClock, FakeVideosServer

pytestmark = pytest.mark.timeout(60)

SPEC = RenderSpec("a lighthouse at dusk", "sora-2", "1280x720", 4)


async def quick_sleep(_seconds: float) -> None:
    await asyncio.sleep(0)


def client(fake: FakeVideosServer, request_timeout: float = 5.0) -> OpenAIVideosProvider:
    return OpenAIVideosProvider(
        api_key=fake.api_key, base_url=fake.base_url, sleep=quick_sleep, request_timeout=request_timeout
    )


async def create_many(provider: OpenAIVideosProvider, count: int) -> list[str]:
    videos = await asyncio.gather(*(provider.create(SPEC) for _ in range(count)))
    return [v.id for v in videos]


async def wait_until_done(watcher: RenderWatcher, video_id: str) -> list[ProviderVideo]:
    seen = []
    async with watcher.watch(video_id, started=time.time()) as watch:
        while True:
            video = await watch.next_change()
            assert video is not None
            seen.append(video)
            if video.status in (VideoStatus.COMPLETED, VideoStatus.FAILED):
                return seen


# --- VideoProvider.retrieve_many on the real client ---------------------------------------------


async def test_retrieve_many_pages_through_the_list_until_every_render_is_found() -> None:
    async with FakeVideosServer(render_seconds=300) as fake:
        provider = client(fake)
        try:
            wanted = await create_many(provider, 230)
            await create_many(provider, 20)  # newer renders that are not ours come first
            found = await provider.retrieve_many(wanted, since=time.time() - 60)
        finally:
            await provider.aclose()
    assert set(found) == set(wanted)
    assert all(v.status in (VideoStatus.QUEUED, VideoStatus.IN_PROGRESS) for v in found.values())
    pages = fake.calls("list")
    assert len(pages) == 3  # 250 renders, 100 a page
    assert [p.query.get("limit") for p in pages] == ["100"] * 3
    assert pages[1].query.get("after") and pages[2].query.get("after")
    assert fake.count("retrieve") == 0


async def test_retrieve_many_stops_at_renders_older_than_asked_for() -> None:
    clock = FakeClock()
    async with FakeVideosServer(clock=clock, render_seconds=10_000) as fake:
        provider = client(fake)
        try:
            await create_many(provider, 150)
            clock.advance(3600)
            (fresh,) = await create_many(provider, 1)
            found = await provider.retrieve_many([fresh, "video_not_on_this_account"], since=clock() - 5)
        finally:
            await provider.aclose()
    assert set(found) == {fresh}
    assert fake.count("list") == 1  # the first page already reached renders an hour older


async def test_a_host_without_the_list_is_not_asked_again() -> None:
    async with FakeVideosServer(render_seconds=300) as fake:
        fake.inject("list", status=404, times=None)
        provider = client(fake)
        try:
            ids = await create_many(provider, 3)
            assert await provider.retrieve_many(ids, since=time.time() - 60) == {}
            assert await provider.retrieve_many(ids, since=time.time() - 60) == {}
        finally:
            await provider.aclose()
    assert fake.count("list") == 1


async def test_retrieve_many_reads_the_relay_shape() -> None:
    clock = FakeClock()
    async with FakeVideosServer(clock=clock, render_seconds=100, relay=True) as fake:
        provider = client(fake)
        try:
            ids = await create_many(provider, 2)
            clock.advance(33)
            found = await provider.retrieve_many(ids, since=clock() - 60)
        finally:
            await provider.aclose()
    assert set(found) == set(ids)
    assert {(v.status, v.progress) for v in found.values()} == {(VideoStatus.IN_PROGRESS, 33)}


# --- RenderWatcher ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def watcher_for(fake: FakeVideosServer) -> AsyncIterator[tuple[OpenAIVideosProvider, RenderWatcher]]:
    """The real client and a watcher with the bot's defaults, closed afterwards."""
    provider = client(fake)
    watcher = RenderWatcher(provider=provider)
    try:
        yield provider, watcher
    finally:
        await watcher.aclose()
        await provider.aclose()


async def test_many_renders_due_together_are_swept_with_the_list() -> None:
    async with FakeVideosServer(render_seconds=1.5) as fake, watcher_for(fake) as (provider, watcher):
        ids = await create_many(provider, 20)
        histories = await asyncio.gather(*(wait_until_done(watcher, i) for i in ids))
    assert all(h[-1].status is VideoStatus.COMPLETED for h in histories)
    assert watcher.sweeps >= 1
    assert fake.count("list") >= 1
    # One status request each at most for the first look; after that the sweeps carry them all.
    assert fake.count("retrieve") <= len(ids)
    assert fake.count("retrieve") + fake.count("list") < 2 * len(ids)


async def test_a_few_renders_are_polled_one_by_one() -> None:
    async with FakeVideosServer(render_seconds=0.5) as fake, watcher_for(fake) as (provider, watcher):
        ids = await create_many(provider, 3)
        histories = await asyncio.gather(*(wait_until_done(watcher, i) for i in ids))
    assert all(h[-1].status is VideoStatus.COMPLETED for h in histories)
    assert fake.count("list") == 0 and watcher.sweeps == 0
    assert fake.count("retrieve") >= 3


async def test_only_changes_reach_the_waiting_job() -> None:
    clock = FakeClock()
    async with FakeVideosServer(clock=clock, render_seconds=100) as fake, watcher_for(fake) as (provider, watcher):
        (video_id,) = await create_many(provider, 1)
        async with watcher.watch(video_id, started=time.time()) as watch:
            first = await watch.next_change()
            assert first is not None and first.progress == 0
            clock.advance(50)
            # Polls that see the same status say nothing; the next news is the progress.
            second = await asyncio.wait_for(watch.next_change(), timeout=10)
            assert second is not None and second.progress == 50


async def test_an_error_that_will_not_pass_reaches_the_waiting_job() -> None:
    async with FakeVideosServer(render_seconds=100) as fake, watcher_for(fake) as (provider, watcher):
        (video_id,) = await create_many(provider, 1)
        fake.api_key = "sk-rotated-elsewhere"
        async with watcher.watch(video_id, started=time.time()) as watch:
            with pytest.raises(ProviderError) as raised:
                await asyncio.wait_for(watch.next_change(), timeout=10)
    assert raised.value.kind is ErrorKind.AUTH


async def test_passing_errors_are_retried_and_the_job_hears_nothing_of_them() -> None:
    async with FakeVideosServer(render_seconds=0.5) as fake, watcher_for(fake) as (provider, watcher):
        (video_id,) = await create_many(provider, 1)
        # More 503s than the client retries inside one call: the watcher backs off and asks again.
        fake.inject("retrieve", status=503, times=7)
        history = await asyncio.wait_for(wait_until_done(watcher, video_id), timeout=20)
    assert history[-1].status is VideoStatus.COMPLETED
    assert fake.count("retrieve") >= 8


async def test_interrupt_wakes_the_waiting_job_at_once() -> None:
    async with FakeVideosServer(render_seconds=600) as fake, watcher_for(fake) as (provider, watcher):
        (video_id,) = await create_many(provider, 1)
        async with watcher.watch(video_id, started=time.time()) as watch:
            assert await watch.next_change() is not None
            asyncio.get_running_loop().call_later(0.1, watcher.interrupt, video_id)
            assert await asyncio.wait_for(watch.next_change(), timeout=2) is None
        assert watcher.watching == 0


# --- the worker ---------------------------------------------------------------------------------


def ask(index: int, text: str) -> ChatRequest:
    user = f"u{index % 3}"
    return ChatRequest(
        requester=Requester("console", "w1", user, f"@{user}"),
        request_key=f"busy-{index}-{time.monotonic_ns()}",
        channel_id="terminal",
        text=text,
    )


@pytest.fixture
async def busy_app(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[App, FakeVideosServer]]:
    async with FakeVideosServer(render_seconds=1.0) as fake:
        settings = make_settings(
            REELBOT_MAX_JOBS_IN_FLIGHT=20, REELBOT_MAX_JOBS_PER_USER=20, REELBOT_USER_BUDGET_USD=100
        )
        # Sixteen downloads at once from a fake on this test's own event loop: on a busy machine one can take
        # longer than 5 s, and the client rightly tries it again (a second download of the same clip).
        app = await build_app(settings, provider=client(fake, request_timeout=30.0))
        app.bot.register(ConsoleDelivery(quiet=True))
        app.worker.tick_seconds = 0.05
        await app.worker.start()
        try:
            yield app, fake
        finally:
            await app.close()


async def test_a_busy_worker_sweeps_renders_and_delivers_every_job_once(busy_app) -> None:
    app, fake = busy_app
    replies = await asyncio.gather(*(app.bot.handle(ask(i, f"busy clip {i}")) for i in range(16)))
    assert all(r.ok for r in replies), [r.text for r in replies if not r.ok]
    jobs = await asyncio.gather(*(app.worker.wait_for(r.job.id, timeout=40) for r in replies))
    assert [j.state for j in jobs] == [JobState.DELIVERED] * 16, [j.error for j in jobs]
    assert app.worker.renders.sweeps >= 1 and fake.count("list") >= 1
    totals = await app.store.ledger_totals()
    assert totals.reserved == totals.settled == 16 * 400_000 and totals.released == 0
    assert fake.count("content") == 16


async def test_cancelling_a_rendering_job_stops_its_render_within_a_tick(
    make_settings: Callable[..., Settings],
) -> None:
    async with FakeVideosServer(render_seconds=600) as fake:
        app = await build_app(make_settings(), provider=client(fake))
        app.bot.register(ConsoleDelivery(quiet=True))
        app.worker.tick_seconds = 0.05
        await app.worker.start()
        try:
            request = ask(0, "a very long render")
            reply = await app.bot.handle(request)
            assert reply.ok
            while (await app.store.get_job(reply.job.id)).state is not JobState.RENDERING:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # now waiting on its next poll, seconds away
            started = time.monotonic()
            await app.bot.cancel(request.requester, reply.job.id)
            job = await app.worker.wait_for(reply.job.id, timeout=10)
            took = time.monotonic() - started
            totals = await app.store.ledger_totals()
        finally:
            await app.close()
    assert job.state is JobState.CANCELLED
    assert took < 1.5  # not the seconds until its next poll
    assert fake.count("delete") == 1
    assert totals.reserved == totals.released and totals.settled == 0


class HeldFirstAnswer:
    """The real client, with the first status answer held back until released: a slow status call."""

    def __init__(self, inner: OpenAIVideosProvider) -> None:
        self.inner = inner
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def retrieve(self, video_id: str) -> ProviderVideo:
        self.calls += 1
        video = await self.inner.retrieve(video_id)
        if self.calls == 1:
            self.held.set()
            await self.release.wait()
        return video


async def test_a_webhook_during_a_status_call_is_not_lost_to_the_safety_net_schedule() -> None:
    async with FakeVideosServer(render_seconds=0.3) as fake:
        provider = client(fake)
        held = HeldFirstAnswer(provider)
        watcher = RenderWatcher(provider=held, sleep=quick_sleep)  # type: ignore[arg-type]
        try:
            video_id = (await provider.create(SPEC)).id
            async with watcher.watch(video_id, started=time.time(), min_interval=30.0) as watch:
                await asyncio.wait_for(held.held.wait(), 5)  # "still rendering" is on its way back
                async with asyncio.timeout(5):
                    while (await provider.retrieve(video_id)).status is not VideoStatus.COMPLETED:
                        await asyncio.sleep(0.05)
                assert watcher.poll_now(video_id)  # the provider's webhook: it is done
                held.release.set()  # the stale answer arrives after it
                async with asyncio.timeout(5):  # not at the next safety-net poll, 30 s later
                    while (
                        video := await watch.next_change()
                    ) is not None and video.status is not VideoStatus.COMPLETED:
                        pass
            assert video is not None and video.status is VideoStatus.COMPLETED
            assert held.calls == 2
        finally:
            await watcher.aclose()
            await provider.aclose()
