"""The real discord.py client, the real core (store, worker, local renderer) and a fake Discord on 127.0.0.1.

Each test starts the fake (REST + gateway + CDN on one port), builds the app with ``build_app`` on
tmp_path and starts ``DiscordAdapter``; at the end every interaction the fake dispatched must have
been acknowledged exactly once within 3 s (``assert_interactions_answered_in_time``), and
``Route.BASE`` / ``DEFAULT_GATEWAY`` are restored.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import pytest
import skimage
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bot.providers.local import LocalRenderer
from tests.fakes.discord_api import ADMIN_PERMISSIONS, DiscordHarness, FakeDiscord
from tests.media_factory import RED, image_bytes, stream_facts

pytestmark = pytest.mark.timeout(40)

DEFAULT_BASE = "https://discord.com/api/v10"


@pytest.fixture
async def fake():
    saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    server = FakeDiscord()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


@pytest.fixture
async def discord_bot(fake, make_settings):
    """``await discord_bot(**env)`` -> a started DiscordHarness; ``start=False`` to start it yourself."""
    harnesses: list[DiscordHarness] = []

    async def factory(*, start: bool = True, worker: bool = True, provider=None, **env) -> DiscordHarness:
        harness = DiscordHarness(fake, make_settings, **env)
        harnesses.append(harness)
        if start:
            await harness.start(worker=worker, provider=provider)
        return harness

    yield factory
    for harness in harnesses:
        await harness.stop()
    fake.assert_interactions_answered_in_time()


# A face (a cameo must show one): scikit-image's public-domain astronaut, nothing downloaded.
FACE = (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()


def png(color=RED) -> bytes:
    return image_bytes("PNG", 640, 360, color=color)


def card_of(fake: FakeDiscord, job) -> dict:
    channel, _, message = job.card_ref.partition(":")
    return fake.message(channel if message else job.channel_id, message or channel)


def buttons(message: dict) -> list[str]:
    return [c["custom_id"] for row in message.get("components", []) for c in row["components"]]


def status_of(message: dict) -> str:
    return next(f["value"] for f in message["embeds"][0]["fields"] if f["name"] == "Status")


# --- connecting -------------------------------------------------------------------------------


async def test_connects_syncs_commands_with_valid_choices_and_restores_endpoints(fake, discord_bot):
    harness = await discord_bot(worker=False)
    assert fake.identifies == 1
    assert Route.BASE == fake.api_url
    scope, commands = fake.syncs[-1]
    assert scope == "global"
    (video,) = commands
    assert video["name"] == "video"
    subs = {o["name"]: o for o in video["options"]}
    assert set(subs) == {"create", "models", "budget", "jobs", "cancel", "retry", "help", "admin", "cameo"}
    assert {o["name"] for o in subs["admin"]["options"]} == {"budget", "usage"}
    create = {o["name"]: o for o in subs["create"]["options"]}
    assert create["prompt"]["required"] and create["prompt"]["type"] == 3
    assert create["image"]["type"] == 11 and not create["image"].get("required")
    assert create["cameo"]["type"] == 6
    # The choices come from the catalog: with only the local renderer it stands in for every model.
    catalog = harness.adapter.bot.catalog
    assert [c["value"] for c in create["model"]["choices"]] == list(catalog.names)
    assert "sora-2 (default) · from $0.10/s" in [c["name"] for c in create["model"]["choices"]]
    assert [c["value"] for c in create["seconds"]["choices"]] == list(range(4, 16))
    assert [c["value"] for c in create["aspect"]["choices"]] == ["16:9", "9:16", "1:1"]
    assert "1920x1080" in [c["value"] for c in create["size"]["choices"]]
    assert [c["value"] for c in create["resolution"]["choices"]] == ["480p", "720p", "1080p"]
    assert [c["value"] for c in create["sound"]["choices"]] == ["on", "off"]
    assert create["seed"]["type"] == 4 and create["negative"]["type"] == 3
    assert [c["value"] for c in subs["help"]["options"][0]["choices"]] == list(catalog.names)
    assert subs["cancel"]["options"][0]["autocomplete"] is True

    await harness.stop()
    assert Route.BASE == DEFAULT_BASE
    assert str(DiscordWebSocket.DEFAULT_GATEWAY) == "wss://gateway.discord.gg/"


async def test_guild_sync_and_configured_choices(fake, discord_bot, tmp_path):
    models = tmp_path / "models.toml"
    models.write_text(
        'remove = ["veo-3.1-lite", "veo-3.1-fast", "veo-3.1", "kling-3", "seedance-2-mini", "ltx-2-fast", "wan-2.6"]\n'
        '[models."sora-2-pro"]\nresolutions = ["720p", "1080p"]\ndurations = [4, 8, 12, 16, 20]\n'
        'prices = { "720p" = { sound = 300_000 }, "1080p" = { sound = 700_000 } }\n'
    )
    await discord_bot(worker=False, DISCORD_GUILD_ID=str(fake.guild_id), REELBOT_MODELS_FILE=str(models))
    scope, commands = fake.syncs[-1]
    assert scope == f"guild:{fake.guild_id}"
    create = {o["name"]: o for o in next(o for o in commands[0]["options"] if o["name"] == "create")["options"]}
    assert [c["value"] for c in create["model"]["choices"]] == ["sora-2", "sora-2-pro"]
    assert [c["value"] for c in create["seconds"]["choices"]] == [4, 8, 12, 16, 20]
    assert [c["value"] for c in create["resolution"]["choices"]] == ["720p", "1080p"]
    rec = await fake.slash("video budget", guild_command=True)
    assert (await rec.reply()).startswith("Budget this month")


# --- asking for a clip ------------------------------------------------------------------------


async def test_create_with_image_renders_into_a_thread_on_the_card(fake, discord_bot):
    harness = await discord_bot()
    rec = await fake.slash("video create", {"prompt": "a paper boat on a pond", "image": fake.attachment(png())})
    text = await rec.reply()
    job = await harness.job_for(rec)
    assert text == f"Job {job.id} queued, position 1 in the queue: sora-2 · 1280x720 · 4 s, $0.40."
    assert rec.ack_type == 5 and rec.ephemeral and rec.acks[0][2] < 2.0
    assert rec.followups[0]["flags"] & 64  # the answer is ephemeral
    # The picture came from the CDN once, without the bot token, and became the reference.
    assert len(fake.cdn_hits) == 1 and "Authorization" not in fake.cdn_hits[0][1]
    assert Path(job.reference_path).exists()
    # The card was posted with the bot token in the channel, and a thread opened on it.
    card = fake.message(fake.channel_id, job.card_ref)
    assert card["embeds"][0]["title"] == f"🎬 Video job {job.id}"
    assert buttons(card) == [f"reelbot:cancel:{job.id}"]
    thread = int(job.card_ref)
    assert fake.threads() == [thread]
    assert fake.channels[thread]["name"].startswith("🎬 a paper boat")
    # The render outlives the interaction token: nothing after the answer uses it.
    fake.expire(rec)

    job = await harness.wait_state(job.id, "delivered", within=15)
    (upload,) = fake.files_in(thread)
    assert upload.filename == f"reelbot-{job.id}.mp4"
    assert upload.data == Path(job.clip_path).read_bytes()
    clip_message = fake.message(thread, job.delivered_ref.split(":")[1])
    caption = clip_message["content"]
    for part in (f"<@{fake.alice.id}>", "sora-2 · 1280x720 · 4 s", "$0.40", "AI-generated video", job.id):
        assert part in caption
    assert [int(u) for u in clip_message["allowed_mentions"]["users"]] == [fake.alice.id]
    assert clip_message["allowed_mentions"]["parse"] == []
    assert await harness.app.store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]

    # The card ends as Delivered with Re-roll and Remix; edits were at least 3 s apart.
    await fake.wait_for(lambda: status_of(card_of(fake, job)) == "Delivered", within=8, what="final card")
    assert buttons(card_of(fake, job)) == [f"reelbot:reroll:{job.id}", f"reelbot:remix:{job.id}"]
    times = [e.at for e in fake.edits_of(job.card_ref)]
    assert all(b - a >= 2.9 for a, b in itertools.pairwise(times)), times


async def test_flags_options_autocomplete_and_one_job_per_interaction(fake, discord_bot):
    harness = await discord_bot(worker=False)
    rec = await fake.slash("video create", {"prompt": "a cat --pro", "seconds": 8, "size": "720x1280"})
    assert "queued" in await rec.reply()
    job = await harness.job_for(rec)
    assert (job.prompt, job.options.model, job.options.seconds, job.options.size) == (
        "a cat",
        "sora-2-pro",
        8,
        "720x1280",
    )

    clash = await fake.slash("video create", {"prompt": "a dog --seconds 8", "seconds": 4})
    assert await clash.reply() == "--seconds is given more than once; give it once."
    assert await harness.job_for(clash) is None

    words = await fake.slash("video create", {"prompt": "jobs that never end"})
    assert "queued" in await words.reply()
    assert (await harness.job_for(words)).prompt == "jobs that never end"

    # The same interaction delivered twice (a gateway replay) makes one job and one answer.
    await fake.replay(rec)
    await fake.wait_for(lambda: rec.errors == [40060], within=5, what="the replay's refused ack")
    await asyncio.sleep(0.2)
    assert len(rec.followups) == 1
    assert len([m for m in fake.channel_messages(fake.channel_id) if m["embeds"]]) == 2

    auto = await fake.autocomplete("video cancel", "job", job.id[:3])
    await auto.wait_acked()
    choices = auto.acks[0][1]["data"]["choices"]
    assert choices[0]["value"] == job.id and "a cat" in choices[0]["name"]

    listing = await fake.slash("video jobs")
    assert job.id in await listing.reply()

    stale = await fake.slash("video zoom")  # a command Discord still shows but this version dropped
    assert await stale.reply() == "Discord showed you an older version of this command; try again in a minute."
    assert stale.ephemeral


async def test_bad_input_gets_a_clear_message_and_nothing_is_fetched_or_charged(fake, discord_bot):
    harness = await discord_bot(worker=False)
    attach = fake.attachment
    cases = [
        ({"prompt": "a cat --seconds 7", "image": attach(png())}, "sora-2 takes 4, 8 or 12 seconds (got 7)."),
        ({"prompt": "a cat --wings", "image": attach(png())}, "Unknown option --wings."),
        (
            {
                "prompt": "a cat",
                "image": attach(b"%PDF-1.4 hello", filename="plan.pdf", content_type="application/pdf"),
            },
            "plan.pdf (application/pdf) is not a picture I can use; attach a JPEG, PNG or WEBP image.",
        ),
        (
            {"prompt": "a cat", "image": attach(png(), size=25 * 1024 * 1024)},
            "frame.png is 25 MB; attach a picture of at most 20 MB.",
        ),
        (
            {"prompt": "a cat", "image": attach(png(), url=f"http://localhost:{fake.port}/attachments/1/2/frame.png")},
            "frame.png is not stored on Discord's CDN, so I won't fetch it",
        ),
        (
            {"prompt": "a cat", "image": attach(png(), url="https://cdn.discordapp.com.evil.example/1/2/frame.png")},
            "frame.png is not stored on Discord's CDN",
        ),
    ]
    for options, expected in cases:
        rec = await fake.slash("video create", options)
        answer = await rec.reply()
        assert answer.startswith(expected), answer
        assert rec.ephemeral
        assert await harness.job_for(rec) is None
    assert fake.cdn_hits == []  # refused before any download

    # Declared PNG but really a PDF: fetched (it looked fine), then refused by the core's sniffing.
    liar = await fake.slash("video create", {"prompt": "a cat", "image": attach(b"%PDF-1.4 not a picture")})
    answer = await liar.reply()
    assert "PDF" in answer and await harness.job_for(liar) is None
    totals = await harness.app.store.ledger_totals()
    assert (totals.reserved, totals.settled, totals.released) == (0, 0, 0)
    assert not any(m["embeds"] for m in fake.channel_messages(fake.channel_id))


async def test_budget_refusal_and_admin_commands_are_ephemeral(fake, discord_bot):
    harness = await discord_bot(worker=False, REELBOT_USER_BUDGET_USD="0.30", REELBOT_ADMIN_IDS=str(fake.bob.id))
    refused = await fake.slash("video create", {"prompt": "a lighthouse in a storm"})
    answer = await refused.reply()
    assert answer.startswith("Not enough budget: this clip costs $0.40 and you have $0.30 left of $0.30")
    assert refused.ephemeral
    job = await harness.job_for(refused)
    assert job.state.value == "refused" and await harness.app.store.ledger_for(job.id) == []
    assert not fake.channel_messages(fake.channel_id)  # no card for a refused job

    budget = await fake.slash("video budget")
    assert (await budget.reply()).startswith("Budget this month: spent $0.00, reserved $0.00, limit $0.30")
    assert budget.ephemeral

    denied = await fake.slash("video admin budget", {"amount": "5", "user": fake.alice}, user=fake.alice)
    assert await denied.reply() == "Only workspace admins can set budgets."
    granted = await fake.slash(
        "video admin budget", {"amount": "5", "user": fake.alice}, user=fake.admin, permissions=ADMIN_PERMISSIONS
    )
    assert await granted.reply() == f"<@{fake.alice.id}>'s budget is now $5.00 per month."
    configured = await fake.slash("video admin budget", {"amount": "1"}, user=fake.bob)  # REELBOT_ADMIN_IDS
    assert await configured.reply() == "The default budget here is now $1.00 per month."

    again = await fake.slash("video create", {"prompt": "a lighthouse in a storm"})
    assert "queued" in await again.reply()
    usage = await fake.slash("video admin usage", user=fake.admin, permissions=ADMIN_PERMISSIONS)
    report = await usage.reply()
    assert f"<@{fake.alice.id}>: spent $0.00, reserved $0.40" in report and usage.ephemeral
    nosy = await fake.slash("video admin usage", user=fake.alice)
    assert await nosy.reply() == "Only workspace admins can see everyone's usage."


# --- where cards go ---------------------------------------------------------------------------


async def test_cards_in_threads_dms_and_channels_without_access(fake, discord_bot):
    in_thread = fake.add_thread(fake.channel_id, name="ideas")
    dm_channel = fake.add_channel(fake.ids.next(), guild_id=None, type=1)
    dm_channel["recipients"] = [fake.alice.payload()]
    locked = fake.add_channel(fake.ids.next(), guild_id=fake.guild_id, name="announcements")
    fake.forbidden.add(int(locked["id"]))
    threadless = fake.add_channel(fake.ids.next(), guild_id=fake.guild_id, name="no-threads")
    fake.no_threads.add(int(threadless["id"]))
    harness = await discord_bot(worker=False)

    rec = await fake.slash("video create", {"prompt": "a kite"}, channel_id=in_thread)
    await rec.reply()
    job = await harness.job_for(rec)
    assert (job.channel_id, job.thread_id) == (str(fake.channel_id), str(in_thread))
    assert job.card_ref.startswith(f"{in_thread}:") and card_of(fake, job)["embeds"]
    assert fake.threads() == []  # no thread inside a thread

    rec = await fake.slash("video create", {"prompt": "a kite"}, channel_id=int(dm_channel["id"]))
    await rec.reply()
    job = await harness.job_for(rec)
    assert job.workspace_id == "dm" and job.card_ref.startswith(f"{dm_channel['id']}:")

    rec = await fake.slash("video create", {"prompt": "a kite"}, channel_id=int(threadless["id"]))
    await rec.reply()
    job = await harness.job_for(rec)
    assert job.card_ref.startswith(f"{threadless['id']}:") and fake.threads() == []

    rec = await fake.slash("video create", {"prompt": "a kite"}, channel_id=int(locked["id"]))
    answer = await rec.reply()
    assert answer == (
        "I can't post in this channel; give me View Channel, Send Messages, Send Messages in Threads, "
        "Create Public Threads, Attach Files and Embed Links here. Nothing was charged."
    )
    job = await harness.job_for(rec)
    assert job.state.value == "cancelled" and await harness.app.store.ledger_for(job.id) == [
        ("reserve", 400_000),
        ("release", 400_000),
    ]


# --- upload size --------------------------------------------------------------------------------


async def test_clip_over_the_upload_limit_is_reencoded_to_fit(fake, discord_bot, tmp_path):
    limit = 64_000
    fake.set_upload_limit(limit)
    harness = await discord_bot()
    rec = await fake.slash("video create", {"prompt": "waves at dusk", "image": fake.attachment(png())})
    await rec.reply()
    job = await harness.job_for(rec)
    job = await harness.wait_state(job.id, "delivered", within=20)
    original = Path(job.clip_path)
    assert original.stat().st_size > limit
    (upload,) = fake.files_in(job.card_ref)
    assert len(upload.data) <= limit and fake.rejected_uploads == []
    shrunk = tmp_path / "shrunk.mp4"
    shrunk.write_bytes(upload.data)
    facts = stream_facts(shrunk)
    assert facts["audio_codec"] is not None
    assert abs(facts["container_seconds"] - 4) < 0.3
    assert not list(original.parent.glob("*.discord-*.mp4"))  # the re-encoded copy was cleaned up


async def test_an_upload_discord_rejects_as_too_large_is_shrunk_and_sent(fake, discord_bot):
    harness = await discord_bot(worker=False)
    rec = await fake.slash("video create", {"prompt": "waves at dusk"})  # the adapter notes a 10 MiB limit
    await rec.reply()
    fake.set_upload_limit(100_000)  # ...but the guild lost its boosts since
    await harness.app.worker.start()
    job = await harness.wait_state((await harness.job_for(rec)).id, "delivered", within=20)
    assert fake.rejected_uploads and all(size > 100_000 for _, _, size in fake.rejected_uploads)
    (upload,) = fake.files_in(job.card_ref)
    assert len(upload.data) <= 100_000


async def test_a_clip_that_cannot_fit_is_explained_in_the_thread(fake, discord_bot):
    fake.set_upload_limit(3_000)
    harness = await discord_bot()
    rec = await fake.slash("video create", {"prompt": "waves at dusk"})
    await rec.reply()
    job = await harness.wait_state((await harness.job_for(rec)).id, "undelivered", within=20)
    assert fake.files_in(job.card_ref) == []
    told = f"<@{fake.alice.id}> Your clip for job {job.id} is ready but I could not post it: The clip is"
    notice = await fake.wait_for(  # the requester is told right after the job is marked undelivered
        lambda: next(
            (m["content"] for m in fake.channel_messages(job.card_ref) if m["content"].startswith(told)), None
        ),
        within=5,
        what="the requester told in the thread",
    )
    assert "upload limit" in notice and f"/video retry {job.id}" in notice, notice
    await fake.wait_for(lambda: buttons(card_of(fake, job)) == [f"reelbot:retry:{job.id}"], within=8)


# --- buttons and restarts -----------------------------------------------------------------------


async def test_card_buttons_work_after_a_restart(fake, discord_bot):
    harness = await discord_bot(worker=False)
    rec = await fake.slash("video create", {"prompt": "a lighthouse"})
    await rec.reply()
    job = await harness.job_for(rec)
    await harness.restart(worker=False)

    nosy = await fake.click(fake.channel_id, job.card_ref, f"reelbot:cancel:{job.id}", user=fake.bob)
    assert await nosy.reply() == f"Only the person who asked for job {job.id} (or an admin) can cancel it."
    assert nosy.ephemeral
    mine = await fake.click(fake.channel_id, job.card_ref, f"reelbot:cancel:{job.id}")
    assert await mine.reply() == f"Job {job.id} cancelled. Nothing was charged."
    await fake.wait_for(
        lambda: buttons(card_of(fake, job)) == [f"reelbot:reroll:{job.id}"], within=8, what="the cancelled card"
    )
    assert status_of(card_of(fake, job)) == "Cancelled (not charged)"

    reroll = await fake.click(fake.channel_id, job.card_ref, f"reelbot:reroll:{job.id}")
    assert "queued" in await reroll.reply()
    again = await harness.job_for(reroll)
    assert again.prompt == "a lighthouse" and again.thread_id == job.card_ref
    assert again.card_ref.startswith(f"{job.card_ref}:")  # its card is inside the first job's thread
    thread_card = card_of(fake, again)
    admin = await fake.click(
        job.card_ref, thread_card["id"], f"reelbot:cancel:{again.id}", user=fake.admin, permissions=ADMIN_PERMISSIONS
    )
    assert await admin.reply() == f"Job {again.id} cancelled. Nothing was charged."


async def test_remix_button_opens_a_modal_whose_submission_works_after_a_restart(fake, discord_bot):
    harness = await discord_bot()
    rec = await fake.slash("video create", {"prompt": "a red balloon"})
    await rec.reply()
    job = await harness.wait_state((await harness.job_for(rec)).id, "delivered", within=15)
    await fake.wait_for(lambda: f"reelbot:remix:{job.id}" in buttons(card_of(fake, job)), within=8)

    press = await fake.click(fake.channel_id, job.card_ref, f"reelbot:remix:{job.id}")
    await press.wait_acked()
    kind, body, _ = press.acks[0]
    assert kind == 9 and body["data"]["custom_id"] == f"reelbot:remix-modal:{job.id}"
    await harness.restart()

    submit = await fake.submit_modal(
        fake.channel_id, f"reelbot:remix-modal:{job.id}", {"prompt": "make it night, with snow"}
    )
    assert "queued" in await submit.reply()
    remix = await harness.job_for(submit)
    assert remix.remix_of == job.provider_video_id and remix.prompt == "make it night, with snow"
    assert remix.thread_id == job.card_ref
    remix = await harness.wait_state(remix.id, "delivered", within=15)
    assert [f.filename for f in fake.files_in(job.card_ref)] == [f"reelbot-{job.id}.mp4", f"reelbot-{remix.id}.mp4"]


async def test_restart_mid_render_delivers_the_clip_once(fake, discord_bot):
    harness = await discord_bot(start=False)
    renders = harness.settings.data_dir / "renders"
    await harness.start(provider=LocalRenderer(work_dir=renders, min_render_seconds=4.0))
    rec = await fake.slash("video create", {"prompt": "a slow sunrise"})
    await rec.reply()
    job = await harness.wait_state((await harness.job_for(rec)).id, "rendering", within=10)

    await harness.stop()  # adapter, worker and renderer stop mid-render
    assert (await _reopen_job(harness, job.id)).state.value == "rendering"
    await harness.start(provider=LocalRenderer(work_dir=renders))
    job = await harness.wait_state(job.id, "delivered", within=20)
    assert [f.filename for f in fake.files_in(job.card_ref)] == [f"reelbot-{job.id}.mp4"]
    assert await harness.app.store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]
    assert fake.identifies == 2


async def _reopen_job(harness: DiscordHarness, job_id: str):
    from bot.store import Store

    store = await Store.open(harness.settings.db_path)
    try:
        return await store.get_job(job_id)
    finally:
        await store.close()


async def test_a_crash_after_the_upload_does_not_post_the_clip_twice(fake, discord_bot):
    harness = await discord_bot()
    delivery = harness.adapter.delivery
    real_post = delivery.post_clip

    async def post_then_crash(job, clip, caption):
        await real_post(job, clip, caption)
        await asyncio.Event().wait()  # the process dies before the store records the delivery

    delivery.post_clip = post_then_crash
    rec = await fake.slash("video create", {"prompt": "a quick fox"})
    await rec.reply()
    job = await harness.job_for(rec)
    await fake.wait_for(lambda: fake.files_in(job.card_ref), within=15, what="the first upload")
    await harness.stop()
    assert (await _reopen_job(harness, job.id)).state.value == "delivering"

    await harness.start()
    job = await harness.wait_state(job.id, "delivered", within=15)
    (upload,) = fake.files_in(job.card_ref)
    assert job.delivered_ref == f"{job.card_ref}:{upload.message_id}"
    assert await harness.app.store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]

    # A revoked cameo's posts are deleted through the same reference (twice is harmless).
    await harness.adapter.delivery.delete_message(job, job.delivered_ref)
    await harness.adapter.delivery.delete_message(job, job.delivered_ref)
    assert fake.deleted == [(int(job.card_ref), upload.message_id)]


# --- direct messages, throttling, logs ------------------------------------------------------------


async def test_a_cameo_is_approved_by_its_owners_direct_message_button_even_after_a_restart(fake, discord_bot):
    """Bob registers his cameo, an admin verifies it, Alice asks to use it, Bob approves from his DM: a real clip."""
    from bot.jobs import JobState

    harness = await discord_bot(REELBOT_ADMIN_IDS=str(fake.alice.id))
    rec = await fake.slash("video cameo register", {"file": fake.attachment(FACE)}, user=fake.bob)
    await rec.reply()
    (answer,) = rec.followups
    confirm = f"reelbot:cameo:{fake.guild_id}:cameo_confirm"
    fake.messages[fake.channel_id].append(answer)  # the ephemeral message, as the clicking client sees it
    press = await fake.click(fake.channel_id, answer["id"], confirm, user=fake.bob)
    assert "a workspace admin must verify" in await press.reply()

    def with_button(user, part):
        return lambda: next(
            (m for m in fake.channel_messages(fake.dms.get(user.id, 0)) if any(part in b for b in buttons(m))), None
        )

    verify_dm = await fake.wait_for(with_button(fake.alice, ":cameo_verify:"), what="the admin's verify button")
    verify = f"reelbot:cameo:{fake.guild_id}:cameo_verify:{fake.bob.id}"
    assert buttons(verify_dm) == [verify]
    rec = await fake.click(fake.dms[fake.alice.id], verify_dm["id"], verify, user=fake.alice)
    assert (await rec.reply()).startswith(f"Verified: <@{fake.bob.id}>'s cameo")
    rec = await fake.slash("video cameo audience", {"who": "approved"}, user=fake.bob)
    assert "people you approve" in await rec.reply()

    rec = await fake.slash("video create", {"prompt": "us dancing --model veo-3.1", "cameo": fake.bob})
    assert "waits for" in await rec.reply()
    job = await harness.job_for(rec)
    assert job.state is JobState.PENDING_CONSENT
    assert await harness.app.store.ledger_for(job.id) == []
    request_dm = await fake.wait_for(with_button(fake.bob, ":cameo_approve:"), what="the consent request")
    approve, always, deny = buttons(request_dm)
    assert (":cameo_approve:" in approve, ":cameo_always:" in always, ":cameo_deny:" in deny) == (True, True, True)

    await harness.restart()  # the buttons are persistent: they work in the next process
    rec = await fake.click(fake.dms[fake.bob.id], request_dm["id"], approve, user=fake.bob)
    assert (await rec.reply()) == f"Approved job {job.id}."
    job = await harness.wait_state(job.id, "delivered", within=30)
    assert [kind for kind, _ in await harness.app.store.ledger_for(job.id)] == ["reserve", "settle"]
    assert job.options.cameo == f"discord:{fake.guild_id}:{fake.bob.id}"
    rec = await fake.click(fake.dms[fake.bob.id], request_dm["id"], approve, user=fake.bob)
    assert "was already approved" in await rec.reply()

    harness.app.bot.cameos = None
    rec = await fake.click(fake.dms[fake.bob.id], request_dm["id"], approve, user=fake.bob)
    assert (await rec.reply()) in ("Cameos are not available on this bot.", "Cameos are not enabled on this bot.")


async def test_cameo_commands_register_and_confirm_through_buttons(fake, discord_bot):
    """``/video cameo register`` with an attachment; the core's ``Reply.actions`` become buttons that work."""
    harness = await discord_bot(worker=False)
    names = [o["name"] for o in fake.syncs[-1][1][0]["options"]]
    assert "cameo" in names

    rec = await fake.slash("video cameo register", {"file": fake.attachment(FACE)})
    await rec.reply()
    (answer,) = rec.followups
    assert answer["flags"] & 64
    confirm = f"reelbot:cameo:{fake.guild_id}:cameo_confirm"
    assert buttons(answer) == [confirm]
    fake.messages[fake.channel_id].append(answer)  # the ephemeral message, as the clicking client sees it
    press = await fake.click(fake.channel_id, answer["id"], confirm)
    assert (await press.reply()).startswith(f"Your cameo is active. Others use it with --cameo <@{fake.alice.id}>")
    cameo = await harness.app.bot.cameos.store.get(f"discord:{fake.guild_id}:{fake.alice.id}")
    assert cameo.status == "active"

    rec = await fake.slash("video cameo audience", {"who": "everyone"})
    assert "everyone" in await rec.reply()
    rec = await fake.slash("video cameo forbid", {"words": "--pro politics"})
    assert "never be used with: politics, pro." in await rec.reply()
    rec = await fake.slash(
        "video cameo register",
        {"file": fake.attachment(b"%PDF-1.4", filename="me.pdf", content_type="application/pdf")},
    )
    assert "2-4 s video" in await rec.reply()


