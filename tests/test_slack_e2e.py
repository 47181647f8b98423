"""Slack end to end: the real Bolt app, worker, store and local renderer against the fake Slack.

Each key case runs in HTTP mode (signed POSTs to /slack/events) and in Socket Mode (envelopes over
the fake's websocket). Everything is on 127.0.0.1; data lives in tmp_path.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import skimage

from bot.config import Settings
from bot.jobs import JobState
from bot.media import probe_clip
from tests.fakes.slack_api import TEAM_ID, FakeSlack, SlackBot, slack_env, start_slack_bot
from tests.media_factory import BLUE, RED, image_bytes

# A face (a cameo must show one): scikit-image's public-domain astronaut, nothing downloaded.
FACE = (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()

pytestmark = pytest.mark.timeout(30)

MODES = ["http", "socket"]
ALICE, BOB, ADMIN = "U_ALICE", "U_BOB", "U_ADMIN"
CHANNEL = "C_GENERAL"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(admins={ADMIN}) as server:
        yield server


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def slack(fake: FakeSlack, mode: str, make_settings: Callable[..., Settings]) -> AsyncIterator[SlackBot]:
    bot = await start_slack_bot(fake, make_settings(**slack_env(fake, mode)))
    try:
        yield bot
    finally:
        await bot.stop()


@pytest.fixture
async def http_slack(fake: FakeSlack, make_settings: Callable[..., Settings]) -> AsyncIterator[SlackBot]:
    bot = await start_slack_bot(fake, make_settings(**slack_env(fake, "http")))
    try:
        yield bot
    finally:
        await bot.stop()


def png(width: int = 640, height: int = 360) -> bytes:
    return image_bytes("PNG", width, height, color=RED, right_color=BLUE)


async def command(slack: SlackBot, text: str, user: str = ALICE, channel: str = CHANNEL) -> str:
    """Runs a slash command; returns what the person saw (the ephemeral answer)."""
    before = len(slack.fake.responses)
    ack = await slack.fake.command(text, user=user, channel=channel)
    assert ack.status == 200 and ack.elapsed < 3.0, ack
    await slack.settle()
    answers = [r for r in slack.fake.responses[before:] if r.get("_user") == user]
    assert answers, f"no answer to {text!r}"
    assert all(r.get("response_type") == "ephemeral" for r in answers)
    return answers[-1]["text"]


# --- /video to a clip in the thread ---------------------------------------------------------------


async def test_command_becomes_a_clip_in_the_cards_thread(slack: SlackBot) -> None:
    fake = slack.fake
    answer = await command(slack, "a paper boat sailing down a rainy street --seconds 4")
    assert "queued" in answer and "$0.40" in answer

    job = await slack.only_job()
    cards = fake.bot_messages(CHANNEL)
    assert (
        len(cards) == 1 and cards[0]["ts"] == job.card_ref and "thread_ts" not in fake.calls_to("chat.postMessage")[0]
    )
    card_text = str(cards[0]["blocks"])
    for part in ("a paper boat sailing down a rainy street", "sora-2 · 1280x720 · 4 s", "$0.40", f"<@{ALICE}>"):
        assert part in card_text

    job = await slack.delivered(job.id)
    assert job.state is JobState.DELIVERED
    [upload] = fake.uploads
    assert upload.filename == f"reelbot-{job.id}.mp4"
    assert upload.channel == CHANNEL and upload.thread_ts == job.card_ref
    assert upload.data == Path(job.clip_path).read_bytes()
    assert job.delivered_ref == upload.file_id
    for part in (f"<@{ALICE}>", "sora-2 · 1280x720 · 4 s", "$0.40", "AI-generated"):
        assert part in upload.initial_comment
    probe_clip(Path(job.clip_path), seconds=4, size="1280x720")
    # The clip is a reply in the card's thread.
    [reply] = fake.thread(CHANNEL, job.card_ref)
    assert reply["files"][0]["id"] == upload.file_id

    card = fake.message(CHANNEL, job.card_ref)
    assert card["edits"] >= 2  # progress, uploading, delivered...
    assert "Delivered" in card["text"]
    assert fake.button(CHANNEL, job.card_ref, "reelbot_reroll")["value"] == job.id
    assert fake.button(CHANNEL, job.card_ref, "reelbot_remix")["value"] == job.id
    assert fake.button(CHANNEL, job.card_ref, "reelbot_cancel") is None
    assert await slack.store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]
    assert slack.adapter.delivery.min_update_interval == 3.0


async def test_progress_edits_the_card_at_most_every_three_seconds(
    fake: FakeSlack, make_settings: Callable[..., Settings]
) -> None:
    from bot.providers.local import LocalRenderer

    settings = make_settings(**slack_env(fake, "http"))
    slow = LocalRenderer(work_dir=settings.data_dir / "renders", fps=8, min_render_seconds=4.5)
    slack = await start_slack_bot(fake, settings, provider=slow)
    # A crash may leave the job's lease held; the next process takes over when it expires.
    slack.app.worker.lease_seconds = 2.0
    try:
        await command(slack, "a paper boat --seconds 4")
        job = await slack.delivered((await slack.only_job()).id)
        assert job.state is JobState.DELIVERED
        edits = fake.message(CHANNEL, job.card_ref)["edit_log"]
        progress = [at for at, text in edits if "Rendering" in text]
        assert progress, edits
        assert len(progress) <= 3
        # One throttle for every edit, state changes included: a short state ("Uploading") may be
        # coalesced into the next edit, but the card ends on the latest state.
        assert all(b - a >= 2.9 for a, b in itertools.pairwise(at for at, _ in edits)), edits
        assert "Delivered" in edits[-1][1]
    finally:
        await slack.stop()


async def test_a_command_inside_a_thread_is_answered_in_that_thread(slack: SlackBot) -> None:
    """Mentions inside a thread put the card and the clip into that thread."""
    fake = slack.fake
    root = fake.user_post("let's make something", user=BOB)
    post = fake.user_post(f"<@{fake.bot_user_id}> a lighthouse at dawn --seconds 4", thread_ts=root["ts"])
    ack = await fake.event(fake.mention_event(post))
    assert ack.status == 200
    job = await slack.only_job()
    assert job.thread_id == root["ts"]
    job = await slack.delivered(job.id)
    assert job.state is JobState.DELIVERED
    assert fake.message(CHANNEL, job.card_ref)["thread_ts"] == root["ts"]
    assert fake.uploads[0].thread_ts == root["ts"]


# --- a picture: mention, message shortcut, form -----------------------------------------------------


async def test_mention_with_an_image_starts_the_clip_from_it(slack: SlackBot) -> None:
    fake = slack.fake
    file = fake.add_file(png(), "boat.png")
    post = fake.user_post(f"<@{fake.bot_user_id}> a paper boat --seconds 4", files=[file])
    # Slack sends both an app_mention and a message event for this post: one job.
    ack = await fake.event(fake.mention_event(post))
    assert ack.status == 200 and ack.elapsed < 3.0
    await fake.event(fake.message_event(post))
    job = await slack.only_job()
    assert job.prompt == "a paper boat"
    assert fake.downloads and all(d["authorized"] for d in fake.downloads)
    assert len(fake.downloads) == 1
    reference = Path(job.reference_path)
    assert reference.exists() and reference.read_bytes().startswith(b"\x89PNG")

    job = await slack.delivered(job.id)
    assert job.state is JobState.DELIVERED
    assert [u.thread_ts for u in fake.uploads] == [job.card_ref]
    # One ephemeral answer, in the channel, to the person who asked.
    [answer] = [e for e in fake.ephemerals if e["user"] == ALICE]
    assert answer["channel"] == CHANNEL and "queued" in answer["text"]


async def test_message_shortcut_makes_a_clip_from_the_messages_picture(slack: SlackBot) -> None:
    fake = slack.fake
    file = fake.add_file(png(), "harbour.jpg" if False else "harbour.png")
    post = fake.user_post("the harbour at night, lanterns swaying", user=BOB, files=[file])
    ack = await fake.interact(fake.message_shortcut(post, "reelbot_make_video", user=ALICE))
    assert ack.status == 200 and ack.elapsed < 3.0
    await slack.settle()
    [opened] = fake.calls_to("views.open")
    view_id = next(iter(fake.views))
    prompt_block = next(b for b in opened["view"]["blocks"] if b.get("block_id") == "prompt")
    assert prompt_block["element"]["initial_value"] == "the harbour at night, lanterns swaying"
    assert "harbour.png" in str(opened["view"]["blocks"])

    ack = await fake.interact(fake.view_submission(view_id, {"seconds": "4"}, user=ALICE))
    assert ack.status == 200 and not ack.body  # the form closes
    job = await slack.only_job()
    assert job.thread_id == post["ts"] and job.reference_path
    job = await slack.delivered(job.id)
    assert job.state is JobState.DELIVERED
    assert fake.message(CHANNEL, job.card_ref)["thread_ts"] == post["ts"]
    assert [u.thread_ts for u in fake.uploads] == [post["ts"]]


async def test_video_with_no_text_opens_a_form_with_an_image_input(slack: SlackBot) -> None:
    fake = slack.fake
    ack = await fake.command("")
    assert ack.status == 200
    await slack.settle()
    [view_id] = list(fake.views)
    view = fake.views[view_id]
    kinds = {b["block_id"]: b["element"]["type"] for b in view["blocks"] if b["type"] == "input"}
    assert kinds == {
        "prompt": "plain_text_input",
        "model": "static_select",
        "size": "static_select",
        "seconds": "static_select",
        "audio": "static_select",
        "image": "file_input",
    }

    # A size the default model (sora-2) can't make: the form says so, next to the field, and nothing is made.
    bad = await fake.interact(fake.view_submission(view_id, {"prompt": "a kite", "size": "1920x1080"}))
    assert bad.json["response_action"] == "errors" and list(bad.json["errors"]) == ["size"], bad.json
    # A length the model does not take: the catalog's sentence, next to the length field.
    bad = await fake.interact(fake.view_submission(view_id, {"prompt": "a kite", "seconds": "5"}))
    assert bad.json == {"response_action": "errors", "errors": {"seconds": "sora-2 takes 4, 8 or 12 seconds (got 5)."}}
    assert await slack.jobs() == []

    file = fake.add_file(png(), "kite.png")
    ok = await fake.interact(
        fake.view_submission(view_id, {"prompt": "a red kite --pro over the dunes", "seconds": "4", "image": [file]})
    )
    assert ok.status == 200 and not ok.body
    job = await slack.only_job()
    assert job.prompt == "a red kite --pro over the dunes"  # typed in a form: all of it is the prompt
    assert job.options.model == "sora-2" and job.reference_path
    job = await slack.delivered(job.id)
    assert job.state is JobState.DELIVERED and len(fake.uploads) == 1
    assert fake.uploads[0].thread_ts == job.card_ref


# --- buttons ------------------------------------------------------------------------------------------


async def test_card_buttons_reroll_and_remix(slack: SlackBot, fake: FakeSlack) -> None:
    await command(slack, "a calico cat playing piano --seconds 4")
    first = await slack.delivered((await slack.only_job()).id)

    # Re-roll: a new job from the same prompt, into the first card's thread.
    ack = await fake.interact(fake.block_action(CHANNEL, first.card_ref, "reelbot_reroll"))
    assert ack.status == 200 and ack.elapsed < 3.0
    await slack.settle()
    reroll = next(j for j in await slack.jobs() if j.id != first.id)
    assert reroll.prompt == first.prompt and reroll.thread_id == first.card_ref
    reroll = await slack.delivered(reroll.id)
    assert reroll.state is JobState.DELIVERED

    # Remix: a form with the prompt to edit, then a new clip from the provider's remix.
    ack = await fake.interact(fake.block_action(CHANNEL, first.card_ref, "reelbot_remix"))
    await slack.settle()
    remix_view = next(v for v in fake.views.values() if v["callback_id"] == "reelbot_remix_view")
    assert remix_view["blocks"][0]["element"]["initial_value"] == first.prompt
    ack = await fake.interact(fake.view_submission(remix_view["id"], {"prompt": "make the cat orange"}))
    assert ack.status == 200
    await slack.settle()
    remix = next(j for j in await slack.jobs() if j.remix_of)
    assert remix.prompt == "make the cat orange" and remix.remix_of == first.provider_video_id
    remix = await slack.delivered(remix.id)
    assert remix.state is JobState.DELIVERED
    assert {u.thread_ts for u in fake.uploads} == {first.card_ref}
    assert len(fake.uploads) == 3


async def test_cancel_button_works_for_the_requester_only(slack: SlackBot, fake: FakeSlack) -> None:
    slack.app.provider.min_render_seconds = 20.0  # so the render is surely still going
    await command(slack, "a slow sunrise --seconds 4")
    slow = next(j for j in await slack.jobs() if j.prompt == "a slow sunrise")
    ack = await fake.interact(fake.block_action(CHANNEL, slow.card_ref, "reelbot_cancel", user=BOB))
    assert ack.status == 200 and ack.elapsed < 3.0
    await slack.settle()
    assert any("Only the person who asked" in r.get("text", "") for r in fake.responses if r["_user"] == BOB)
    await fake.interact(fake.block_action(CHANNEL, slow.card_ref, "reelbot_cancel"))
    slow = await slack.wait_state(slow.id, JobState.CANCELLED)
    await slack.settle()
    assert fake.uploads == []
    assert [kind for kind, _ in await slack.store.ledger_for(slow.id)] == ["reserve", "release"]
    # The card's edits are paced (at most one per 3 s): the cancelled view comes with the next one.
    await slack.wait_until(
        lambda: "Cancelled" in fake.message(CHANNEL, slow.card_ref)["text"], within=3.5, what="the cancelled card"
    )


# --- budgets and admin --------------------------------------------------------------------------------


async def test_budget_refusal_and_admin_commands(slack: SlackBot) -> None:
    fake = slack.fake
    refused = await command(slack, f"admin budget <@{BOB}|bob> 0.20", user=ALICE)
    assert "Only workspace admins" in refused
    answer = await command(slack, f"admin budget <@{BOB}|bob> 0.20", user=ADMIN)  # is_admin from users.info
    assert f"<@{BOB}>" in answer and "$0.20" in answer

    refusal = await command(slack, "a paper boat --seconds 4", user=BOB)
    assert "costs $0.40" in refusal and "$0.20 left" in refusal and "Nothing was charged" in refusal
    assert fake.bot_messages(CHANNEL) == [] and fake.uploads == []

    budget = await command(slack, "budget", user=BOB)
    for part in ("spent $0.00", "reserved $0.00", "limit $0.20", "remaining $0.20", "Resets"):
        assert part in budget
    default = await command(slack, "admin budget default 20", user=ADMIN)
    assert "$20.00" in default

    await command(slack, "a tiny robot --seconds 4", user=ALICE)
    usage = await command(slack, "admin usage", user=ADMIN)
    assert f"<@{ALICE}>" in usage and ("reserved $0.40" in usage or "spent $0.40" in usage)
    jobs = await command(slack, "jobs", user=ALICE)
    assert "a tiny robot" in jobs
    job = await slack.only_job(ALICE)
    cancelled = await command(slack, f"cancel {job.id}", user=ALICE)
    assert job.id in cancelled


async def test_admin_ids_from_config(fake: FakeSlack, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**slack_env(fake, "http"), REELBOT_ADMIN_IDS="U_BOSS")
    slack = await start_slack_bot(fake, settings, worker=False)
    try:
        answer = await command(slack, f"admin budget <@{BOB}|bob> 5", user="U_BOSS")
        assert "$5.00" in answer
    finally:
        await slack.stop()


# --- failures become messages ---------------------------------------------------------------------


async def test_not_in_channel_is_explained_and_nothing_is_charged(slack: SlackBot) -> None:
    fake = slack.fake
    fake.kick("C_SECRET")
    answer = await command(slack, "a paper boat --seconds 4", channel="C_SECRET")
    assert "invite me with /invite @reelbot" in answer and "Nothing was charged" in answer
    job = await slack.only_job()
    assert job.state is JobState.CANCELLED
    assert ("settle", job.cost_micros) not in await slack.store.ledger_for(job.id)


async def test_bad_flags_get_a_clear_answer(slack: SlackBot) -> None:
    answer = await command(slack, "a paper boat --seconds 7")
    assert "sora-2 takes 4, 8 or 12 seconds (got 7)" in answer
    answer = await command(slack, "a paper boat --colour red")
    assert "Unknown option --colour" in answer
    assert await slack.jobs() == [] and slack.fake.bot_messages(CHANNEL) == []


async def test_failed_upload_is_delivered_again_with_the_retry_button_and_charged_once(slack: SlackBot) -> None:
    fake = slack.fake
    fake.fail("files.completeUploadExternal", "file_upload_size_restricted")
    await command(slack, "a paper boat --seconds 4")
    job = await slack.only_job()
    job = await slack.delivered(job.id)
    assert job.state is JobState.UNDELIVERED and fake.uploads == []
    told = [m for m in fake.thread(CHANNEL, job.card_ref) if f"<@{ALICE}>" in m["text"]]
    assert told and "/video retry" in told[0]["text"] and "bigger than this workspace allows" in told[0]["text"]
    assert fake.button(CHANNEL, job.card_ref, "reelbot_retry")["value"] == job.id

    ack = await fake.interact(fake.block_action(CHANNEL, job.card_ref, "reelbot_retry"))
    assert ack.status == 200
    job = await slack.delivered(job.id)
    assert job.state is JobState.DELIVERED
    assert len(fake.uploads) == 1 and fake.uploads[0].thread_ts == job.card_ref
    ledger = await slack.store.ledger_for(job.id)
    assert [kind for kind, _ in ledger].count("settle") == 1


async def test_bot_removed_from_channel_before_upload_tells_the_user_by_dm(slack: SlackBot) -> None:
    fake = slack.fake
    await command(slack, "a paper boat --seconds 4")
    job = await slack.only_job()
    await slack.wait_state(job.id, JobState.SUBMITTING, JobState.RENDERING, JobState.DOWNLOADING)
    fake.kick(CHANNEL)
    job = await slack.delivered(job.id)
    assert job.state is JobState.UNDELIVERED
    dms = fake.channels.get(fake.dm_channel(ALICE), [])
    assert any("invite me with /invite @reelbot" in m["text"] and f"/video retry {job.id}" in m["text"] for m in dms)

    fake.invite(CHANNEL)
    jobs = await command(slack, "jobs")
    assert job.id in jobs and "not delivered" in jobs
    again = await command(slack, f"retry {job.id}")
    assert "Delivering job" in again
    job = await slack.delivered(job.id)
    assert job.state is JobState.DELIVERED and len(fake.uploads) == 1


async def test_provider_failure_is_told_in_the_thread(fake: FakeSlack, make_settings: Callable[..., Settings]) -> None:
    from bot.providers.base import ErrorKind, ProviderError
    from bot.providers.local import LocalRenderer

    settings = make_settings(**slack_env(fake, "http"))

    class Broken(LocalRenderer):
        async def create(self, spec):
            raise ProviderError(ErrorKind.BAD_REQUEST, "the prompt was refused by the video service")

    slack = await start_slack_bot(fake, settings, provider=Broken(work_dir=settings.data_dir / "renders"))
    try:
        await command(slack, "a paper boat --seconds 4")
        job = await slack.delivered((await slack.only_job()).id)
        assert job.state is JobState.FAILED
        told = [m["text"] for m in fake.thread(CHANNEL, job.card_ref)]
        assert any(f"<@{ALICE}>" in t and "not charged" in t for t in told)
        assert "Failed" in fake.message(CHANNEL, job.card_ref)["text"]
    finally:
        await slack.stop()


# --- bad pictures -------------------------------------------------------------------------------------


async def _mention_with(slack: SlackBot, file: dict, text: str = "a paper boat --seconds 4") -> str:
    fake = slack.fake
    post = fake.user_post(f"<@{fake.bot_user_id}> {text}", files=[file])
    await fake.event(fake.mention_event(post))
    await slack.settle()
    answers = [e["text"] for e in fake.ephemerals if e["user"] == ALICE]
    assert answers
    return answers[-1]


async def test_bad_pictures_are_refused_with_a_reason_and_nothing_is_charged(http_slack: SlackBot) -> None:
    slack, fake = http_slack, http_slack.fake
    port = fake.url.rsplit(":", 1)[1]

    foreign = fake.add_file(png(), "boat.png", url=f"http://localhost:{port}/files-pri/{TEAM_ID}-F1/boat.png")
    assert "not stored on Slack's own file servers" in await _mention_with(slack, foreign)
    assert fake.downloads == []  # not even asked

    huge = fake.add_file(png(), "huge.png", size=50 * 1024 * 1024)
    assert "pictures may be at most 20 MB" in await _mention_with(slack, huge)
    assert fake.downloads == []  # refused before downloading

    pdf = fake.add_file(b"%PDF-1.7 ...", "brief.pdf", mimetype="application/pdf")
    assert "not a picture" in await _mention_with(slack, pdf)
    assert fake.downloads == []

    gif = fake.add_file(image_bytes("GIF", 64, 64), "cat.gif", mimetype="image/gif")
    assert "is a GIF" in await _mention_with(slack, gif)

    fake.files_read_scope = False
    page = fake.add_file(png(), "scope.png")
    assert "files:read" in await _mention_with(slack, page)
    fake.files_read_scope = True

    two = fake.user_post(f"<@{fake.bot_user_id}> two boats", files=[fake.add_file(png()), fake.add_file(png())])
    await fake.event(fake.mention_event(two))
    await slack.settle()
    assert "one image at most" in fake.ephemerals[-1]["text"]

    assert await slack.jobs() == [] and fake.bot_messages("C_GENERAL") == []
    totals = await slack.store.ledger_totals()
    assert totals.reserved == 0 and totals.settled == 0


# --- retries and repeats ------------------------------------------------------------------------------


async def test_slack_retries_and_repeated_events_make_one_job(
    fake: FakeSlack, mode: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(**slack_env(fake, mode))
    slack = await start_slack_bot(fake, settings, worker=False)
    post = fake.user_post(f"<@{fake.bot_user_id}> a paper boat --seconds 4")
    event = fake.mention_event(post)
    try:
        first = await fake.event(event, event_id="Ev_ONE")
        retry = await fake.event(event, event_id="Ev_ONE", retry_num=1)
        other = await fake.event(fake.message_event(post), event_id="Ev_TWO")
        assert first.status == retry.status == other.status == 200
        await slack.settle()
        assert len(await slack.jobs()) == 1
        assert len([e for e in fake.ephemerals if e["user"] == ALICE]) == 1
        assert len(fake.bot_messages(CHANNEL)) == 1
    finally:
        await slack.stop()
    # Durable: a restarted bot still knows the event.
    slack = await start_slack_bot(fake, settings, worker=False)
    try:
        await fake.event(event, event_id="Ev_ONE", retry_num=2)
        await slack.settle()
        assert len(await slack.jobs()) == 1 and len(fake.bot_messages(CHANNEL)) == 1
    finally:
        await slack.stop()


async def test_direct_message_works_without_a_mention(slack: SlackBot) -> None:
    fake = slack.fake
    dm = fake.dm_channel(ALICE)
    post = fake.user_post("budget", channel=dm)
    await fake.event(fake.message_event(post, channel=dm, channel_type="im"))
    await slack.settle()
    assert any("remaining $10.00" in e["text"] for e in fake.ephemerals if e["channel"] == dm)
    # Ordinary channel chatter is ignored.
    chatter = fake.user_post("lunch?")
    await fake.event(fake.message_event(chatter))
    await slack.settle()
    assert len(fake.ephemerals) == 1


# --- a restart in the middle ----------------------------------------------------------------------------


async def test_restart_mid_render_delivers_exactly_once(
    fake: FakeSlack, mode: str, make_settings: Callable[..., Settings]
) -> None:
    from bot.providers.local import LocalRenderer

    settings = make_settings(**slack_env(fake, mode))
    slow = LocalRenderer(work_dir=settings.data_dir / "renders", fps=8, min_render_seconds=3.0)
    slack = await start_slack_bot(fake, settings, provider=slow)
    # A crash may leave the job's lease held; the next process takes over when it expires.
    slack.app.worker.lease_seconds = 2.0
    try:
        await command(slack, "a paper boat --seconds 4")
        job = await slack.only_job()
        await slack.wait_state(job.id, JobState.RENDERING)
    finally:
        await slack.adapter.stop()
        await slack.app.worker.stop()
        await slack.app.close()

    slack = await start_slack_bot(fake, settings)
    try:
        job = await slack.delivered(job.id)
        assert job.state is JobState.DELIVERED
        assert len(fake.uploads) == 1 and fake.uploads[0].thread_ts == job.card_ref
        assert fake.uploads[0].filename == f"reelbot-{job.id}.mp4"
        ledger = await slack.store.ledger_for(job.id)
        assert [kind for kind, _ in ledger] == ["reserve", "settle"]
        assert len(fake.bot_messages(CHANNEL)) == 2  # the card and the clip
        # The card the first process posted still works: its buttons carry the job id.
        await fake.interact(fake.block_action(CHANNEL, job.card_ref, "reelbot_remix"))
        await slack.settle()
        [remix] = [v for v in fake.views.values() if v["callback_id"] == "reelbot_remix_view"]
        assert remix["blocks"][0]["element"]["initial_value"] == "a paper boat"
    finally:
        await slack.stop()


async def test_crash_after_upload_before_the_store_knows_never_uploads_twice(
    fake: FakeSlack, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(**slack_env(fake, "http"))
    slack = await start_slack_bot(fake, settings)
    real_transition = slack.store.transition

    async def crash_on_delivered(job_id, to, **kwargs):
        if to is JobState.DELIVERED:
            raise RuntimeError("simulated crash after the upload")
        return await real_transition(job_id, to, **kwargs)

    slack.store.transition = crash_on_delivered
    slack.app.worker.lease_seconds = 2.0  # a lease left held by the "crash" expires quickly
    try:
        await command(slack, "a paper boat --seconds 4")
        job = await slack.only_job()
        await fake.wait_uploads(1)
        # The worker tries again: it looks for the clip in the thread first, finds it, and uploads nothing.
        await slack.wait_until(
            lambda: fake.calls_to("conversations.replies"), within=10, what="the worker to look for the posted clip"
        )
        await slack.settle()
        assert len(fake.uploads) == 1
        assert (await slack.store.get_job(job.id)).state is JobState.DELIVERING
    finally:
        await slack.adapter.stop()
        await slack.app.close()

    slack = await start_slack_bot(fake, settings)
    try:
        job = await slack.delivered(job.id)
        assert job.state is JobState.DELIVERED
        assert len(fake.uploads) == 1 and job.delivered_ref == fake.uploads[0].file_id
        assert [kind for kind, _ in await slack.store.ledger_for(job.id)] == ["reserve", "settle"]
    finally:
        await slack.stop()


# --- reelbot serve ------------------------------------------------------------------------------------


async def test_reelbot_serve_runs_the_slack_adapter(fake: FakeSlack, make_settings: Callable[..., Settings]) -> None:
    """``reelbot serve`` with Slack credentials (Socket Mode: nothing listens, loopback only)."""
    from adapters.cli import serve

    settings = make_settings(**slack_env(fake, "socket"))
    fake.mode = "socket"
    server = asyncio.create_task(serve(settings))
    try:
        await fake.wait_connected(10)
        ack = await fake.command("a paper boat --seconds 4")
        assert ack.status == 200
        await fake.wait_uploads(1)
        [upload] = fake.uploads
        [card] = fake.messages_in(CHANNEL)
        assert upload.thread_ts == card["ts"]
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


async def test_consent_buttons_in_direct_messages_reach_the_cameo_feature(http_slack: SlackBot) -> None:
    slack, fake = http_slack, http_slack.fake
    ts = await slack.adapter.delivery.direct_message(
        TEAM_ID, BOB, "May Alice use your cameo?", (("cameo_approve:nope", "Approve once"), ("cameo_deny:nope", "Deny"))
    )
    dm = fake.dm_channel(BOB)
    ack = await fake.interact(fake.block_action(dm, ts, "cameo_approve:nope", user=BOB))
    assert ack.status == 200 and ack.elapsed < 3.0
    await slack.settle()
    assert "no consent request nope" in fake.responses[-1]["text"]

    slack.app.bot.cameos = None
    await fake.interact(fake.block_action(dm, ts, "cameo_deny:nope", user=BOB))
    await slack.settle()
    assert "not available" in fake.responses[-1]["text"]


async def test_a_burst_of_commands_is_acknowledged_in_time_and_each_answered(
    fake: FakeSlack, mode: str, make_settings: Callable[..., Settings]
) -> None:
    slack = await start_slack_bot(fake, make_settings(**slack_env(fake, mode)), worker=False)
    try:
        users = [f"U_BURST{i:03d}" for i in range(60)]
        acks = await asyncio.gather(
            *(fake.command(f"a boat number {i} --seconds 4", user=u) for i, u in enumerate(users))
        )
        assert all(a.status == 200 for a in acks) and max(a.elapsed for a in acks) < 3.0
        await fake.wait_responses(60)
        await slack.settle()
        assert sorted(r["_user"] for r in fake.responses) == users
        assert all("queued" in r["text"] for r in fake.responses)
        assert len(fake.bot_messages(CHANNEL)) == 60
    finally:
        await slack.stop()


async def test_cameo_register_by_mention_and_approval_through_direct_message_buttons(http_slack: SlackBot) -> None:
    """Likeness consent on Slack: register with a picture of a face, confirm, a workspace admin verifies it,
    then the owner approves by DM button."""
    slack, fake = http_slack, http_slack.fake
    file = fake.add_file(FACE, "me.png")
    post = fake.user_post(f"<@{fake.bot_user_id}> cameo register", files=[file], user=ALICE)
    await fake.event(fake.mention_event(post))
    await slack.settle()
    [answer] = [e for e in fake.ephemerals if e["user"] == ALICE]
    assert "consent" in answer["text"].lower() and "cameo_confirm" in str(answer["blocks"])
    confirmed = await command(slack, "cameo confirm")
    assert "a workspace admin must verify" in confirmed, confirmed
    assert "Only workspace admins" in await command(slack, f"cameo verify <@{ALICE}|alice>", user=BOB)
    verified = await command(slack, f"cameo verify <@{ALICE}|alice>", user=ADMIN)  # is_admin from users.info
    assert verified.startswith("Verified: ") and f"<@{ALICE}>" in verified, verified
    await fake.command("cameo audience approved", user=ALICE)
    await slack.settle()
    assert any("people you approve" in str(r) for r in [*fake.responses, *fake.ephemerals]), fake.responses

    await fake.command(f"a walk on the beach --model veo-3.1 --seconds 4 --cameo <@{ALICE}|alice>", user=BOB)
    await slack.settle()
    job = await slack.only_job(user=BOB)
    assert job.state is JobState.PENDING_CONSENT
    dm = fake.dm_channel(ALICE)
    [request] = [m for m in fake.messages_in(dm) if "cameo_approve" in str(m.get("blocks"))]
    approve = next(
        e["action_id"]
        for b in request["blocks"]
        if b.get("type") == "actions"
        for e in b["elements"]
        if e["action_id"].startswith("cameo_approve:")
    )
    ack = await fake.interact(fake.block_action(dm, request["ts"], approve, user=ALICE))
    assert ack.status == 200 and ack.elapsed < 3.0
    job = await slack.delivered(job.id)
    assert job.state is JobState.DELIVERED and job.options.cameo == f"slack:{TEAM_ID}:{ALICE}"
    assert len(fake.uploads) == 1
