"""Cancel while the clip is being posted, on the real platform libraries against the fakes.

The answer must match what happened: "cancelled, nothing was charged" only when nothing stays
posted and the money was released; "already posted, charged" only when the clip is there and paid.
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
from tests.fakes.discord_api import DiscordHarness, FakeDiscord
from tests.fakes.slack_api import FakeSlack, SlackBot, slack_env, start_slack_bot

pytestmark = pytest.mark.timeout(60)

CHANNEL = "C_GENERAL"
ALICE = "U_ALICE"


# --- Slack: the upload is held by a rate limit on files.completeUploadExternal ---------------------------


@pytest.fixture
async def slack(make_settings: Callable[..., Settings]) -> AsyncIterator[SlackBot]:
    async with FakeSlack() as fake:
        bot = await start_slack_bot(fake, make_settings(**slack_env(fake, "http")))
        try:
            yield bot
        finally:
            await bot.stop()


async def test_slack_cancel_button_during_the_upload_abandons_it_and_says_so(slack: SlackBot) -> None:
    fake = slack.fake
    # Slack answers the upload's completion with a rate limit: slack_sdk waits 5 s before trying again.
    fake.fail("files.completeUploadExternal", "ratelimited", status=429, retry_after=5)
    ack = await fake.command("a paper boat --seconds 4")
    assert ack.status == 200
    job = await slack.only_job()
    await until("the upload under way", lambda: fake.calls_to("files.completeUploadExternal"))
    assert (await slack.store.get_job(job.id)).state is JobState.DELIVERING
    before = len(fake.responses)
    ack = await fake.interact(fake.block_action(CHANNEL, job.card_ref, "reelbot_cancel"))
    assert ack.status == 200 and ack.elapsed < 3.0
    done = await slack.wait_state(job.id, JobState.CANCELLED)
    await slack.settle()
    answers = [r["text"] for r in fake.responses[before:] if r.get("_user") == ALICE]
    assert answers == [f"Job {job.id} cancelled. Nothing was charged."]
    await asyncio.sleep(0)  # nothing left to retry: the abandoned upload never completes
    assert fake.uploads == [] and not any(m.get("files") for m in fake.thread(CHANNEL, job.card_ref))
    assert len(fake.calls_to("files.completeUploadExternal")) == 1
    assert await slack.store.ledger_for(done.id) == [("reserve", 400_000), ("release", 400_000)]
    await until("the card shows it", lambda: "Cancelled" in fake.message(CHANNEL, job.card_ref)["text"], 10)


# --- Discord: the upload is in progress while an oversized clip is shrunk to fit -----------------------------


@pytest.fixture
async def discord(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[FakeDiscord, DiscordHarness]]:
    from discord.gateway import DiscordWebSocket
    from discord.http import Route

    saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    fake = FakeDiscord()
    await fake.start()
    harness = DiscordHarness(fake, make_settings)
    try:
        await harness.start()
        yield fake, harness
    finally:
        await harness.stop()
        await fake.stop()
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


async def test_discord_cancel_button_while_delivering_answers_what_happened(
    discord: tuple[FakeDiscord, DiscordHarness],
) -> None:
    fake, harness = discord
    fake.set_upload_limit(150_000)  # the clip must be re-encoded to fit: the upload takes a while
    rec = await fake.slash("video create", {"prompt": "waves at dusk"})
    await rec.reply()
    job = await harness.job_for(rec)
    job = await harness.wait_state(job.id, "delivering", within=30)
    click = await fake.click(fake.channel_id, job.card_ref, f"reelbot:cancel:{job.id}")
    answer = await click.reply(within=30)
    done = await harness.app.worker.wait_for(job.id, timeout=30)
    ledger = await harness.app.store.ledger_for(job.id)
    posted = [f for f in fake.files_in(job.card_ref) if f.filename.endswith(".mp4")]
    if done.state is JobState.CANCELLED:
        assert answer == f"Job {job.id} cancelled. Nothing was charged."
        # Nothing stays posted: an upload that got through was deleted again (Discord keeps no file).
        assert not [m for m in fake.channel_messages(job.card_ref) if m.get("attachments")]
        assert len(posted) == len(fake.deleted)
        assert ledger == [("reserve", 400_000), ("release", 400_000)]
    else:  # the clip was up before the cancel arrived: the answer says so, and it was paid once
        assert done.state is JobState.DELIVERED
        assert answer == f"Job {job.id} was already posted, so it was charged $0.40."
        assert len(posted) == 1 and ledger == [("reserve", 400_000), ("settle", 400_000)]


# --- the clip reached the platform but the upload had not returned: it is deleted again ----------------------


class SlowReturn(ConsoleDelivery):
    """Posts the clip at once, then takes its time to return (a slow response from the platform)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.posted = asyncio.Event()
        self.release = asyncio.Event()
        self.visible: dict[str, str] = {}

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        ref = await super().post_clip(job, clip, caption)
        self.visible[job.id] = ref
        self.posted.set()
        await self.release.wait()
        return ref

    async def find_clip(self, job: Job) -> str | None:
        return self.visible.get(job.id)

    async def delete_message(self, job: Job, ref: str) -> None:
        await super().delete_message(job, ref)
        self.visible.pop(job.id, None)