async def test_card_edits_are_throttled_and_the_newest_view_wins(fake, discord_bot):
    from bot import texts

    harness = await discord_bot(worker=False)
    harness.adapter.delivery.min_update_interval = 0.5
    rec = await fake.slash("video create", {"prompt": "a metronome"})
    await rec.reply()
    job = await harness.job_for(rec)
    job.state = job.state.__class__("rendering")
    for progress in range(10, 70, 10):
        job.progress = progress
        await harness.adapter.delivery.update_card(job, texts.card_view(job))
        await asyncio.sleep(0.1)
    await fake.wait_for(lambda: "60%" in status_of(card_of(fake, job)), within=3, what="the newest progress")
    times = [e.at for e in fake.edits_of(job.card_ref)]
    assert 1 <= len(times) <= 3
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(times)), times


async def test_no_token_appears_in_any_log_line(fake, discord_bot, caplog):
    caplog.set_level(logging.DEBUG)
    harness = await discord_bot()
    rec = await fake.slash("video create", {"prompt": "a lantern", "image": fake.attachment(png())})
    await rec.reply()
    job = await harness.wait_state((await harness.job_for(rec)).id, "delivered", within=15)
    late = await fake.slash("video cancel", {"job": job.id})
    assert await late.reply() == f"Job {job.id} was already posted, so it was charged $0.40."
    assert [kind for kind, _ in await harness.app.store.ledger_for(job.id)] == ["reserve", "settle"]
    await harness.stop()
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "webhooks" in logged  # discord.py's debug lines about webhook URLs were there...
    assert fake.token not in logged  # ...but no token in any of them
    for interaction in fake.interactions.values():
        assert interaction.token not in logged


async def test_reelbot_serve_runs_discord_when_the_token_is_set(fake, make_settings):
    import os
    import signal

    from adapters.cli import serve

    settings = make_settings(
        DISCORD_BOT_TOKEN=fake.token, DISCORD_API_URL=fake.api_url, DISCORD_GATEWAY_URL=fake.gateway_url
    )
    task = asyncio.create_task(serve(settings))
    try:
        await fake.wait_for(lambda: fake._sockets and fake.syncs, within=10, what="the bot to connect")
        rec = await fake.slash("video create", {"prompt": "a comet"})
        assert "queued" in await rec.reply()
    finally:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:  # serve's own handler is installed
            os.kill(os.getpid(), signal.SIGTERM)  # ...and stops it cleanly
        else:
            task.cancel()
    assert await asyncio.wait_for(task, 20) == 0
    assert Route.BASE == DEFAULT_BASE
    fake.assert_interactions_answered_in_time()
