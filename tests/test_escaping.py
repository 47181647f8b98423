"""Mention and link injection on Slack: what people type reaches Slack as text, never as markup.

The seam (the same on every platform): the core's sentences mix reelbot's words with what people
typed, so each adapter passes every whole string through its platform's one function before adding
its own markup (here ``slack_text``; the requester's mention is the adapter's own). The end-to-end
cases drive hostile prompts through the real Bolt app against the fake Slack and assert the exact
bytes Slack was sent. Discord: ``test_escaping_discord.py``; the terminal: ``test_console_hardening.py``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest

from adapters.slack.blocks import slack_text
from bot import texts
from bot.config import Settings
from tests.fakes.slack_api import FakeSlack, SlackBot, slack_env, start_slack_bot

pytestmark = pytest.mark.timeout(60)

# --- the three functions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "people", "private", "shown"),
    [
        ("<!channel> & <!here>", (), False, "&lt;!channel&gt; &amp; &lt;!here&gt;"),
        ("<https://evil.example|Sign in>", (), False, "&lt;https://evil.example|Sign in&gt;"),
        ("&lt; stays &amp;", (), False, "&amp;lt; stays &amp;amp;"),
        # In a channel only the requester's first mention pings; a typed one (even of them) is text.
        ("For <@U1>: “<@U2> <@U1>”", ("U1",), False, "For <@U1>: “&lt;@U2&gt; &lt;@U1&gt;”"),
        ("<@U2> asks", (), False, "&lt;@U2&gt; asks"),
        # One reader: user mentions show as names (they notify nobody else); group pings and links stay inert.
        (
            "<@U2> asks: “<@U3> <!subteam^S1> <!channel> <https://e.io|x>”",
            (),
            True,
            "<@U2> asks: “<@U3> &lt;!subteam^S1&gt; &lt;!channel&gt; &lt;https://e.io|x&gt;”",
        ),
        ("*bold* `code` _it_", (), False, "*bold* `code` _it_"),
    ],
)
def test_slack_text(raw: str, people: tuple[str, ...], private: bool, shown: str) -> None:
    assert slack_text(raw, people=people, private=private) == shown


# --- Slack, end to end ----------------------------------------------------------------------------------------

ALICE, BOB, CAROL = "U_ALICE", "U_BOB", "U_CAROL"
CHANNEL = "C_GENERAL"
# What Slack sends when someone types these characters literally (it escapes &, <, >), plus one
# autocompleted mention of carol, which Slack sends as a real token.
TYPED = "a boat &lt;!channel&gt; &lt;https://evil.example|Sign in&gt; &lt;@U_BOB&gt; &amp; *bold* <@U_CAROL>"
PROMPT = "a boat <!channel> <https://evil.example|Sign in> <@U_BOB> & *bold* <@U_CAROL>"
ESCAPED = "a boat &lt;!channel&gt; &lt;https://evil.example|Sign in&gt; &lt;@U_BOB&gt; &amp; *bold* &lt;@U_CAROL&gt;"
HOSTILE = ("<!channel>", "<https://evil", "<@U_BOB>", "<@U_CAROL>", "<!here>")


@pytest.fixture
async def slack(make_settings: Callable[..., Settings]) -> AsyncIterator[SlackBot]:
    async with FakeSlack() as fake:
        bot = await start_slack_bot(fake, make_settings(**slack_env(fake, "http")))
        try:
            yield bot
        finally:
            await bot.stop()


def bot_sent(fake: FakeSlack) -> str:
    """Everything the bot sent to Slack's Web API, as one string."""
    return json.dumps([call.args for call in fake.calls], ensure_ascii=False)


async def test_slack_hostile_prompt_is_text_in_the_card_the_comment_and_the_reply(slack: SlackBot) -> None:
    fake = slack.fake
    before = len(fake.responses)
    ack = await fake.command(TYPED + " --seconds 4", user=ALICE, channel=CHANNEL)
    assert ack.status == 200
    job = await slack.only_job(ALICE)
    assert job.prompt == PROMPT
    job = await slack.delivered(job.id)

    [upload] = fake.uploads
    assert upload.initial_comment == texts.caption(job).replace(PROMPT, ESCAPED)
    assert upload.initial_comment.startswith(f"🎬 For <@{ALICE}>: “{ESCAPED}”")
    assert upload.title == slack_text(f"{texts.short_prompt(job.prompt, 60)} ({texts.AI_LABEL})")

    card = fake.message(CHANNEL, job.card_ref)
    head = next(b for b in card["blocks"] if b.get("block_id") == "card_head")
    assert head["text"]["text"] == f"*{texts.card_view(job).title}*\n>{ESCAPED}"
    meta = next(b for b in card["blocks"] if b.get("block_id") == "card_meta")
    assert meta["elements"][0]["text"].endswith(f"asked by <@{ALICE}>")

    # The ephemeral answer, and nothing anywhere that Slack would turn into a ping or a link.
    answers = [r for r in fake.responses[before:] if r.get("_user") == ALICE]
    assert answers and all("<" not in r["text"] for r in answers)
    sent = bot_sent(fake)
    assert not [h for h in HOSTILE if h in sent]


async def test_slack_reply_echoing_typed_text_is_escaped(slack: SlackBot) -> None:
    fake = slack.fake
    before = len(fake.responses)
    ack = await fake.command("cancel &lt;!here&gt;", user=ALICE, channel=CHANNEL)
    assert ack.status == 200
    await slack.settle()
    [answer] = [r for r in fake.responses[before:] if r.get("_user") == ALICE]
    assert "&lt;!here&gt;" in answer["text"] and "<!here>" not in answer["text"]
    assert await slack.jobs(ALICE) == []


async def test_slack_consent_message_names_the_asker_and_escapes_the_prompt(slack: SlackBot) -> None:
    """The text is what ``hold_for_consent`` sends: the asker's mention first, then the prompt."""
    fake = slack.fake
    text = f"<@{BOB}> asks to use your cameo in a clip: “{PROMPT}” (sora-2 · 1280x720 · 4 s). Request ab12cd34."
    actions = (("cameo_approve:ab12cd34", "Approve once"), ("cameo_deny:ab12cd34", "Deny"))
    await slack.adapter.delivery.direct_message(fake.team_id, ALICE, text, actions)
    [call] = fake.calls_to("chat.postMessage")
    # One reader: the typed mentions show as names (they can notify nobody else); the link and @channel are inert.
    in_dm = ESCAPED.replace("&lt;@U_BOB&gt;", "<@U_BOB>").replace("&lt;@U_CAROL&gt;", "<@U_CAROL>")
    shown = f"<@{BOB}> asks to use your cameo in a clip: “{in_dm}” (sora-2 · 1280x720 · 4 s). Request ab12cd34."
    assert call["text"] == shown
    blocks = call["blocks"] if isinstance(call["blocks"], list) else json.loads(call["blocks"])
    assert blocks[0]["text"]["text"] == shown
    assert [e["value"] for e in blocks[1]["elements"]] == ["cameo_approve:ab12cd34", "cameo_deny:ab12cd34"]


async def test_slack_notice_pings_only_the_requester(slack: SlackBot) -> None:
    fake = slack.fake
    await fake.command("a quiet lake --seconds 4", user=ALICE, channel=CHANNEL)
    job = await slack.delivered((await slack.only_job(ALICE)).id)
    await slack.adapter.delivery.notify(job, f"Your clip of “{PROMPT}” is ready.")
    notice = fake.calls_to("chat.postMessage")[-1]
    assert notice["text"] == f"<@{ALICE}> Your clip of “{ESCAPED}” is ready."
