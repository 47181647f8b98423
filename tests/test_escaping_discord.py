"""Mention and link injection on Discord: what people type reaches Discord as text, never as markup.

Every whole string from the core passes through ``discord_text`` (masked links, headers, quotes,
lists, fences, spoilers and ``@everyone`` neutralised) and pings are limited by ``AllowedMentions``
to the requester. The end-to-end cases drive hostile prompts through the real discord.py client
against the fake Discord and assert the exact message contents sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.delivery import discord_text
from bot import texts
from bot.config import Settings
from tests.fakes.discord_api import DiscordHarness, FakeDiscord

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("[Sign in](https://evil.example)", "[Sign in]\u200b(https://evil.example)"),
        ("\\[Sign in](https://evil.example)", "\\\\[Sign in]\u200b(https://evil.example)"),
        ("`/video PROMPT [--pro] [--seconds N]`", "`/video PROMPT [--pro] [--seconds N]`"),
        ("@everyone and @here", "@\u200beveryone and @\u200bhere"),
        ("# Header\n## h2\n-# small\n> quote\n>>> all\n- item\n* item\n12. item", None),
        ("```code``` ||spoiler||", "\\`\\`\\`code\\`\\`\\` \\|\\|spoiler\\|\\|"),
        ("*bold* `code` <@123> mid # not a header", "*bold* `code` <@123> mid # not a header"),
    ],
)
def test_discord_text(raw: str, shown: str | None) -> None:
    if shown is None:
        shown = "\\# Header\n\\## h2\n\\-# small\n\\> quote\n\\>>> all\n\\- item\n\\* item\n12\\. item"
    assert discord_text(raw) == shown


# --- Discord, end to end ---------------------------------------------------------------------------------------

D_PROMPT = "a boat [Sign in](https://evil.example) @everyone <@&123> ||x|| `ok`"
D_SHOWN = "a boat [Sign in]\u200b(https://evil.example) @\u200beveryone <@&123> \\|\\|x\\|\\| `ok`"


@pytest.fixture
async def discord_harness(make_settings: Callable[..., Settings]) -> AsyncIterator[DiscordHarness]:
    saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    fake = FakeDiscord()
    await fake.start()
    harness = DiscordHarness(fake, make_settings)
    try:
        await harness.start()
        yield harness
    finally:
        await harness.stop()
        await fake.stop()
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


async def test_discord_hostile_prompt_is_text_in_the_caption_the_card_and_a_notice(
    discord_harness: DiscordHarness,
) -> None:
    harness, fake = discord_harness, discord_harness.fake
    rec = await fake.slash("video create", {"prompt": D_PROMPT})
    await rec.reply()
    job = await harness.job_for(rec)
    assert job.prompt == D_PROMPT
    job = await harness.wait_state(job.id, "delivered", within=30)

    channel, message = job.delivered_ref.split(":")
    clip_message = fake.message(channel, message)
    assert clip_message["content"] == texts.caption(job).replace(D_PROMPT, D_SHOWN)
    assert clip_message["allowed_mentions"]["parse"] == []
    assert [int(u) for u in clip_message["allowed_mentions"]["users"]] == [fake.alice.id]

    card_channel, _, card_message = job.card_ref.partition(":")
    card = fake.message(card_channel if card_message else job.channel_id, card_message or card_channel)
    assert card["embeds"][0]["description"] == D_SHOWN

    await harness.adapter.delivery.notify(job, f"About “{D_PROMPT}”:\n# not a header")
    notice = fake.channel_messages(channel)[-1]
    assert notice["content"] == f"<@{fake.alice.id}> About “{D_SHOWN}”:\n\\# not a header"
    assert notice["allowed_mentions"]["parse"] == []


async def test_discord_direct_message_and_reply_are_neutralised(discord_harness: DiscordHarness) -> None:
    harness, fake = discord_harness, discord_harness.fake
    text = f"<@{fake.alice.id}> asks to use your cameo in a clip: “{D_PROMPT}”."
    ref = await harness.adapter.delivery.direct_message(str(fake.guild_id), str(fake.bob.id), text)
    dm_channel, dm_message = ref.split(":")
    dm = fake.message(dm_channel, dm_message)
    assert dm["content"] == f"<@{fake.alice.id}> asks to use your cameo in a clip: “{D_SHOWN}”."
    assert dm["allowed_mentions"]["parse"] == [] and not dm["allowed_mentions"].get("users")

    # A refusal that echoes what was typed: one clear line, the link inert, nothing charged.
    rec = await fake.slash("video create", {"prompt": "a cat --seconds [x](https://e.io)"})
    reply = await rec.reply()
    assert reply == "--seconds takes a whole number such as 8 (got [x]\u200b(https://e.io))."
    assert await harness.job_for(rec) is None
