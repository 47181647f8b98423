"""``reelbot serve`` killed with SIGKILL on Slack and on Discord, and the platforms rate-limiting it.

Each test runs the real ``reelbot serve`` as a child process (``python -m adapters.cli serve``) against
a fake platform served from the test's own event loop on 127.0.0.1: Slack in HTTP mode (signed slash
commands POSTed to the child's ``/slack/events``), Discord over the fake gateway (the fake dispatches
``INTERACTION_CREATE`` to the child). The test watches the child's SQLite file read-only until the
jobs reach the state under test, SIGKILLs it, starts ``reelbot serve`` again on the same data dir and
the same fake, and waits until every job is final. Then: each delivered job's clip is in the fake
exactly once, in the job's thread; the ledger balances (``Db.assert_balanced``: one reserve per job,
delivered jobs settled, the others released, nothing left reserved).

States: ``queued`` and ``rendering`` are held by the local renderer (a 10 s 1920x1080 clip renders
for a few seconds, and ``REELBOT_MAX_JOBS_IN_FLIGHT=1`` keeps a second job queued); ``delivering`` by
a held upload in the fake platform, killed before the fake recorded the clip and after it did (the
bot did not hear back); ``submitting`` (the create already processed by the service) and
``downloading`` by the scripted fake ``/v1/videos`` service in its own process
(``FakeVideosProcess``, with ``REELBOT_PROVIDER=openai``), as in tests/test_reliability_console.py.

A killed process still holds its jobs' 60 s leases; ``ServeBot.kill`` expires them in the database
instead of waiting a minute (tests/test_reliability_console.py has the xfail that shows the wait).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.media import inspect_clip
from tests.helpers_processes import FakeVideosProcess
from tests.helpers_serve import (
    FlakyDiscord,
    ServeBot,
    SlowSlack,
    discord_serve_env,
    free_port,
    slack_serve_env,
)

pytestmark = pytest.mark.timeout(40)

CHANNEL = "C_GENERAL"
LONG = "--model ltx-2-fast --seconds 10"  # renders for a few seconds on the local renderer
COMMON_ENV = {"REELBOT_MAX_JOBS_IN_FLIGHT": 1, "REELBOT_USER_BUDGET_USD": "100"}


@pytest.fixture
def make_bot(tmp_path: Path) -> Iterator[Callable[..., ServeBot]]:
    made: list[ServeBot] = []

    def factory(**env: object) -> ServeBot:
        bot = ServeBot(tmp_path, **COMMON_ENV, **env)
        made.append(bot)
        return bot

    yield factory
    for bot in made:
        bot.close()


def only(*states: str) -> Callable[[dict[str, str]], bool]:
    """Exactly these states, one job each (in any order)."""
    return lambda s: sorted(s.values()) == sorted(states)


def assert_ledger_balanced(bot: ServeBot) -> None:
    bot.db.assert_balanced()
    assert all(reserved == 0 for _, _, reserved in bot.db.usage()), bot.db.usage()


def assert_clip_ok(job: dict) -> None:
    clip = Path(job["clip_path"])
    assert inspect_clip(clip).duration > 3  # a whole, playable clip


@pytest.fixture(scope="module")
def fake_videos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeVideosProcess]:
    """One fake /v1/videos service for the module (it must outlive the bot); serves a real 4 s MP4."""
    from tests.fakes.videos_server import encode_mp4

    path = tmp_path_factory.mktemp("fake-videos") / "clip.mp4"
    path.write_bytes(encode_mp4(1280, 720, 4))
    with FakeVideosProcess({"render_seconds": 0.5, "queue_seconds": 0.3, "video_file": str(path)}) as fake:
        yield fake


@pytest.fixture
def videos(fake_videos: FakeVideosProcess) -> FakeVideosProcess:
    fake_videos.reset()
    return fake_videos


def openai_env(fake: FakeVideosProcess) -> dict[str, object]:
    return {"REELBOT_PROVIDER": "openai", "OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url}


def hold_the_provider(videos: FakeVideosProcess, state: str) -> None:
    """The next create is processed (the render exists, billed), then answered 5 s late; or the next
    download is answered 5 s late."""
    if state == "submitting":
        videos.inject("create", delay=5, process=True)
    else:
        videos.inject("content", delay=5)


async def hold_provider(bot: ServeBot, videos: FakeVideosProcess, state: str) -> None:
    """Waits until the job is in ``state`` with the held create (already processed) / download under way."""
    op = "create" if state == "submitting" else "content"
    await bot.wait_for(state, only(state))
    await bot.wait_for(f"the {op} to reach the service", lambda _: videos.counts().get(op, 0) == 1)


def assert_provider_once(videos: FakeVideosProcess, state: str) -> None:
    assert videos.video_count() == 1, "a render was started (and would be billed) twice"
    assert videos.counts()["content"] == (2 if state == "downloading" else 1)


# --- Slack --------------------------------------------------------------------------------------------------


@pytest.fixture
async def slack() -> AsyncIterator[SlowSlack]:
    async with SlowSlack() as fake:
        yield fake


def slack_bot(make_bot: Callable[..., ServeBot], fake: SlowSlack, **env: object) -> ServeBot:
    port = free_port()
    fake.bot_url = f"http://127.0.0.1:{port}/slack/events"
    fake.mode = "http"
    return make_bot(**slack_serve_env(fake, port), **env)


async def slack_command(fake: SlowSlack, text: str, user: str = "U_ALICE") -> str:
    """A signed ``/video`` POSTed to the child; returns what the person was told (ephemeral)."""
    before = len(fake.responses)
    ack = await fake.command(text, user=user, channel=CHANNEL)
    assert ack.status == 200 and ack.elapsed < 3.0, ack
    answer = ack.json.get("text", "") if ack.body.startswith("{") else ack.body
    with contextlib.suppress(TimeoutError):
        await fake.wait_responses(before + 1, within=20)
    texts = [answer, *(r.get("text", "") for r in fake.responses[before:] if r.get("_user") == user)]
    return "\n".join(t for t in texts if t)


def assert_slack_delivered_once(bot: ServeBot, fake: SlowSlack, *, count: int) -> None:
    jobs = bot.jobs()
    assert len(jobs) == count and {j["state"] for j in jobs.values()} == {"delivered"}, bot.states()
    uploads = Counter(u.filename for u in fake.uploads)
    for job in jobs.values():
        name = f"reelbot-{job['id']}.mp4"
        assert uploads[name] == 1, f"job {job['id']} uploaded {uploads[name]} times: {uploads}"
        (upload,) = [u for u in fake.uploads if u.filename == name]
        assert upload.channel == CHANNEL and upload.thread_ts == (job["thread_id"] or job["card_ref"])
        assert upload.data == Path(job["clip_path"]).read_bytes()
        assert_clip_ok(job)
    assert sum(uploads.values()) == count
    assert_ledger_balanced(bot)


async def test_slack_serve_killed_with_one_job_rendering_and_one_queued(make_bot, slack: SlowSlack) -> None:
    bot = slack_bot(make_bot, slack)
    await bot.start()
    assert "queued" in await slack_command(slack, f"a lighthouse at dusk {LONG}")
    await bot.wait_for("the first job rendering", only("rendering"))
    assert "queued" in await slack_command(slack, "a paper boat", user="U_BOB")
    await bot.wait_for("the second job queued", only("queued", "rendering"))
    bot.kill()
    assert sorted(bot.states().values()) == ["queued", "rendering"]
    assert slack.uploads == []
    await bot.start()
    await bot.wait_all_final(2)
    assert_slack_delivered_once(bot, slack, count=2)


@pytest.mark.parametrize("posted", [False, True], ids=["before-the-upload-landed", "after-the-upload-landed"])
async def test_slack_serve_killed_while_delivering(make_bot, slack: SlowSlack, posted: bool) -> None:
    bot = slack_bot(make_bot, slack)
    if posted:
        slack.hold_after = True  # the clip is in the thread; the bot never hears so
    else:
        slack.hold_before = True  # the bot is killed before Slack took the clip
    await bot.start()
    await slack_command(slack, "a paper boat")
    await bot.wait_for("delivering", only("delivering"))
    await bot.wait_for("the upload to reach Slack", lambda _: slack.completes_started == 1)
    if posted:
        await bot.wait_for("Slack to record the clip", lambda _: len(slack.uploads) == 1)
    bot.kill()
    assert set(bot.states().values()) == {"delivering"}
    slack.release()
    await bot.start()
    await bot.wait_all_final(1)
    assert_slack_delivered_once(bot, slack, count=1)
    assert slack.completes_started == (1 if posted else 2)


@pytest.mark.parametrize("state", ["submitting", "downloading"])
async def test_slack_serve_killed_while_submitting_or_downloading(
    make_bot, slack: SlowSlack, videos: FakeVideosProcess, state: str
) -> None:
    bot = slack_bot(make_bot, slack, **openai_env(videos))
    hold_the_provider(videos, state)
    await bot.start()
    await slack_command(slack, "a paper boat")
    await hold_provider(bot, videos, state)
    bot.kill()
    assert set(bot.states().values()) == {state}
    await bot.start()
    await bot.wait_all_final(1)
    assert_slack_delivered_once(bot, slack, count=1)
    assert_provider_once(videos, state)


# --- Discord ------------------------------------------------------------------------------------------------


@pytest.fixture
async def discord() -> AsyncIterator[FlakyDiscord]:
    saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    fake = FlakyDiscord()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


def discord_bot(make_bot: Callable[..., ServeBot], fake: FlakyDiscord, **env: object) -> ServeBot:
    return make_bot(**discord_serve_env(fake), **env)


async def discord_create(fake: FlakyDiscord, prompt: str, *, long: bool = False, user=None) -> str:
    """``/video create`` dispatched over the gateway; returns the (ephemeral) answer."""
    await fake.wait_for(lambda: fake._sockets, within=10, what="the bot on the gateway")
    options: dict[str, object] = {"prompt": prompt}
    if long:
        options.update(model="ltx-2-fast", seconds=10)
    rec = await fake.slash("video create", options, user=user or fake.alice)
    return await rec.reply()


def status_of(card: dict) -> str:
    return next(f["value"] for f in card["embeds"][0]["fields"] if f["name"] == "Status")


def assert_discord_delivered_once(bot: ServeBot, fake: FlakyDiscord, *, count: int) -> None:
    jobs = bot.jobs()
    assert len(jobs) == count and {j["state"] for j in jobs.values()} == {"delivered"}, bot.states()
    uploads = Counter(f.filename for f in fake.files if f.filename.endswith(".mp4"))
    for job in jobs.values():
        name = f"reelbot-{job['id']}.mp4"
        assert uploads[name] == 1, f"job {job['id']} uploaded {uploads[name]} times: {uploads}"
        (upload,) = [f for f in fake.files if f.filename == name]
        thread = int(job["card_ref"].rpartition(":")[2])  # the card's thread has the card's id
        assert upload.channel_id == thread and job["delivered_ref"].startswith(f"{thread}:")
        assert upload.data == Path(job["clip_path"]).read_bytes()
        assert_clip_ok(job)
    assert sum(uploads.values()) == count
    assert_ledger_balanced(bot)
    fake.assert_interactions_answered_in_time()


async def test_discord_serve_killed_with_one_job_rendering_and_one_queued(make_bot, discord: FlakyDiscord) -> None:
    bot = discord_bot(make_bot, discord)
    await bot.start()
    assert "queued" in await discord_create(discord, "a lighthouse at dusk", long=True)
    await bot.wait_for("the first job rendering", only("rendering"))
    assert "queued" in await discord_create(discord, "a paper boat", user=discord.bob)
    await bot.wait_for("the second job queued", only("queued", "rendering"))
    bot.kill()
    assert sorted(bot.states().values()) == ["queued", "rendering"]
    assert [f for f in discord.files if f.filename.endswith(".mp4")] == []
    await bot.start()
    await bot.wait_all_final(2)
    assert_discord_delivered_once(bot, discord, count=2)


@pytest.mark.parametrize("posted", [False, True], ids=["before-the-upload-landed", "after-the-upload-landed"])
async def test_discord_serve_killed_while_delivering(make_bot, discord: FlakyDiscord, posted: bool) -> None:
    bot = discord_bot(make_bot, discord)
    if posted:
        discord.hold_after = True
    else:
        discord.hold_before = True
    await bot.start()
    await discord_create(discord, "a paper boat")
    await bot.wait_for("delivering", only("delivering"))
    await bot.wait_for("the upload to reach Discord", lambda _: discord.uploads_started == 1)
    if posted:
        await bot.wait_for(
            "Discord to store the clip", lambda _: any(f.filename.endswith(".mp4") for f in discord.files)
        )
    bot.kill()
    assert set(bot.states().values()) == {"delivering"}
    discord.release()
    await bot.start()
    await bot.wait_all_final(1)
    assert_discord_delivered_once(bot, discord, count=1)
    assert discord.uploads_started == (1 if posted else 2)


@pytest.mark.parametrize("state", ["submitting", "downloading"])
async def test_discord_serve_killed_while_submitting_or_downloading(
    make_bot, discord: FlakyDiscord, videos: FakeVideosProcess, state: str
) -> None:
    bot = discord_bot(make_bot, discord, **openai_env(videos))
    hold_the_provider(videos, state)
    await bot.start()
    await discord_create(discord, "a paper boat")
    await hold_provider(bot, videos, state)
    bot.kill()
    assert set(bot.states().values()) == {state}
    await bot.start()
    await bot.wait_all_final(1)
    assert_discord_delivered_once(bot, discord, count=1)
    assert_provider_once(videos, state)


# --- the platform rate-limiting the bot -------------------------------------------------------------------


async def test_discord_429s_on_card_edits_and_the_upload_are_waited_out(make_bot, discord: FlakyDiscord) -> None:
    """discord.py honours ``retry_after`` itself (up to 5 tries): the clip is delivered once, late."""
    bot = discord_bot(make_bot, discord)
    await bot.start()
    discord.rate_limit("PATCH", times=2, retry_after=0.3)
    discord.rate_limit("POST", times=2, retry_after=0.5, uploads_only=True)
    await discord_create(discord, "a paper boat")
    await bot.wait_all_final(1)
    [job] = bot.jobs().values()
    card = discord.message(discord.channel_id, job["card_ref"])
    # The last card edit may still be waiting out its 429 when the store says delivered.
    await discord.wait_for(lambda: status_of(card).startswith("Delivered"), within=10, what="the card delivered")
    assert_discord_delivered_once(bot, discord, count=1)
    assert Counter(method for method, _, _ in discord.limited) == {"PATCH": 2, "POST": 2}
    assert discord.uploads_started == 1  # the 429s never reached the upload handler


async def test_discord_429_without_retry_info_is_retried_by_the_worker(make_bot, discord: FlakyDiscord) -> None:
    """A 429 discord.py will not wait out itself (no ``Via``: a Cloudflare-style answer) is an
    HTTPException; the delivery calls it retryable and the worker tries again: delivered once."""
    bot = discord_bot(make_bot, discord)
    await bot.start()
    discord.rate_limit("POST", times=1, retry_after=0.5, uploads_only=True, via=False)
    await discord_create(discord, "a paper boat")
    await bot.wait_all_final(1, within=30)
    assert_discord_delivered_once(bot, discord, count=1)
    assert len(discord.limited) == 1


async def test_slack_429s_on_the_upload_and_card_edits_are_retried(make_bot, slack: SlowSlack) -> None:
    """slack_sdk raises on 429 (no rate-limit retry handler); the worker's own retry delivers once."""
    bot = slack_bot(make_bot, slack)
    await bot.start()
    slack.fail("files.completeUploadExternal", "ratelimited", status=429, retry_after=1)
    slack.fail("chat.update", "ratelimited", status=429, retry_after=1)
    await slack_command(slack, "a paper boat")
    await bot.wait_all_final(1, within=30)
    assert_slack_delivered_once(bot, slack, count=1)
    assert slack.completes_started == 2
    [job] = bot.jobs().values()
    # Card edits are paced (one per 3 s, the latest view kept): the delivered view follows within the window.
    await bot.wait_for(
        "the card to show the delivered clip",
        lambda _: "Delivered" in slack.message(CHANNEL, job["card_ref"])["text"],
        within=3.0 + 1.0 + 2.0,  # the window, the 429's Retry-After, and slack's time to answer
    )


