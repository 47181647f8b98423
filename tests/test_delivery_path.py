"""The path from a finished render to the clip in the thread (issue 10's delivery aim), kept short and safe.

- On Slack, the clip's bytes are uploaded while they download (``ClipStream``, ``StagesClips``) and shown
  only once the clip on disk was checked; a download cut off midway, or a cancel meanwhile, shows nothing.
- A clip this process did not download (a restart found it in ``delivering``) is checked again before
  it is posted: downloads are not fsynced, so after a machine crash the file may be cut short.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from adapters.console import ConsoleDelivery
from bot.app import build_app
from bot.config import Settings
from bot.jobs import ChatRequest, Job, JobState, Requester
from bot.providers.local import LocalRenderer
from tests.conditions import until
from tests.fakes.fal_queue import FakeFalQueue, encode_clip
from tests.fakes.slack_api import FakeSlack, SlackBot, slack_env

pytestmark = pytest.mark.timeout(60)

ALICE = Requester("console", "w1", "alice", "@alice")


class HeldDelivery(ConsoleDelivery):
    """The terminal delivery with its upload held open until the test ends (a process about to die)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.uploading = asyncio.Event()

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        self.uploading.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class PostingDelivery(ConsoleDelivery):
    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.posted: list[str] = []
        self.told: list[str] = []

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        self.posted.append(job.id)
        return await super().post_clip(job, clip, caption)

    async def notify(self, job: Job, text: str) -> None:
        self.told.append(text)
        await super().notify(job, text)