async def test_a_clip_already_on_the_platform_is_deleted_when_the_cancel_wins(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    app = await build_app(settings, provider=LocalRenderer(work_dir=settings.data_dir / "renders", fps=8))
    delivery = SlowReturn()
    app.bot.register(delivery)
    app.worker.tick_seconds = 0.05
    await app.worker.start()
    try:
        alice = Requester("console", "w1", "alice", "@alice")
        reply = await app.bot.handle(ChatRequest(alice, "k-slow", "terminal", "a slow upload --seconds 4"))
        await asyncio.wait_for(delivery.posted.wait(), 30)
        cancelled = await app.bot.cancel(alice, reply.job.id)
        assert cancelled.text == f"Job {reply.job.id} cancelled. Nothing was charged."
        assert delivery.visible == {}  # removed before the person was told
        assert f"(deleted file:{settings.clips_dir / reply.job.id}.mp4)" in delivery.posts
        assert await app.store.ledger_for(reply.job.id) == [("reserve", 400_000), ("release", 400_000)]
    finally:
        delivery.release.set()
        await app.close()


# --- SIGKILL in the same step, again and again: the attempts survive restarts and end the loop ---------------


def test_a_job_killed_in_the_same_step_every_time_ends_failed_after_max_attempts(tmp_path: Path) -> None:
    """``reelbot console`` is SIGKILLed while downloading, twice; the third start (REELBOT_MAX_ATTEMPTS=2) ends
    the job failed and released instead of trying a third time, and says why once."""
    import sqlite3

    from tests.fakes.videos_server import encode_mp4
    from tests.helpers_processes import Db, FakeVideosProcess, ReelbotProcess, reelbot_env, run_reelbot

    clip = tmp_path / "clip.mp4"
    clip.write_bytes(encode_mp4(1280, 720, 4))
    with FakeVideosProcess({"render_seconds": 0.3, "queue_seconds": 0.1, "video_file": str(clip)}) as videos:
        env = reelbot_env(
            tmp_path / "data",
            REELBOT_PROVIDER="openai",
            OPENAI_API_KEY=videos.api_key,
            OPENAI_BASE_URL=videos.base_url,
            REELBOT_MAX_ATTEMPTS=2,
        )
        db = Db(tmp_path / "data" / "reelbot.db")
        videos.inject("content", delay=60, times=None)  # every download hangs: the step "crashes" each time
        for run, text in enumerate(("/video a paper boat", "/video jobs"), start=1):
            process = ReelbotProcess(["console", "--as", "x", text], env, tmp_path)
            try:
                db.wait_for(f"download {run}", lambda _db, n=run: videos.counts().get("content", 0) >= n, timeout=60)
                process.kill()
            finally:
                process.close()
            with sqlite3.connect(db.path) as conn:  # what a minute's wait would do: the dead lease runs out
                conn.execute("UPDATE jobs SET lease_expires = 0 WHERE lease_owner IS NOT NULL")
        assert set(db.states().values()) == {"downloading"}
        done = run_reelbot(["console", "--as", "x", "/video jobs"], env, tmp_path, timeout=60)
        assert videos.counts()["content"] == 2  # not tried a third time
        [job] = db.jobs().values()
        assert job["state"] == "failed", job
        assert job["error"] == "reelbot tried 2 times and could not finish downloading the clip."
        assert f"Job {job['id']} failed: reelbot tried 2 times" in done.stdout
        assert done.stderr.count("giving up after 2 attempts at downloading") == 1  # logged once
        db.assert_balanced()
        with sqlite3.connect(db.path) as conn:
            kinds = [k for (k,) in conn.execute("SELECT kind FROM ledger WHERE job_id = ?", (job["id"],))]
        assert kinds == ["reserve", "release"]


# --- the card: one throttle, the latest view always shown ----------------------------------------------------


async def test_card_updates_inside_the_window_are_coalesced_never_dropped() -> None:
    import itertools
    import time as clock
    from dataclasses import replace as copy

    from bot.delivery import CardThrottle
    from bot.jobs import JobOptions

    shown: list[tuple[float, str, int]] = []

    async def edit(job: Job) -> None:
        shown.append((clock.monotonic(), job.state.value, job.progress))

    throttle = CardThrottle(edit=edit, interval_for=lambda _job: 0.3)
    now = clock.time()
    job = Job(
        id="card1",
        request_key="k",
        platform="console",
        workspace_id="w",
        user_id="u",
        user_name="@u",
        channel_id="c",
        thread_id=None,
        prompt="p",
        options=JobOptions("sora-2", "1280x720", 4),
        state=JobState.RENDERING,
        cost_micros=1,
        created_at=now,
        updated_at=now,
        card_ref="card",
    )
    await throttle.update(copy(job, progress=0))  # the first edit goes out at once
    assert [s[1:] for s in shown] == [("rendering", 0)]
    for step, progress in enumerate((10, 20, 30), start=1):
        await throttle.update(copy(job, progress=progress, updated_at=now + step))
    assert len(shown) == 1 and throttle.pending(job.id)
    await until("the coalesced edit", lambda: len(shown) == 2, 5)
    assert shown[1][1:] == ("rendering", 30)  # the latest progress, not the first nor a dropped one
    await throttle.update(copy(job, state=JobState.DOWNLOADING, progress=100, updated_at=now + 4))
    await throttle.update(copy(job, progress=90, updated_at=now + 3.5))  # an older view arriving late
    await throttle.update(copy(job, state=JobState.DELIVERED, progress=100, updated_at=now + 5))
    await until("the final state", lambda: len(shown) == 3, 5)
    assert shown[2][1:] == ("delivered", 100)
    assert all(b[0] - a[0] >= 0.29 for a, b in itertools.pairwise(shown))  # at most one edit per window
    await asyncio.sleep(0.35)
    assert len(shown) == 3 and not throttle.pending(job.id)