async def test_slack_rate_limiting_the_upload_for_good_tells_the_user_who_can_retry(make_bot, slack: SlowSlack) -> None:
    bot = slack_bot(make_bot, slack)
    await bot.start()
    # Rate-limited for longer than the bot keeps trying (with or without slack_sdk's own 429 retries).
    slack.fail("files.completeUploadExternal", "ratelimited", status=429, retry_after=1, times=100)
    await slack_command(slack, "a paper boat")
    await bot.wait_for("the job undelivered", only("undelivered"), within=30)
    [job] = bot.jobs().values()
    assert slack.uploads == [] and slack.completes_started >= 3
    slack._failures.pop("files.completeUploadExternal")
    await bot.wait_for(
        "the requester told", lambda _: any("<@U_ALICE>" in m["text"] for m in slack.thread(CHANNEL, job["card_ref"]))
    )
    told = [m["text"] for m in slack.thread(CHANNEL, job["card_ref"]) if "<@U_ALICE>" in m["text"]]
    assert "rate-limiting" in told[-1] and f"/video retry {job['id']}" in told[-1], told
    assert [kind for _, kind, _ in bot.db.ledger()] == ["reserve"]  # still reserved, not charged

    answer = await slack_command(slack, f"retry {job['id']}")
    assert "Delivering job" in answer, answer
    await bot.wait_all_final(1)
    assert_slack_delivered_once(bot, slack, count=1)


