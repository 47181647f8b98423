"""The Slack adapter's parts on their own: Block Kit, text handling, file downloads, delivery errors,
the manifest and configuration. Network parts talk to the fake Slack on 127.0.0.1."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack import SlackAdapter, SlackDelivery
from adapters.slack import blocks as kit
from adapters.slack.adapter import mentions_in, normalize_text
from adapters.slack.files import SlackFileRefused, SlackFiles
from bot.catalog import shipped_catalog
from bot.commands import VideoCommand, parse
from bot.config import Settings
from bot.delivery import CardView, Delivery, DeliveryError
from bot.jobs import Job, JobOptions, JobState
from tests.fakes.slack_api import FakeSlack
from tests.media_factory import image_bytes

pytestmark = pytest.mark.timeout(20)

MANIFEST = Path(__file__).resolve().parents[1] / "adapters" / "slack" / "manifest.yml"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server


def card(**overrides: object) -> CardView:
    values: dict[str, object] = dict(
        job_id="abc123",
        title="🎬 Video job abc123",
        prompt="a <b>bold</b> & <@U999> boat",
        settings="sora-2 · 1280x720 · 4 s",
        cost="$0.40",
        requester="<@U_ALICE>",
        status="Rendering 40%",
        state="rendering",
        progress=40,
        queue_position=None,
        actions=("cancel",),
    )
    values.update(overrides)
    return CardView(**values)  # type: ignore[arg-type]


def job(**overrides: object) -> Job:
    values: dict[str, object] = dict(
        id="abc123",
        request_key="k",
        platform="slack",
        workspace_id="T1",
        user_id="U_ALICE",
        user_name="<@U_ALICE>",
        channel_id="C_GENERAL",
        thread_id=None,
        prompt="a boat",
        options=JobOptions("sora-2", "1280x720", 4),
        state=JobState.QUEUED,
        cost_micros=400_000,
        created_at=0.0,
        updated_at=0.0,
    )
    values.update(overrides)
    return Job(**values)  # type: ignore[arg-type]


# --- Block Kit ----------------------------------------------------------------------------------------


def test_card_shows_everything_escapes_the_prompt_and_buttons_carry_the_job_id() -> None:
    blocks = kit.card_blocks(card())
    text = str(blocks)
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; &lt;@U999&gt; boat" in text  # no pings, no markup from prompts
    for part in ("sora-2 · 1280x720 · 4 s", "$0.40", "asked by <@U_ALICE>", "▰▰▰▰▱▱▱▱▱▱ Rendering 40%"):
        assert part in text
    [actions] = [b for b in blocks if b["type"] == "actions"]
    [cancel] = actions["elements"]
    assert cancel["action_id"] == "reelbot_cancel" and cancel["value"] == "abc123" and cancel["confirm"]
    delivered = kit.card_blocks(card(state="delivered", status="Delivered", actions=("reroll", "remix")))
    ids = [e["action_id"] for b in delivered if b["type"] == "actions" for e in b["elements"]]
    assert ids == ["reelbot_reroll", "reelbot_remix"]
    assert not [b for b in kit.card_blocks(card(actions=())) if b["type"] == "actions"]
    assert len(kit.card_text(card(title="x" * 500))) <= 300


def test_a_long_prompt_stays_within_slacks_limits() -> None:
    blocks = kit.card_blocks(card(prompt="word " * 2000))
    assert all(len(b["text"]["text"]) <= 3000 for b in blocks if "text" in b)


def test_modal_fields_and_private_metadata_round_trip() -> None:
    context = kit.ModalContext(channel_id="C1", thread_ts="1.2", file_ids=("F1",))
    catalog = shipped_catalog()
    view = kit.video_modal(catalog.enabled(("openai",)), context, default_model="sora-2", prompt="a cat")
    assert view["callback_id"] == kit.VIDEO_VIEW and len(view["private_metadata"]) < 3000
    assert kit.ModalContext.load(view["private_metadata"]) == context
    assert kit.ModalContext.load("not json") == kit.ModalContext(channel_id="")

    def options(view: dict, block_id: str) -> list[str]:
        return [
            o["value"] for o in next(b for b in view["blocks"] if b.get("block_id") == block_id)["element"]["options"]
        ]

    assert options(view, "model") == ["sora-2", "sora-2-pro"]
    assert options(view, "size") == ["1280x720", "720x1280"]
    assert options(view, "seconds") == ["4", "8", "12"]
    assert options(view, "audio") == ["on", "off"]
    model = next(b for b in view["blocks"] if b.get("block_id") == "model")["element"]
    assert model["initial_option"]["value"] == "sora-2" and "from $0.10/s" in model["initial_option"]["text"]["text"]
    # The form grows with the catalog: every served model, its sizes and lengths; empty selects mean the defaults.
    everything = kit.video_modal(catalog.enabled(("local",)), context, default_model="sora-2")
    assert options(everything, "model") == list(catalog.names)
    assert "1920x1080" in options(everything, "size") and "480x480" in options(everything, "size")
    assert options(everything, "seconds") == [str(n) for n in range(4, 16)]
    size = next(b for b in everything["blocks"] if b.get("block_id") == "size")
    assert size["optional"] is True and "initial_option" not in size["element"]
    no_file = kit.video_modal(catalog.enabled(("local",)), context, file_input=False, image_note="from *x.png*")
    assert "file_input" not in str(no_file) and "from *x.png*" in str(no_file)


@pytest.mark.parametrize(
    "prompt",
    [
        "a boat --pro",
        "budget",
        'a "quoted" word --seconds 8',
        "help me",
        "cancel everything",
        'a “curly” and "straight" boat',
    ],
)
def test_prompts_typed_in_a_form_stay_whole(prompt: str) -> None:
    command = parse(kit.literal_prompt(prompt) + " --model sora-2 --seconds 4")
    assert isinstance(command, VideoCommand)
    if "“" not in prompt or '"' not in prompt:
        assert command.prompt == prompt
    assert command.seconds == 4


def test_view_values_reads_text_selects_and_files() -> None:
    view = {
        "state": {
            "values": {
                "prompt": {"value": {"type": "plain_text_input", "value": "a kite"}},
                "model": {"value": {"type": "static_select", "selected_option": {"value": "sora-2-pro"}}},
                "image": {"value": {"type": "file_input", "files": [{"id": "F1"}]}},
                "odd": {"other": {"type": "plain_text_input", "value": None}},
            }
        }
    }
    assert kit.view_values(view) == {"prompt": "a kite", "model": "sora-2-pro", "image": [{"id": "F1"}], "odd": None}
    assert kit.view_values({}) == {}


def test_slack_text_is_read_as_typed_and_mentions_resolve() -> None:
    raw = "a &lt;cat&gt; &amp; <#C123|general> <https://example.com|site> <!here> by <@U1|alice> and <@U2>"
    assert normalize_text(raw) == "a <cat> & #general site @here by <@U1|alice> and <@U2>"
    assert mentions_in(raw) == {"<@U1|alice>": "U1", "<@U1>": "U1", "@alice": "U1", "<@U2>": "U2"}


# --- file downloads -----------------------------------------------------------------------------------


def test_only_slacks_file_host_and_the_api_host_are_trusted() -> None:
    files = SlackFiles(token="xoxb-1", api_url="http://127.0.0.1:8123/api/")
    assert files.trusted("https://files.slack.com/files-pri/T1-F1/download/x.png")
    assert files.trusted("http://127.0.0.1:8123/files-pri/T1-F1/x.png")
    for url in (
        "http://files.slack.com/files-pri/x.png",
        "https://files.slack.com.evil.com/x.png",
        "https://evil.com/files.slack.com/x.png",
        "https://user@files.slack.com/x.png",
        "https://files.slack.com:8443/x.png",
        "http://127.0.0.1:9999/x.png",
        "https://127.0.0.1:8123/x",
        "http://localhost:8123/x.png",
        "ftp://files.slack.com/x",
        "",
        "not a url",
    ):
        assert not files.trusted(url), url
    assert "xoxb" not in repr(files)
    default = SlackFiles(token="xoxb-1", api_url="https://slack.com/api/")
    assert not default.trusted("https://slack.com.evil.com/x") and default.trusted("https://slack.com/x")


async def test_download_sends_the_token_and_checks_what_comes_back(fake: FakeSlack) -> None:
    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    files = SlackFiles(token=fake.bot_token, api_url=fake.api_url, client=client, max_bytes=1024 * 1024)
    try:
        data = image_bytes("PNG", 200, 100)
        got = await files.download(fake.add_file(data, "ok.png"))
        assert got.data == data and got.filename == "ok.png" and got.content_type == "image/png"
        assert fake.downloads[-1]["authorized"]

        # An event that only names the file: files.info fills in the URL.
        stub = {"id": fake.add_file(data, "stub.png")["id"], "file_access": "check_file_info"}
        assert (await files.download(stub)).data == data

        # Slack's size lies: the stream is cut at the cap.
        big = fake.add_file(b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * 1024 * 1024), "big.png", size=1000)
        with pytest.raises(SlackFileRefused, match="larger than 1 MB"):
            await files.download(big)

        # A redirect off Slack's hosts is not followed with the token.
        before = len(fake.downloads)
        fake.redirect_files_to = "http://localhost:1/steal"
        with pytest.raises(SlackFileRefused, match="another server"):
            await files.download(fake.add_file(data, "moved.png"))
        fake.redirect_files_to = None
        assert len(fake.downloads) == before + 1

        # The HTML sign-in page Slack serves without files:read.
        fake.files_read_scope = False
        with pytest.raises(SlackFileRefused, match="files:read"):
            await files.download(fake.add_file(data, "page.png"))
        fake.files_read_scope = True

        for hidden in ({"mode": "tombstone"}, {"mode": "external"}, {"mimetype": "video/mp4"}, {"size": 10**9}):
            with pytest.raises(SlackFileRefused):
                await files.download({**fake.add_file(data, "x.png"), **hidden})
        with pytest.raises(SlackFileRefused, match="find that file"):
            await files.download({"id": "F_MISSING"})
    finally:
        await files.close()


# --- delivery -----------------------------------------------------------------------------------------


async def test_delivery_is_a_delivery_and_maps_slack_errors_to_sentences(fake: FakeSlack) -> None:
    delivery = SlackDelivery(AsyncWebClient(token=fake.bot_token, base_url=fake.api_url))
    assert isinstance(delivery, Delivery) and delivery.platform == "slack"
    ref = await delivery.post_card(job(), card())
    assert fake.message("C_GENERAL", ref) is not None

    cases = [
        ("not_in_channel", 200, "invite me with /invite @reelbot", False),
        ("channel_not_found", 200, "can't see this channel", False),
        ("is_archived", 200, "archived", False),
        ("ratelimited", 429, "rate-limiting", True),
        ("internal_error", 500, "internal error", True),
        ("something_new", 200, "something_new", True),
    ]
    for error, status, words, retryable in cases:
        fake.fail("chat.postMessage", error, status=status, retry_after=1 if status == 429 else None)
        with pytest.raises(DeliveryError) as raised:
            await delivery.post_card(job(), card())
        assert words in raised.value.user_message and raised.value.retryable is retryable, error

    fake.fail("files.completeUploadExternal", "file_upload_size_restricted")
    clip = Path(__file__)  # any bytes will do for the fake
    with pytest.raises(DeliveryError, match="bigger than this workspace allows") as raised:
        await delivery.post_clip(job(card_ref=ref), clip, "caption")
    assert raised.value.retryable is False

    # A clip that is already in the thread is found (so it is not posted twice), across pages.
    the_job = job(card_ref=ref)
    assert await delivery.find_clip(the_job) is None
    for i in range(5):
        await delivery.notify(the_job, f"note {i}")
    file_id = await delivery.post_clip(the_job, clip, "caption")
    fake.replies_page_size = 2
    assert await delivery.find_clip(the_job) == file_id
    assert any(call.get("cursor") for call in fake.calls_to("conversations.replies"))
    assert await delivery.find_clip(job(id="other", card_ref=ref)) is None

    # Deleting a clip deletes the file; a card, the message; gone already is fine.
    await delivery.delete_message(the_job, file_id)
    await delivery.delete_message(the_job, file_id)
    await delivery.delete_message(the_job, ref)
    assert fake.message("C_GENERAL", ref) is None


async def test_find_clip_also_finds_an_upload_whose_message_is_not_in_the_thread(fake: FakeSlack) -> None:
    delivery = SlackDelivery(AsyncWebClient(token=fake.bot_token, base_url=fake.api_url))
    the_job = job(card_ref=await delivery.post_card(job(), card()), created_at=fake.clock())
    file_id = await delivery.post_clip(the_job, Path(__file__), "caption")
    fake.channels["C_GENERAL"] = [m for m in fake.channels["C_GENERAL"] if not m.get("files")]
    assert await delivery.find_clip(the_job) == file_id


async def test_notify_falls_back_to_ephemeral_then_dm(fake: FakeSlack) -> None:
    delivery = SlackDelivery(AsyncWebClient(token=fake.bot_token, base_url=fake.api_url))
    the_job = job(card_ref="1.000001")
    fake.fail("chat.postMessage", "not_in_channel")
    await delivery.notify(the_job, "hello")
    assert fake.ephemerals[-1]["text"] == "hello" and fake.ephemerals[-1]["user"] == "U_ALICE"
    fake.kick("C_GENERAL")
    await delivery.notify(the_job, "by dm")
    assert fake.channels["DU_ALICE"][-1]["text"] == "by dm"
    fake.fail("chat.postMessage", "ratelimited", status=429, retry_after=1)
    with pytest.raises(DeliveryError):
        await delivery.notify(job(channel_id="C_OTHER"), "limited")


async def test_direct_message_buttons_carry_their_action_ids(fake: FakeSlack) -> None:
    delivery = SlackDelivery(AsyncWebClient(token=fake.bot_token, base_url=fake.api_url))
    ts = await delivery.direct_message(
        "T1", "U_BOB", "May Alice use your cameo?", (("cameo_approve:r1", "Approve once"), ("cameo_deny:r1", "Deny"))
    )
    assert ts
    assert fake.button("DU_BOB", ts, "cameo_approve:r1")["value"] == "cameo_approve:r1"
    assert fake.button("DU_BOB", ts, "cameo_deny:r1") is not None


# --- manifest and configuration -------------------------------------------------------------------------


def test_manifest_declares_every_scope_event_command_and_shortcut_used() -> None:
    text = MANIFEST.read_text()
    scopes = set(re.findall(r"^\s+- ([a-z_.]+:[a-z_.]+|commands)\b", text, re.M))
    needed = {
        "app_mentions:read",
        "channels:history",
        "groups:history",
        "im:history",
        "mpim:history",
        "chat:write",
        "commands",
        "files:read",
        "files:write",
        "im:write",
        "users:read",
    }
    assert needed <= scopes, needed - scopes
    events = set(re.findall(r"^\s+- (app_mention|message\.\w+)\s*$", text, re.M))
    assert {"app_mention", "message.channels", "message.groups", "message.im", "message.mpim"} <= events
    assert "command: /video" in text and "should_escape: true" in text
    assert f"callback_id: {kit.SHORTCUT}" in text and "type: message" in text
    assert "socket_mode_enabled: true" in text and "is_enabled: true" in text


def test_manifest_is_valid_yaml() -> None:
    yaml = pytest.importorskip("yaml")
    needed = {"app_mentions:read", "chat:write", "commands", "files:read", "files:write", "im:write", "users:read"}
    parsed = yaml.safe_load(MANIFEST.read_text())
    assert parsed["features"]["shortcuts"][0]["callback_id"] == kit.SHORTCUT
    assert set(parsed["oauth_config"]["scopes"]["bot"]) >= needed


async def test_from_settings_picks_the_mode_and_never_shows_secrets(
    make_settings: Callable[..., Settings], app
) -> None:
    socket = SlackAdapter.from_settings(app.bot, make_settings(SLACK_BOT_TOKEN="xoxb-a", SLACK_APP_TOKEN="xapp-b"))
    assert socket.mode == "socket" and socket.platform == "slack"
    http = SlackAdapter.from_settings(
        app.bot, make_settings(SLACK_BOT_TOKEN="xoxb-a", SLACK_SIGNING_SECRET="s3cr3t!", REELBOT_HTTP_PORT="3456")
    )
    assert http.mode == "http" and http.http_port == 3456 and http.host == "0.0.0.0"
    assert "xoxb" not in repr(http) and "s3cr3t" not in repr(http)
    assert app.bot.deliveries["slack"] is http.delivery
    with pytest.raises(ValueError, match="SLACK_APP_TOKEN"):
        SlackAdapter.from_settings(app.bot, make_settings(SLACK_BOT_TOKEN="xoxb-a"))
