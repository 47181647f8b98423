"""Unit tests for the Discord adapter's pieces: command text, attachment checks, errors, views, redaction."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import discord
import pytest

from adapters.discord.adapter import _chunks, _Redact, job_text, video_text
from adapters.discord.attachments import AttachmentFetcher, AttachmentInfo, AttachmentRefused, origin_of
from adapters.discord.delivery import (
    DEFAULT_UPLOAD_LIMIT,
    MISSING_ACCESS,
    DiscordDelivery,
    delivery_error,
    lower_limit,
    progress_bar,
    split_ref,
)
from adapters.discord.views import ActionButton, JobButton, action_buttons, card_buttons, modal_value
from bot.commands import CancelCommand, CommandError, RetryCommand, VideoCommand, parse
from tests.fakes.discord_api import FakeDiscord
from tests.media_factory import image_bytes

MiB = 1024 * 1024


def test_discord_py_is_in_the_range_the_fake_was_built_against():
    # tests/fakes/discord_api.py relies on discord.py's login, gateway handshake and Route.BASE:
    # a version outside the pinned range (pyproject.toml: discord.py>=2.7,<2.9) must fail loudly here.
    assert (2, 7) <= (discord.version_info.major, discord.version_info.minor) < (2, 9)


# --- the shared command text ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "options", "expected"),
    [
        ("a cat --pro", {"seconds": 8, "size": "720x1280"}, VideoCommand("a cat", "sora-2-pro", "720x1280", 8)),
        ("a cat", {"model": "veo-3.1", "aspect": "9:16"}, VideoCommand("a cat", "veo-3.1", aspect="9:16")),
        ("jobs that never end", {}, VideoCommand("jobs that never end")),
        ("Help me fly --portrait", {}, VideoCommand("Help me fly", aspect="9:16")),
        ('"--pro" is a word', {}, VideoCommand("--pro is a word")),
        (
            "a cat",
            {"resolution": "1080p", "audio": False, "seed": 7, "negative": 'no "text"'},
            VideoCommand("a cat", resolution="1080p", audio=False, seed=7, negative="no 'text'"),
        ),
        ("a cat", {"audio": True}, VideoCommand("a cat", audio=True)),
    ],
)
def test_options_become_the_shared_command_text(prompt, options, expected):
    assert parse(video_text(prompt, **options)) == expected


def test_an_option_and_the_same_flag_get_the_cores_message():
    with pytest.raises(CommandError, match="--seconds is given more than once"):
        parse(video_text("a dog --seconds 8", seconds=4))


def test_cameo_option_is_a_mention():
    command = parse(video_text("us dancing", cameo="<@123456789012345678>"))
    assert command.cameo == "<@123456789012345678>"


def test_long_answers_are_split_into_discord_messages():
    text = "\n".join(f"line {i} " + "x" * 90 for i in range(60))
    parts = _chunks(text)
    assert all(len(p) <= 2000 for p in parts) and "\n".join(parts) == text
    assert _chunks("short") == ["short"]
    assert all(len(p) <= 2000 for p in _chunks("y" * 4500))


# --- attachments ---------------------------------------------------------------------------------


def info(**kw) -> AttachmentInfo:
    base = {
        "filename": "frame.png",
        "content_type": "image/png",
        "size": 1000,
        "url": "https://cdn.discordapp.com/attachments/1/2/frame.png?ex=1",
    }
    return AttachmentInfo(**{**base, **kw})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"content_type": "application/pdf", "filename": "a.pdf"}, "a.pdf (application/pdf) is not a picture"),
        ({"content_type": "image/gif"}, "(image/gif) is not a picture"),
        ({"content_type": None, "filename": "movie.mp4"}, "movie.mp4 is not a picture"),
        ({"size": 21 * MiB}, "frame.png is 21 MB; attach a picture of at most 20 MB."),
        ({"url": "http://cdn.discordapp.com/attachments/1/2/frame.png"}, "not stored on Discord's CDN"),
        ({"url": "https://cdn.discordapp.com:8443/attachments/1/2/frame.png"}, "not stored on Discord's CDN"),
        ({"url": "https://cdn.discordapp.com@evil.example/x.png"}, "not stored on Discord's CDN"),
        ({"url": "https://evil.example/cdn.discordapp.com/x.png"}, "not stored on Discord's CDN"),
        ({"url": "https://discord.com/attachments/x.png"}, "not stored on Discord's CDN"),
    ],
)
def test_attachments_are_refused_before_download(override, message):
    fetcher = AttachmentFetcher(max_bytes=20 * MiB)
    with pytest.raises(AttachmentRefused, match=message.replace("(", r"\(").replace(")", r"\)")) as caught:
        fetcher.check(info(**override))
    assert str(caught.value).endswith("Nothing was charged.")


@pytest.mark.parametrize(
    "override",
    [
        {},
        {"url": "https://media.discordapp.net/attachments/1/2/frame.png?width=10"},
        {"content_type": "image/jpeg; charset=binary", "filename": "x.jpg"},
        {"content_type": None, "filename": "photo.JPEG"},
        {"content_type": "image/webp"},
    ],
)
def test_pictures_on_discords_cdn_pass_the_checks(override):
    assert AttachmentFetcher(max_bytes=20 * MiB).check(info(**override)) in ("image/png", "image/jpeg", "image/webp")


def test_a_configured_origin_is_trusted_but_only_that_one():
    fetcher = AttachmentFetcher(max_bytes=MiB, extra_origins=[origin_of("http://127.0.0.1:8123/api/v10")])
    assert fetcher.trusted("http://127.0.0.1:8123/attachments/1/2/a.png")
    assert not fetcher.trusted("http://127.0.0.1:8124/attachments/1/2/a.png")
    assert not fetcher.trusted("http://localhost:8123/attachments/1/2/a.png")


async def test_a_download_larger_than_declared_is_cut_off():
    import aiohttp

    async with FakeDiscord() as fake, aiohttp.ClientSession() as session:
        fetcher = AttachmentFetcher(max_bytes=5_000, extra_origins=[origin_of(fake.api_url)])
        fake.cdn["1/2/big.png"] = (b"\x89PNG\r\n\x1a\n" + b"0" * 20_000, "image/png")
        with pytest.raises(AttachmentRefused, match="larger than"):
            await fetcher.fetch(session, info(size=100, url=f"{fake.base}/attachments/1/2/big.png"))
        with pytest.raises(AttachmentRefused, match="HTTP 404"):
            await fetcher.fetch(session, info(url=f"{fake.base}/attachments/1/2/gone.png"))
        data = image_bytes("PNG", 32, 32)
        fake.cdn["1/2/ok.png"] = (data, "image/png")
        got = await fetcher.fetch(session, info(size=len(data), url=f"{fake.base}/attachments/1/2/ok.png"))
        assert got.data == data and got.content_type == "image/png"
        assert all("Authorization" not in headers for _, headers in fake.cdn_hits)


# --- Discord errors and limits -----------------------------------------------------------------------


def http_error(status: int, code: int, cls=discord.HTTPException) -> discord.HTTPException:
    return cls(SimpleNamespace(status=status, reason="x"), {"code": code, "message": "x"})


@pytest.mark.parametrize(
    ("error", "message", "retryable"),
    [
        (http_error(403, 50001, discord.Forbidden), MISSING_ACCESS, False),
        (http_error(403, 50013, discord.Forbidden), MISSING_ACCESS, False),
        (http_error(403, 50007, discord.Forbidden), "direct message", False),
        (http_error(413, 40005), "upload limit", False),
        (http_error(400, 50083), "archived", False),
        (http_error(404, 10003, discord.NotFound), "no longer exists", False),
        (http_error(429, 0), "rate-limiting", True),
        (http_error(503, 0, discord.DiscordServerError), "server error", True),
        (http_error(400, 50035), "error 50035", False),
        (TimeoutError(), "could not reach Discord", True),
    ],
)
def test_discord_errors_become_clear_delivery_errors(error, message, retryable):
    mapped = delivery_error(error, "upload the clip")
    assert message in mapped.user_message
    assert mapped.retryable is retryable


def test_after_a_413_the_next_boost_tier_or_less_is_tried():
    assert lower_limit(40 * MiB, 50 * MiB) == 25 * MiB
    assert lower_limit(12 * MiB, 25 * MiB) == 10 * MiB
    assert lower_limit(8 * MiB, 10 * MiB) == int(8 * MiB * 0.6)
    assert lower_limit(200_000, 10 * MiB) == 120_000


def test_upload_limit_prefers_what_the_interaction_said_then_the_guild_then_10_mib():
    guild = SimpleNamespace(filesize_limit=50 * MiB)
    client = SimpleNamespace(get_guild=lambda gid: guild if gid == 42 else None)
    delivery = DiscordDelivery(client)  # type: ignore[arg-type]
    assert delivery.upload_limit("7") == DEFAULT_UPLOAD_LIMIT
    assert delivery.upload_limit("dm") == DEFAULT_UPLOAD_LIMIT
    assert delivery.upload_limit("42") == 50 * MiB
    delivery.note_limit("42", 25 * MiB)
    assert delivery.upload_limit("42") == 25 * MiB


def test_refs():
    assert split_ref("123") == (123, 123)
    assert split_ref("5:6") == (5, 6)
    assert progress_bar(40, width=10) == "████░░░░░░ 40%"


# --- buttons and modals -------------------------------------------------------------------------------


def test_card_buttons_carry_the_job_id_and_match_the_registered_template():
    view = card_buttons("k3m9qr2x", ("reroll", "remix", "nonsense"))
    ids = [item.custom_id for item in view.children]
    assert ids == ["reelbot:reroll:k3m9qr2x", "reelbot:remix:k3m9qr2x"]
    assert all(JobButton.__discord_ui_compiled_template__.fullmatch(i) for i in ids)
    assert view.timeout is None and view.is_persistent()


def test_action_buttons_carry_the_workspace_and_skip_what_cannot_be_encoded():
    view = action_buttons(
        "123",
        (
            ("cameo_approve:ab12cd34", "Approve once"),
            ("cameo_confirm", "I consent"),
            ("cameo_deny:" + "x" * 80, "Deny"),
            ("bad action!", "?"),
        ),
    )
    ids = [item.custom_id for item in view.children]
    assert ids == ["reelbot:cameo:123:cameo_approve:ab12cd34", "reelbot:cameo:123:cameo_confirm"]
    match = ActionButton.__discord_ui_compiled_template__.fullmatch(ids[0])
    assert (match["ws"], match["action"], match["arg"]) == ("123", "cameo_approve", "ab12cd34")
    assert action_buttons("dm", (("bad action!", "?"),)) is None


def test_modal_values_are_found_in_rows_and_labels():
    rows = {
        "custom_id": "reelbot:remix-modal:x",
        "components": [{"type": 1, "components": [{"type": 4, "custom_id": "prompt", "value": "make it night"}]}],
    }
    labels = {"components": [{"type": 18, "component": {"type": 4, "custom_id": "prompt", "value": "snow"}}]}
    assert modal_value(rows) == "make it night"
    assert modal_value(labels) == "snow"
    assert modal_value({"components": []}) is None


# --- logs ------------------------------------------------------------------------------------------------


def test_tokens_are_redacted_from_discord_log_lines():
    bot_token = "MTEx" + "a" * 20 + ".GxYz12." + "b" * 30
    redact = _Redact([bot_token])
    record = logging.LogRecord(
        "discord.webhook.async_",
        logging.DEBUG,
        __file__,
        1,
        "Webhook ID %s with %s %s",
        (1, "POST", "http://x/api/v10/webhooks/123/aW50ZXJhY3Rpb246secret-token_x/messages/@original"),
        None,
    )
    redact.filter(record)
    assert record.getMessage() == "Webhook ID 1 with POST http://x/api/v10/webhooks/123/[redacted]/messages/@original"
    record = logging.LogRecord(
        "discord.gateway",
        logging.DEBUG,
        __file__,
        1,
        "Event: %s",
        ({"op": 0, "d": {"token": "aW50ZXJhY3Rpb246abc", "id": "1"}},),
        None,
    )
    redact.filter(record)
    assert "aW50ZXJhY3Rpb246abc" not in record.getMessage() and "'token': '[redacted]'" in record.getMessage()
    record = logging.LogRecord("discord.http", logging.INFO, __file__, 1, "token is %s", (bot_token,), None)
    redact.filter(record)
    assert record.getMessage() == "token is [redacted]"


@pytest.mark.parametrize("typed", ["k3m9qr2x", " `k3m9qr2x` ", "#k3m9qr2x", "k3m9 qr2x", 'k3"m9', "!!!"])
def test_cancel_and_retry_text_is_never_a_clip_request(typed):
    for verb, kind in (("cancel", CancelCommand), ("retry", RetryCommand)):
        assert isinstance(parse(job_text(verb, typed)), kind)