async def test_slack_rate_limiting_the_card_tells_the_user_and_charges_nothing(make_bot, slack: SlowSlack) -> None:
    bot = slack_bot(make_bot, slack)
    await bot.start()
    # Rate-limited for longer than slack_sdk's and the core's retries wait (a single 429 is waited out).
    slack.fail("chat.postMessage", "ratelimited", status=429, retry_after=1, times=50)
    answer = await slack_command(slack, "a paper boat")
    assert "too busy" in answer and "Nothing was charged" in answer, answer
    slack._failures.pop("chat.postMessage", None)
    [job] = bot.jobs().values()
    assert job["state"] == "cancelled"
    assert_ledger_balanced(bot)
    assert slack.uploads == []
    # Trying again later works.
    await slack_command(slack, "a paper boat")
    await bot.wait_all_final(2)
    assert Counter(bot.states().values()) == {"cancelled": 1, "delivered": 1}
    assert len(slack.uploads) == 1
    assert_ledger_balanced(bot)


SLACK_RETRY_FIX = (
    "adapters/slack/adapter.py builds AsyncWebClient(token=bot_token, base_url=api_url) with slack_sdk's default "
    "retry handlers, which do not cover 429, so every rate-limited call fails at once and Retry-After is ignored. "
    "Fix: after creating self.client, add `self.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler("
    "max_retry_count=2))` (from slack_sdk.http_retry.builtin_async_handlers; the command is acked before this work)."
)