async def test_a_clip_cut_short_while_nobody_held_it_is_checked_again_and_never_posted(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    first = await build_app(settings, provider=LocalRenderer(work_dir=settings.data_dir / "renders"))
    held = HeldDelivery()
    first.bot.register(held)
    try:
        reply = await first.bot.handle(ChatRequest(requester=ALICE, request_key="k1", channel_id="t", text="a boat"))
        assert reply.ok, reply.text
        await first.worker.start()
        await asyncio.wait_for(held.uploading.wait(), 30)
        [job] = await first.store.jobs_for_user(ALICE.platform, ALICE.workspace_id, ALICE.user_id)
        assert job.state is JobState.DELIVERING and job.clip_path
    finally:
        await first.close()  # the process goes away mid-upload; the clip was never posted
    clip = Path(job.clip_path)
    whole = clip.read_bytes()
    clip.write_bytes(whole[: len(whole) * 2 // 3])  # what a machine crash can leave of an unflushed file

    second = await build_app(settings, provider=LocalRenderer(work_dir=settings.data_dir / "renders"))
    delivery = PostingDelivery()
    second.bot.register(delivery)
    try:
        await second.worker.start()
        await until("the job ends", lambda: _final(second, job.id))
        ended = await second.store.get_job(job.id)
        assert ended is not None and ended.state is JobState.FAILED
        assert delivery.posted == []
        assert await second.store.ledger_for(job.id) == [("reserve", job.cost_micros), ("release", job.cost_micros)]
        assert any(
            "damaged before it could be posted" in text and "You were not charged" in text for text in delivery.told
        )
        assert not clip.exists()
    finally:
        await second.close()


async def _final(app, job_id: str) -> bool:  # type: ignore[no-untyped-def]
    job = await app.store.get_job(job_id)
    return job is not None and job.state.is_final


# --- Slack + fal: the clip's bytes go to Slack while they download, and show only once checked -----------

CHANNEL = "C_GENERAL"
ASK = "a paper boat --model veo-3.1-fast --seconds 4"


@pytest.fixture
async def slack_fal(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[SlackBot, FakeFalQueue]]:
    """The Slack adapter (HTTP mode) on the app ``build_app`` makes from a fal key, as ``reelbot serve`` does."""
    from adapters.slack import SlackAdapter

    async with FakeSlack() as fake, FakeFalQueue(render_seconds=0.1) as fal:
        settings = make_settings(**slack_env(fake, "http"), FAL_KEY=fal.api_key, FAL_QUEUE_URL=fal.queue_url)
        app = await build_app(settings)
        adapter = SlackAdapter.from_settings(app.bot, settings, host="127.0.0.1", port=0)
        await adapter.start()
        fake.mode, fake.bot_url = "http", adapter.url
        app.worker.tick_seconds = 0.05
        await app.worker.start()
        bot = SlackBot(fake=fake, app=app, adapter=adapter)
        try:
            yield bot, fal
        finally:
            await bot.stop()


async def held_halfway(slack: SlackBot, fal: FakeFalQueue) -> tuple[bytes, asyncio.Event, Job]:
    """Asks for a clip whose CDN download stops halfway until the returned event is set; returns once Slack
    has been asked for an upload address (the upload reads along)."""
    clip = encode_clip(1280, 720, 4, audio=True)
    pause = asyncio.Event()
    fal.plan(video_bytes=clip, cdn_pause=pause)
    assert (await slack.fake.command(ASK, channel=CHANNEL)).status == 200
    job = await slack.only_job()
    await until("the upload under way", lambda: slack.fake.calls_to("files.getUploadURLExternal"))
    return clip, pause, job


async def test_slack_gets_the_bytes_while_they_download_and_shows_them_only_after_the_checks(slack_fal) -> None:
    slack, fal = slack_fal
    # Half the clip has come from the CDN: Slack already has an upload address and the first bytes...
    clip, pause, job = await held_halfway(slack, fal)
    assert (await slack.store.get_job(job.id)).state is JobState.DOWNLOADING
    # ...but nothing shows until the download is whole and checked.
    assert slack.fake.uploads == [] and not slack.fake.calls_to("files.completeUploadExternal")
    pause.set()
    done = await slack.delivered(job.id, within=30)
    [upload] = slack.fake.uploads
    assert upload.data == clip == Path(done.clip_path).read_bytes() and upload.thread_ts == done.card_ref
    assert len(slack.fake.calls_to("files.getUploadURLExternal")) == 1  # one upload, not a second one after
    assert await slack.store.ledger_for(job.id) == [("reserve", 600_000), ("settle", 600_000)]


async def test_a_download_cut_off_midway_never_shows_its_half_and_the_whole_clip_is_posted_once(slack_fal) -> None:
    slack, fal = slack_fal
    clip = encode_clip(1280, 720, 4, audio=True)
    fal.plan(video_bytes=clip, cdn_cut_once=True)
    assert (await slack.fake.command(ASK, channel=CHANNEL)).status == 200
    done = await slack.delivered((await slack.only_job()).id, within=30)
    assert fal.count("cdn") == 2  # the cut download was fetched again
    [upload] = slack.fake.uploads  # the half that was being staged was never completed
    assert upload.data == clip and upload.thread_ts == done.card_ref
    assert len(slack.fake.calls_to("files.completeUploadExternal")) == 1
    assert await slack.store.ledger_for(done.id) == [("reserve", 600_000), ("settle", 600_000)]


async def test_cancel_while_the_bytes_travel_shows_nothing_and_charges_nothing(slack_fal) -> None:
    slack, fal = slack_fal
    _clip, pause, job = await held_halfway(slack, fal)
    before = len(slack.fake.responses)
    ack = await slack.fake.interact(slack.fake.block_action(CHANNEL, job.card_ref, "reelbot_cancel"))
    assert ack.status == 200
    done = await slack.wait_state(job.id, JobState.CANCELLED)
    pause.set()
    await slack.settle()
    answers = [r["text"] for r in slack.fake.responses[before:] if r.get("_user") == "U_ALICE"]
    assert answers == [f"Job {job.id} cancelled. Nothing was charged."]
    assert slack.fake.uploads == [] and not slack.fake.calls_to("files.completeUploadExternal")
    assert await slack.store.ledger_for(done.id) == [("reserve", 600_000), ("release", 600_000)]
