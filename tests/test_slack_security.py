"""Slack security: request signatures, no secrets in logs, and the token only sent to Slack's hosts."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlencode

import aiohttp
import pytest

from bot.config import Settings
from bot.jobs import JobState
from tests.fakes.slack_api import FakeSlack, SlackBot, sign, slack_env, start_slack_bot
from tests.media_factory import image_bytes

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    async with FakeSlack() as server:
        yield server


@pytest.fixture
async def slack(fake: FakeSlack, make_settings: Callable[..., Settings]) -> AsyncIterator[SlackBot]:
    bot = await start_slack_bot(fake, make_settings(**slack_env(fake, "http")), worker=False)
    try:
        yield bot
    finally:
        await bot.stop()


async def test_bad_missing_and_stale_signatures_are_refused(slack: SlackBot, fake: FakeSlack) -> None:
    body = urlencode(fake.command_form("a paper boat --seconds 4")).encode()
    kind = "application/x-www-form-urlencoded"
    now = int(time.time())

    forged = await fake.post_signed(body, kind, signature=sign("not-the-secret", str(now), body))
    assert forged.status == 401
    missing = await fake.post_signed(body, kind, signature="")
    assert missing.status == 401
    stale_stamp = now - 10 * 60
    stale = await fake.post_signed(
        body, kind, timestamp=stale_stamp, signature=sign(fake.signing_secret, str(stale_stamp), body)
    )
    assert stale.status == 401
    future_stamp = now + 10 * 60
    future = await fake.post_signed(
        body, kind, timestamp=future_stamp, signature=sign(fake.signing_secret, str(future_stamp), body)
    )
    assert future.status == 401
    # A body changed after signing (the signature covers the raw bytes).
    stamp = str(now)
    signature = sign(fake.signing_secret, stamp, body)
    tampered = await fake.post_signed(body.replace(b"U_ALICE", b"U_ADMIN"), kind, signature=signature, timestamp=now)
    assert tampered.status == 401
    # An event with a forged signature is refused too.
    event = json.dumps(
        fake.event_body(
            {"type": "app_mention", "text": "hi", "user": "U_ALICE", "channel": "C_GENERAL", "ts": "1.000001"}
        )
    ).encode()
    assert (await fake.post_signed(event, "application/json", signature="v0=" + "0" * 64)).status == 401

    await slack.settle()
    assert await slack.jobs() == []
    assert fake.calls_to("chat.postMessage") == [] and fake.responses == []

    # The same request, correctly signed, is accepted.
    good = await fake.post_signed(body, kind)
    assert good.status == 200
    await slack.settle()
    assert len(await slack.jobs()) == 1


@pytest.mark.parametrize("mode", ["http", "socket"])
async def test_no_token_or_signing_secret_in_any_log_line(
    fake: FakeSlack, mode: str, make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("slack_bolt", "slack_sdk", "adapters", "bot", "aiohttp"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        slack = await start_slack_bot(fake, make_settings(**slack_env(fake, mode)))
        try:
            file = fake.add_file(image_bytes("PNG", 320, 180), "boat.png")
            post = fake.user_post(f"<@{fake.bot_user_id}> a paper boat --seconds 4", files=[file])
            await fake.event(fake.mention_event(post))
            await fake.command("budget")
            await fake.command("a paper boat --seconds 99")
            job = await slack.only_job()
            job = await slack.delivered(job.id)
            assert job.state is JobState.DELIVERED
            fake.fail("files.completeUploadExternal", "invalid_auth")
            await fake.interact(fake.block_action("C_GENERAL", job.card_ref, "reelbot_reroll"))
            await slack.settle()
            rerolled = [j for j in await slack.jobs() if j.id != job.id]
            await slack.delivered(rerolled[0].id)
        finally:
            await slack.stop()
    finally:
        for name in ("slack_bolt", "slack_sdk", "adapters", "bot", "aiohttp"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    assert len(caplog.records) > 20  # debug logging really was on
    everything = caplog.text + "\n".join(str(r.args) for r in caplog.records)
    for secret in (fake.bot_token, fake.app_token, fake.signing_secret):
        assert secret not in everything
    assert "xoxb-" not in everything and "xapp-" not in everything


async def test_url_verification_and_health_check(slack: SlackBot, fake: FakeSlack) -> None:
    """What Slack sends when the Request URL is pasted into the app config (HTTP mode)."""
    body = json.dumps(
        {
            "token": "unused",
            "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
            "type": "url_verification",
        }
    ).encode()
    ack = await fake.post_signed(body, "application/json")
    assert ack.status == 200 and "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P" in ack.body
    unsigned = await fake.post_signed(body, "application/json", signature="v0=bad")
    assert unsigned.status == 401
    async with aiohttp.ClientSession() as session:
        async with session.get(slack.adapter.url.replace("/slack/events", "/healthz")) as response:
            assert response.status == 200 and (await response.json())["ok"] is True