async def test_slack_one_429_on_the_card_is_waited_out(make_bot, slack: SlowSlack) -> None:
    bot = slack_bot(make_bot, slack)
    await bot.start()
    slack.fail("chat.postMessage", "ratelimited", status=429, retry_after=1)
    answer = await slack_command(slack, "a paper boat")
    await bot.wait_all_final(1)
    assert bot.states() and set(bot.states().values()) == {"delivered"}, (answer, bot.states())
    assert_slack_delivered_once(bot, slack, count=1)


async def test_slack_a_rate_limited_last_card_edit_is_not_lost(make_bot, slack: SlowSlack) -> None:
    bot = slack_bot(make_bot, slack)
    await bot.start()
    slack.fail("chat.update", "ratelimited", status=429, retry_after=1, times=1000)
    await slack_command(slack, "a paper boat")
    await bot.wait_all_final(1)
    [job] = bot.jobs().values()
    await bot.wait_for(  # the last edit was refused too
        "the delivered view's edit to be refused",
        lambda _: any(c.method == "chat.update" and "Delivered" in str(c.args.get("text")) for c in slack.calls),
        within=10,
    )
    assert "Delivered" not in slack.message(CHANNEL, job["card_ref"])["text"]
    slack._failures.pop("chat.update", None)  # Slack takes edits again (Retry-After was 1 s)
    await bot.wait_for(
        "the card to show the delivered clip",
        lambda _: "Delivered" in slack.message(CHANNEL, job["card_ref"])["text"],
        within=3.0 + 1.0 + 2.0,  # the edit window, the Retry-After, and time to answer
    )
