"""Cameo registrations checked against the platform's profile photo (issue 12, item 9, the platform part).

The real Slack adapter (Bolt, ``AsyncWebClient``) and the real Discord adapter (discord.py) run
against the fakes on 127.0.0.1; the profile photo comes from ``users.info`` and the fake's private
file route on Slack, and from ``GET /users/{id}`` and the fake CDN's ``/avatars/...`` on Discord.
Faces are scikit-image's public-domain astronaut (Eileen Collins) and cameraman, two different
people; face embedding costs seconds per picture, so each test registers at most once or twice.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage
from aiohttp import web
from discord.gateway import DiscordWebSocket
from discord.http import Route
from PIL import Image

from adapters.discord.profile import CDN_URL, DiscordProfilePhotos, cdn_for
from adapters.slack.profile import SlackProfilePhotos
from bot.config import Settings
from bot.consent.identity import BY_PROFILE
from bot.consent.registration import NOT_PROFILE
from bot.jobs import Requester
from tests.fakes.discord_api import DiscordHarness, FakeDiscord
from tests.fakes.slack_api import TEAM_ID, FakeSlack, SlackBot, slack_env, start_slack_bot

pytestmark = pytest.mark.timeout(120)

ALICE, BOB, ADMIN = "U_ALICE", "U_BOB", "U_ADMIN"
SAMPLES = Path(skimage.__file__).parent / "data"
FACE = (SAMPLES / "astronaut.png").read_bytes()


def _pixels(name: str) -> np.ndarray:
    """A scikit-image sample's pixels, as ``skimage.data`` gives them (its reader takes ~0.3 s to load, in every
    xdist worker that collects this module)."""
    with Image.open(SAMPLES / name) as image:
        return np.asarray(image)


def _encoded(array: np.ndarray, kind: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).resize((360, 360)).save(out, kind)
    return out.getvalue()


# The same person as FACE in another file: mirrored and smaller, as a profile picture would be.
SAME_FACE_PNG = _encoded(np.ascontiguousarray(_pixels("astronaut.png")[:, ::-1]), "PNG")
OTHER_PERSON = _encoded(_pixels("camera.png"), "PNG")
TOO_BIG = b"\x89PNG\r\n\x1a\n" + bytes(6 * 1024 * 1024)  # a PNG's magic bytes, then more than any cap


class Foreign:
    """Another server on 127.0.0.1 (another origin): records every request and its headers."""

    def __init__(self) -> None:
        self.hits: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.hits.append(dict(request.headers))
        return web.Response(body=SAME_FACE_PNG, content_type="image/png")

    async def __aenter__(self) -> Foreign:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    broken = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert broken == [], broken


# --- Slack ------------------------------------------------------------------------------------------------------


@pytest.fixture
async def slack(make_settings: Callable[..., Settings]) -> AsyncIterator[SlackBot]:
    async with FakeSlack(admins={ADMIN}) as fake:
        bot = await start_slack_bot(fake, make_settings(REELBOT_ADMIN_IDS=ADMIN, **slack_env(fake, "http")))
        try:
            yield bot
        finally:
            await bot.stop()


async def slack_answer(slack: SlackBot, user: str, since: int) -> str:
    await slack.settle()
    fake = slack.fake
    texts = [e["text"] for e in fake.ephemerals[since:] if e["user"] == user]
    assert texts, f"no answer for {user}"
    return texts[-1]


async def slack_register(slack: SlackBot, user: str, picture: bytes) -> str:
    """Registers by mentioning the bot with a picture; returns what the person saw."""
    fake = slack.fake
    since = len(fake.ephemerals)
    file = fake.add_file(picture, "me.png", user=user)
    post = fake.user_post(f"<@{fake.bot_user_id}> cameo register", files=[file], user=user)
    await fake.event(fake.mention_event(post))
    return await slack_answer(slack, user, since)


async def slack_command(slack: SlackBot, user: str, text: str) -> str:
    fake = slack.fake
    before = len(fake.responses)
    ack = await fake.command(text, user=user)
    assert ack.status == 200
    await slack.settle()
    answers = [r["text"] for r in fake.responses[before:] if r.get("_user") == user]
    assert answers, f"no answer to {text!r}"
    return answers[-1]


def slack_source(slack: SlackBot) -> SlackProfilePhotos:
    source = slack.app.bot.cameos.profile_photos["slack"]
    assert isinstance(source, SlackProfilePhotos)
    return source


def slack_person(user: str) -> Requester:
    return Requester(platform="slack", workspace_id=TEAM_ID, user_id=user, display_name=f"<@{user}>")


async def test_slack_a_registration_matching_the_profile_photo_is_verified_at_once(slack: SlackBot) -> None:
    fake = slack.fake
    fake.set_profile_photo(ALICE, SAME_FACE_PNG)
    assert "consent" in (await slack_register(slack, ALICE, FACE)).lower()
    confirmed = await slack_command(slack, ALICE, "cameo confirm")
    assert confirmed.startswith("Your cameo is active") and "admin must verify" not in confirmed
    cameo = await slack.app.bot.cameos.store.get(f"slack:{TEAM_ID}:{ALICE}")
    assert cameo.status == "active" and cameo.verified_by == BY_PROFILE
    assert "waits for a workspace admin" not in await slack_command(slack, ALICE, "cameo status")
    # Usable at once, without an admin: the clip is queued.
    queued = await slack_command(slack, ALICE, f"me on the moon --model veo-3.1 --seconds 4 --cameo <@{ALICE}|alice>")
    assert "queued" in queued, queued
    assert [job.options.cameo for job in await slack.jobs(ALICE)] == [f"slack:{TEAM_ID}:{ALICE}"]
    # The profile picture was fetched from the configured API host, with the token (Slack's private file rules).
    profile_id = next(fid for fid, f in fake.files.items() if f["name"] == f"{ALICE}_512.png")
    assert [d["authorized"] for d in fake.downloads if d["file_id"] == profile_id] == [True]
    assert not [m for m in fake.messages_in(fake.dm_channel(ADMIN)) if "cameo_verify" in str(m.get("blocks"))]


async def test_slack_a_face_unlike_the_profile_photo_is_refused(slack: SlackBot) -> None:
    slack.fake.set_profile_photo(BOB, FACE)
    refused = await slack_register(slack, BOB, OTHER_PERSON)
    assert refused == NOT_PROFILE
    assert await slack.app.bot.cameos.store.get(f"slack:{TEAM_ID}:{BOB}") is None
    assert await slack.jobs(BOB) == []


async def test_slack_without_a_profile_photo_an_admin_verifies(slack: SlackBot) -> None:
    fake = slack.fake
    # Slack's generated default picture shows no face: it is not even fetched.
    fake.set_profile_photo(ALICE, SAME_FACE_PNG, custom=False)
    await slack_register(slack, ALICE, FACE)
    confirmed = await slack_command(slack, ALICE, "cameo confirm")
    assert "a workspace admin must verify" in confirmed
    cameo = await slack.app.bot.cameos.store.get(f"slack:{TEAM_ID}:{ALICE}")
    assert cameo.verified_by is None
    profile_id = next(fid for fid, f in fake.files.items() if f["name"] == f"{ALICE}_512.png")
    assert [d for d in fake.downloads if d["file_id"] == profile_id] == []
    refused = await slack_command(slack, ALICE, f"me on the moon --model veo-3.1 --seconds 4 --cameo <@{ALICE}|alice>")
    assert "waiting for a workspace admin to verify" in refused
    assert any("cameo_verify" in str(m.get("blocks")) for m in fake.messages_in(fake.dm_channel(ADMIN)))


async def test_slack_a_failing_profile_fetch_falls_back_to_an_admin_without_a_traceback(
    slack: SlackBot, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake = slack.fake
    fake.set_profile_photo(ALICE, url=f"{fake.url}/files-pri/{TEAM_ID}-F99999999/gone.png")  # 404
    assert "consent" in (await slack_register(slack, ALICE, FACE)).lower()
    assert "a workspace admin must verify" in await slack_command(slack, ALICE, "cameo confirm")
    assert (await slack.app.bot.cameos.store.get(f"slack:{TEAM_ID}:{ALICE}")).verified_by is None
    assert any("HTTP 404" in r.getMessage() for r in caplog.records)
    # users.info itself failing (a missing users:read scope) is no photo either.
    fake.fail("users.info", "missing_scope")
    assert await slack_source(slack).profile_photo(slack_person(ALICE)) is None
    no_tracebacks(caplog)
    assert fake.bot_token not in caplog.text


async def test_slack_the_profile_fetch_keeps_the_token_home_and_is_size_capped(
    slack: SlackBot, caplog: pytest.LogCaptureFixture
) -> None:
    fake, source = slack.fake, slack_source(slack)
    async with Foreign() as foreign:
        # A profile picture on another host is not fetched at all (with or without the token).
        fake.set_profile_photo(ALICE, url=f"{foreign.url}/avatar_512.png")
        assert await source.profile_photo(slack_person(ALICE)) is None
        # Slack's own file route redirecting elsewhere: the redirect is not followed.
        fake.set_profile_photo(BOB, SAME_FACE_PNG)
        fake.redirect_files_to = f"{foreign.url}/elsewhere.png"
        assert await source.profile_photo(slack_person(BOB)) is None
        fake.redirect_files_to = None
        assert foreign.hits == []
        # The same picture from the trusted route is fetched.
        assert await source.profile_photo(slack_person(BOB)) == SAME_FACE_PNG
    # Bigger than the cap: refused while streaming; not a picture (a sign-in page): refused.
    fake.set_profile_photo(ALICE, TOO_BIG)
    assert await source.profile_photo(slack_person(ALICE)) is None
    assert any("cap" in r.getMessage() for r in caplog.records)
    fake.set_profile_photo(ALICE, b"<!DOCTYPE html><html>Sign in</html>")
    assert await source.profile_photo(slack_person(ALICE)) is None
    # image_original is used when there is no image_512; another platform's person has no Slack photo.
    fake.set_profile_photo(ALICE, SAME_FACE_PNG, original=True)
    assert await source.profile_photo(slack_person(ALICE)) == SAME_FACE_PNG
    other = Requester(platform="discord", workspace_id="1", user_id=ALICE, display_name="x")
    assert await source.profile_photo(other) is None
    no_tracebacks(caplog)
    assert fake.bot_token not in caplog.text and fake.bot_token not in repr(source)


def test_slack_token_and_host_rules() -> None:
    from adapters.slack.files import SlackFiles

    files = SlackFiles(token="xoxb-t", api_url="https://slack.com/api/")
    source = SlackProfilePhotos(client=None, files=files, token="xoxb-t")  # type: ignore[arg-type]
    assert source.allowed("https://avatars.slack-edge.com/2024-01-01/1_abc_512.png")
    assert source.allowed("https://files.slack.com/files-pri/T-F/me.png")
    for url in (
        "http://avatars.slack-edge.com/x.png",  # not https
        "https://avatars.slack-edge.com:8443/x.png",
        "https://secure.gravatar.com/avatar/abc.png",
        "https://avatars.slack-edge.com.evil.example/x.png",
        "https://user@avatars.slack-edge.com/x.png",
        "https://[::1/x.png",
    ):
        assert not source.allowed(url), url
    # The token goes only where SlackFiles trusts it: the avatar CDN gets none.
    assert not files.trusted("https://avatars.slack-edge.com/2024-01-01/1_abc_512.png")


# --- Discord ----------------------------------------------------------------------------------------------------


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    saved = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
    server = FakeDiscord()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved


@pytest.fixture
async def discord(discord_fake: FakeDiscord, make_settings: Callable[..., Settings]) -> AsyncIterator[DiscordHarness]:
    harness = DiscordHarness(discord_fake, make_settings, REELBOT_ADMIN_IDS=str(discord_fake.admin.id))
    await harness.start(worker=False)
    try:
        yield harness
    finally:
        await harness.stop()
    discord_fake.assert_interactions_answered_in_time()


async def discord_register(fake: FakeDiscord, user: Any, picture: bytes) -> tuple[str, dict[str, Any]]:
    rec = await fake.slash("video cameo register", {"file": fake.attachment(picture)}, user=user)
    text = await rec.reply(within=60)
    return text, rec.followups[-1]


async def discord_confirm(fake: FakeDiscord, user: Any, answer: dict[str, Any]) -> str:
    fake.messages[fake.channel_id].append(answer)  # the ephemeral message, as the clicking client sees it
    press = await fake.click(fake.channel_id, answer["id"], f"reelbot:cameo:{fake.guild_id}:cameo_confirm", user=user)
    return await press.reply(within=30)


def discord_source(harness: DiscordHarness) -> DiscordProfilePhotos:
    source = harness.app.bot.cameos.profile_photos["discord"]
    assert isinstance(source, DiscordProfilePhotos)
    return source


def discord_person(fake: FakeDiscord, user: Any) -> Requester:
    return Requester(platform="discord", workspace_id=str(fake.guild_id), user_id=str(user.id), display_name="x")


def avatar_hits(fake: FakeDiscord) -> list[tuple[str, dict[str, str]]]:
    return [(path, headers) for path, headers in fake.cdn_hits if path.startswith("avatars/")]


async def test_discord_a_registration_matching_the_avatar_is_verified_at_once(
    discord: DiscordHarness, discord_fake: FakeDiscord
) -> None:
    fake = discord_fake
    avatar = fake.set_avatar(fake.alice, SAME_FACE_PNG)
    text, answer = await discord_register(fake, fake.alice, FACE)
    assert "consent" in text.lower()
    confirmed = await discord_confirm(fake, fake.alice, answer)
    assert confirmed.startswith("Your cameo is active") and "admin must verify" not in confirmed
    cameo = await discord.app.bot.cameos.store.get(f"discord:{fake.guild_id}:{fake.alice.id}")
    assert cameo.verified_by == BY_PROFILE
    rec = await fake.slash("video create", {"prompt": "me on the moon --model veo-3.1", "cameo": fake.alice})
    assert "queued" in await rec.reply(within=30)
    # The avatar came from the CDN route, at 512 px, without the bot token.
    [(path, headers)] = avatar_hits(fake)
    assert path == f"avatars/{fake.alice.id}/{avatar}" and "Authorization" not in headers
    assert fake.user_lookups == [fake.alice.id]
    assert not fake.dms.get(fake.admin.id)  # no admin was asked


async def test_discord_a_face_unlike_the_avatar_is_refused(discord: DiscordHarness, discord_fake: FakeDiscord) -> None:
    fake = discord_fake
    fake.set_avatar(fake.bob, FACE)
    text, _ = await discord_register(fake, fake.bob, OTHER_PERSON)
    assert text == NOT_PROFILE
    assert await discord.app.bot.cameos.store.get(f"discord:{fake.guild_id}:{fake.bob.id}") is None


async def test_discord_without_an_avatar_or_when_the_cdn_fails_an_admin_verifies(
    discord: DiscordHarness, discord_fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake, source = discord_fake, discord_source(discord)
    # No avatar: no CDN request at all.
    assert await source.profile_photo(discord_person(fake, fake.bob)) is None
    assert avatar_hits(fake) == []
    # An avatar the CDN fails to serve: the registration still works, an admin verifies it.
    fake.set_avatar(fake.alice, SAME_FACE_PNG)
    fake.avatar_status = 503
    text, answer = await discord_register(fake, fake.alice, FACE)
    assert "consent" in text.lower()
    confirmed = await discord_confirm(fake, fake.alice, answer)
    assert "a workspace admin must verify" in confirmed
    cameo = await discord.app.bot.cameos.store.get(f"discord:{fake.guild_id}:{fake.alice.id}")
    assert cameo.verified_by is None
    assert len(avatar_hits(fake)) == 1
    await fake.wait_for(lambda: fake.dms.get(fake.admin.id), within=10, what="the admin's verify request")
    # An unknown user (404 from GET /users/{id}) is no photo either.
    ghost = Requester(platform="discord", workspace_id="1", user_id="12345", display_name="x")
    assert await source.profile_photo(ghost) is None
    no_tracebacks(caplog)
    assert fake.token not in caplog.text


async def test_discord_the_avatar_fetch_keeps_the_token_home_and_is_size_capped(
    discord: DiscordHarness, discord_fake: FakeDiscord, caplog: pytest.LogCaptureFixture
) -> None:
    fake, source = discord_fake, discord_source(discord)
    person = discord_person(fake, fake.alice)
    fake.set_avatar(fake.alice, SAME_FACE_PNG)
    assert await source.profile_photo(person) == SAME_FACE_PNG
    async with Foreign() as foreign:
        fake.avatar_redirect = f"{foreign.url}/avatar.png"
        assert await source.profile_photo(person) is None
        fake.avatar_redirect = None
        assert foreign.hits == []
    fake.set_avatar(fake.alice, TOO_BIG)
    assert await source.profile_photo(person) is None
    assert any("larger than" in r.getMessage() for r in caplog.records)
    fake.set_avatar(fake.alice, b"<html>not a picture</html>")
    assert await source.profile_photo(person) is None
    assert all("Authorization" not in headers for _, headers in avatar_hits(fake))
    assert len(avatar_hits(fake)) == 4
    no_tracebacks(caplog)
    assert fake.token not in caplog.text


def test_discord_avatar_urls_are_on_discords_cdn() -> None:
    assert cdn_for("https://discord.com/api/v10") == CDN_URL == cdn_for("https://discord.com/api/v10/")
    assert cdn_for("http://127.0.0.1:8080/api/v10") == "http://127.0.0.1:8080"
    source = DiscordProfilePhotos(client=None)  # type: ignore[arg-type]
    url = source.avatar_url(80351110224678912, "8342729096ea3675442027381ff50dfe")
    assert url == "https://cdn.discordapp.com/avatars/80351110224678912/8342729096ea3675442027381ff50dfe.png?size=512"
    assert source.fetcher.trusted(url)
    assert not source.fetcher.trusted(url.replace("https://", "http://"))
    assert not source.fetcher.trusted("https://cdn.discordapp.com.evil.example/avatars/1/x.png")
    assert asyncio.run(source.profile_photo(Requester("slack", "T", "123", "x"))) is None
