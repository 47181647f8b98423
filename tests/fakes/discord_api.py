"""A fake Discord on 127.0.0.1: REST under ``/api/v10``, a gateway websocket and a CDN, on one aiohttp port.

It is just enough of Discord for the real discord.py client (the version range pinned in
pyproject.toml) to log in, connect, sync application commands, receive interactions and answer
them, post and edit channel messages with files and components, open threads and DMs, and fetch
attachments. See /work/shared/reference/platform-testing.md §2 for the protocol facts it follows.

What it enforces, so tests stay honest:

* JSON answers carry ``Content-Type: application/json`` exactly (discord.py parses nothing else).
* Bot routes need ``Authorization: Bot <token>``; the CDN and webhook routes must not get it.
* An interaction callback later than 3 s gets 404 ``10062 Unknown interaction``; a second
  callback gets 400 ``40060``. Follow-ups on an expired token get 401 ``50027``.
* A file over the guild's upload limit (the ``attachment_size_limit`` sent with interactions)
  gets 413 ``40005 Request entity too large``.
* Channels can be made forbidden (403 ``50001 Missing Access``) or thread-less.

Everything is recorded for assertions: messages per channel (threads are channels whose id is
their starter message's id), uploaded file bytes, card edits with their times, interaction
acknowledgements and follow-ups, CDN hits with their headers, command syncs.

Quick start::

    async with FakeDiscord() as fake:
        settings = make_settings(DISCORD_BOT_TOKEN=fake.token, DISCORD_API_URL=fake.api_url,
                                 DISCORD_GATEWAY_URL=fake.gateway_url)
        ...start the adapter...
        rec = await fake.slash("video create", {"prompt": "a boat", "image": fake.attachment(png)})
        text = await rec.reply()

``DiscordHarness`` (bottom of the file) wires a fake, settings, ``build_app`` and the adapter
together, with restart support, for the e2e tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

DISCORD_EPOCH_MS = 1_420_070_400_000
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
CALLBACK_DEADLINE_S = 3.0
TOKEN_LIFETIME_S = 15 * 60

# Permission bits (https://discord.com/developers/docs/topics/permissions).
MANAGE_GUILD = 1 << 5
MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31) | (1 << 38)
ADMIN_PERMISSIONS = MEMBER_PERMISSIONS | MANAGE_GUILD
BOT_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 35) | (1 << 38)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


def _json(data: Any, status: int = 200) -> web.Response:
    # Exactly "application/json": discord.py's json_or_text parses nothing else (no charset suffix).
    return web.Response(status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"})


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"message": message, "code": code}, status)


class Snowflakes:
    """Time-based, strictly increasing ids (discord.py derives creation times from them)."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        value = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(value, self._last + 1)
        return self._last


@dataclass
class FakeUser:
    id: int
    username: str
    bot: bool = False
    avatar: str | None = None  # the avatar hash (``FakeDiscord.set_avatar``); None: Discord's default picture

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        data = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.username,
            "avatar": self.avatar,
            "public_flags": 0,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass
class FakeAttachment:
    """An attachment option. ``url`` defaults to the fake's CDN, where ``data`` is served."""

    filename: str
    content_type: str | None
    data: bytes = b""
    size: int | None = None  # declared size; defaults to len(data)
    url: str | None = None


@dataclass
class UploadedFile:
    channel_id: int
    message_id: int
    filename: str
    data: bytes
    content_type: str


@dataclass
class CardEdit:
    channel_id: int
    message_id: int
    at: float
    payload: dict[str, Any]


@dataclass
class InteractionRecord:
    """One interaction the fake dispatched, and everything the bot answered to it."""

    id: int
    token: str
    type: int
    payload: dict[str, Any]
    dispatched_at: float
    acks: list[tuple[int, dict[str, Any], float]] = field(default_factory=list)  # (type, body, latency)
    followups: list[dict[str, Any]] = field(default_factory=list)
    original: dict[str, Any] | None = None
    errors: list[int] = field(default_factory=list)
    expired: bool = False
    replayed: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ack_type(self) -> int | None:
        return self.acks[0][0] if self.acks else None

    @property
    def ephemeral(self) -> bool:
        return bool(self.acks and self.acks[0][1].get("data", {}).get("flags", 0) & 64)

    def texts(self) -> list[str]:
        """Everything the user was shown in answer, oldest first."""
        out = []
        for kind, body, _ in self.acks:
            if kind in (4, 7) and body.get("data", {}).get("content"):
                out.append(body["data"]["content"])
        if self.original and self.original.get("content"):
            out.append(self.original["content"])
        out.extend(m.get("content") or "" for m in self.followups)
        return out

    async def wait_acked(self, within: float = 5.0) -> None:
        await self._wait(lambda: bool(self.acks), within)

    async def reply(self, within: float = 30.0) -> str:
        """The first real answer: an immediate message, the edited original or a follow-up.

        The bound is for liveness only (Discord allows a deferred answer 15 minutes): a picture's check can
        take seconds when eight test workers share two cores. How fast the ack comes is checked on ``acks``.
        """
        await self._wait(lambda: bool(self.texts()), within)
        return self.texts()[0]

    async def _wait(self, done: Callable[[], bool], within: float) -> None:
        async def loop() -> None:
            while not done():
                self.changed.clear()
                if done():
                    return
                await self.changed.wait()

        await asyncio.wait_for(loop(), within)


class FakeDiscord:
    """The fake. Use as ``async with FakeDiscord() as fake``; everything runs on 127.0.0.1, port 0."""

    def __init__(self, *, token: str | None = None, upload_limit: int = DEFAULT_UPLOAD_LIMIT) -> None:
        self.ids = Snowflakes()
        self.token = token or f"MTE{secrets.token_urlsafe(21)}.GfAkE1.{secrets.token_urlsafe(27)}"
        self.application_id = self.ids.next()
        self.bot = FakeUser(self.application_id, "reelbot", bot=True)
        self.owner = FakeUser(self.ids.next(), "owner")
        self.guild_id = self.ids.next()
        self.channel_id = self.ids.next()
        self.guilds: dict[int, dict[str, Any]] = {}
        self.channels: dict[int, dict[str, Any]] = {}
        self.forbidden: set[int] = set()
        self.no_threads: set[int] = set()
        self.messages: dict[int, list[dict[str, Any]]] = {}
        self.files: list[UploadedFile] = []
        self.edits: list[CardEdit] = []
        self.deleted: list[tuple[int, int]] = []
        self.rejected_uploads: list[tuple[int, str, int]] = []
        self.interactions: dict[int, InteractionRecord] = {}
        self.syncs: list[tuple[str, list[dict[str, Any]]]] = []
        self.cdn: dict[str, tuple[bytes, str]] = {}
        self.cdn_hits: list[tuple[str, dict[str, str]]] = []
        self.avatars: dict[str, tuple[bytes, str]] = {}  # "{user id}/{hash}" -> bytes, content type
        self.avatar_status: int | None = None  # the avatar route answers this status instead (failures)
        self.avatar_redirect: str | None = None  # the avatar route redirects here (the host check)
        self.user_lookups: list[int] = []  # GET /users/{id}
        self.requests: list[tuple[str, str]] = []
        self.dms: dict[int, int] = {}
        self.identifies = 0
        self.ready = asyncio.Event()
        self._sockets: list[web.WebSocketResponse] = []  # identified bots, who get dispatches
        self._all_sockets: set[web.WebSocketResponse] = set()
        self._seq = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.add_guild(self.guild_id, upload_limit=upload_limit, channel_ids=[self.channel_id])
        self.alice = FakeUser(self.ids.next(), "alice")
        self.bob = FakeUser(self.ids.next(), "bob")
        self.admin = FakeUser(self.ids.next(), "modsy")

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        api = "/api/v10"
        app.router.add_get(f"{api}/users/@me", self._me)
        app.router.add_get(f"{api}/oauth2/applications/@me", self._app_info)
        app.router.add_put(f"{api}/applications/{{app}}/commands", self._sync)
        app.router.add_put(f"{api}/applications/{{app}}/guilds/{{guild}}/commands", self._sync)
        app.router.add_post(f"{api}/interactions/{{iid}}/{{token}}/callback", self._callback)
        app.router.add_post(f"{api}/webhooks/{{app}}/{{token}}", self._followup)
        app.router.add_patch(f"{api}/webhooks/{{app}}/{{token}}/messages/{{mid}}", self._edit_webhook_message)
        app.router.add_get(f"{api}/webhooks/{{app}}/{{token}}/messages/{{mid}}", self._get_webhook_message)
        app.router.add_post(f"{api}/channels/{{cid}}/messages", self._post_message)
        app.router.add_get(f"{api}/channels/{{cid}}/messages", self._list_messages)
        app.router.add_patch(f"{api}/channels/{{cid}}/messages/{{mid}}", self._edit_message)
        app.router.add_delete(f"{api}/channels/{{cid}}/messages/{{mid}}", self._delete_message)
        app.router.add_post(f"{api}/channels/{{cid}}/messages/{{mid}}/threads", self._start_thread)
        app.router.add_post(f"{api}/users/@me/channels", self._open_dm)
        app.router.add_get("/attachments/{path:.+}", self._cdn)
        app.router.add_get(f"{api}/users/{{uid:[0-9]+}}", self._get_user)
        app.router.add_get("/avatars/{uid}/{file}", self._avatar)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        # No access log: URLs of webhook routes carry interaction tokens.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._all_sockets):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # --- world building ---------------------------------------------------------------------

    def add_guild(
        self, guild_id: int, *, upload_limit: int = DEFAULT_UPLOAD_LIMIT, channel_ids: Iterable[int] = ()
    ) -> None:
        self.guilds[guild_id] = {"id": guild_id, "upload_limit": upload_limit}
        for cid in channel_ids:
            self.add_channel(cid, guild_id=guild_id)

    def add_channel(
        self,
        channel_id: int,
        *,
        guild_id: int | None,
        type: int = 0,
        parent_id: int | None = None,
        name: str = "general",
    ) -> dict[str, Any]:
        channel: dict[str, Any] = {
            "id": str(channel_id),
            "type": type,
            "name": name,
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "flags": 0,
            "parent_id": None,
            "topic": None,
        }
        if guild_id is not None:
            channel["guild_id"] = str(guild_id)
        if parent_id is not None:
            channel["parent_id"] = str(parent_id)
        if type in (10, 11, 12):
            channel.update(
                owner_id=str(self.bot.id),
                message_count=0,
                member_count=1,
                thread_metadata={
                    "archived": False,
                    "auto_archive_duration": 1440,
                    "archive_timestamp": _now_iso(),
                    "locked": False,
                },
            )
        if type == 1:
            channel.pop("guild_id", None)
        self.channels[channel_id] = channel
        self.messages.setdefault(channel_id, [])
        return channel

    def add_thread(self, parent_id: int, *, name: str = "a thread") -> int:
        """An existing public thread (not made by the bot) in ``parent_id``."""
        thread_id = self.ids.next()
        guild_id = int(self.channels[parent_id]["guild_id"])
        thread = self.add_channel(thread_id, guild_id=guild_id, type=11, parent_id=parent_id, name=name)
        thread["owner_id"] = str(self.owner.id)
        return thread_id

    def set_upload_limit(self, limit: int, guild_id: int | None = None) -> None:
        self.guilds[guild_id or self.guild_id]["upload_limit"] = limit

    def attachment(
        self,
        data: bytes,
        *,
        filename: str = "frame.png",
        content_type: str | None = "image/png",
        size: int | None = None,
        url: str | None = None,
    ) -> FakeAttachment:
        return FakeAttachment(filename, content_type, data, size, url)

    # --- queries for tests ------------------------------------------------------------------

    def set_avatar(self, user: FakeUser, data: bytes, *, content_type: str = "image/png") -> str:
        """Gives ``user`` an avatar (a new hash) whose bytes the CDN route ``/avatars/{id}/{hash}.png`` serves."""
        user.avatar = secrets.token_hex(16)
        self.avatars[f"{user.id}/{user.avatar}"] = (data, content_type)
        return user.avatar

    def channel_messages(self, channel_id: int | str) -> list[dict[str, Any]]:
        return list(self.messages.get(int(channel_id), []))

    def message(self, channel_id: int | str, message_id: int | str) -> dict[str, Any]:
        for msg in self.messages.get(int(channel_id), []):
            if int(msg["id"]) == int(message_id):
                return msg
        raise KeyError(f"no message {message_id} in {channel_id}")

    def files_in(self, channel_id: int | str) -> list[UploadedFile]:
        return [f for f in self.files if f.channel_id == int(channel_id)]

    def threads(self) -> list[int]:
        return [cid for cid, ch in self.channels.items() if ch["type"] == 11 and ch.get("owner_id") == str(self.bot.id)]

    def edits_of(self, message_id: int | str) -> list[CardEdit]:
        return [e for e in self.edits if e.message_id == int(message_id)]

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p in self.requests if m == method and path_part in p)

    async def wait_for(self, predicate: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            value = predicate()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {within}s waiting for {what}")
            await asyncio.sleep(0.05)

    def assert_interactions_answered_in_time(self) -> None:
        """Every dispatched interaction was acknowledged exactly once, within 3 s, with no errors."""
        for rec in self.interactions.values():
            assert rec.acks, f"interaction {rec.id} (type {rec.type}) was never acknowledged"
            assert rec.acks[0][2] < CALLBACK_DEADLINE_S, f"interaction {rec.id} acked after {rec.acks[0][2]:.2f}s"
            expected = {40060} if rec.replayed else set()
            assert set(rec.errors) <= expected, f"interaction {rec.id} got Discord errors {rec.errors}"

    # --- gateway ----------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._all_sockets.add(ws)
        await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 45_000}, "s": None, "t": None}))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                op = data.get("op")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11, "d": None, "s": None, "t": None}))
                elif op == 2:
                    if data["d"].get("token") != self.token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    self.identifies += 1
                    await self._identify(ws)
                elif op == 6:
                    await ws.send_str(json.dumps({"op": 9, "d": False, "s": None, "t": None}))
        finally:
            if ws in self._sockets:
                self._sockets.remove(ws)
            self._all_sockets.discard(ws)
        return ws

    async def _identify(self, ws: web.WebSocketResponse) -> None:
        ready = {
            "v": 10,
            "user": {**self.bot.payload(), "verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [{"id": str(gid), "unavailable": True} for gid in self.guilds],
            "session_id": secrets.token_hex(16),
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        await self._send(ws, "READY", ready)
        for gid in self.guilds:
            await self._send(ws, "GUILD_CREATE", self._guild_payload(gid))
        self._sockets.append(ws)
        self.ready.set()

    def _guild_payload(self, guild_id: int) -> dict[str, Any]:
        channels = [
            dict(ch)
            for ch in self.channels.values()
            if ch.get("guild_id") == str(guild_id) and ch["type"] not in (10, 11, 12)
        ]
        threads = [
            dict(ch)
            for ch in self.channels.values()
            if ch.get("guild_id") == str(guild_id) and ch["type"] in (10, 11, 12)
        ]
        return {
            "id": str(guild_id),
            "name": "Test Server",
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner.id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "roles": [
                {
                    "id": str(guild_id),
                    "name": "@everyone",
                    "permissions": str(MEMBER_PERMISSIONS),
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "emojis": [],
            "stickers": [],
            "joined_at": _now_iso(),
            "large": False,
            "unavailable": False,
            "member_count": 4,
            "voice_states": [],
            "members": [],
            "channels": channels,
            "threads": threads,
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    async def _send(self, ws: web.WebSocketResponse, event: str, data: dict[str, Any]) -> None:
        await ws.send_str(json.dumps({"op": 0, "t": event, "s": next(self._seq), "d": data}))

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        if not self._sockets:
            raise AssertionError("no bot is connected to the fake gateway")
        for ws in list(self._sockets):
            with contextlib.suppress(ConnectionResetError):
                await self._send(ws, event, data)

    # --- interactions -----------------------------------------------------------------------

    def _member(self, user: FakeUser, permissions: int) -> dict[str, Any]:
        return {
            "user": user.payload(),
            "roles": [],
            "joined_at": _now_iso(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "avatar": None,
            "premium_since": None,
            "communication_disabled_until": None,
            "permissions": str(permissions),
        }

    def _base_interaction(
        self,
        type: int,
        *,
        user: FakeUser,
        channel_id: int,
        permissions: int | None,
        data: dict[str, Any],
        message: dict[str, Any] | None = None,
    ) -> InteractionRecord:
        iid = self.ids.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        channel = self.channels[channel_id]
        guild_id = int(channel["guild_id"]) if "guild_id" in channel else None
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.application_id),
            "type": type,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            "channel": dict(channel),
            "data": data,
            "locale": "en-US",
            "app_permissions": str(BOT_PERMISSIONS),
            "entitlements": [],
            "attachment_size_limit": self.guilds[guild_id]["upload_limit"] if guild_id else DEFAULT_UPLOAD_LIMIT,
        }
        if guild_id is not None:
            perms = MEMBER_PERMISSIONS if permissions is None else permissions
            payload.update(
                guild_id=str(guild_id),
                guild_locale="en-US",
                member=self._member(user, perms),
                guild={"id": str(guild_id), "locale": "en-US", "features": []},
                authorizing_integration_owners={"0": str(guild_id)},
                context=0,
            )
        else:
            payload.update(user=user.payload(), authorizing_integration_owners={"0": str(user.id)}, context=1)
        if message is not None:
            payload["message"] = message
        rec = InteractionRecord(iid, token, type, payload, asyncio.get_running_loop().time())
        self.interactions[iid] = rec
        return rec

    async def slash(
        self,
        command: str,
        options: dict[str, Any] | None = None,
        *,
        user: FakeUser | None = None,
        channel_id: int | None = None,
        permissions: int | None = None,
        guild_command: bool = False,
    ) -> InteractionRecord:
        """Dispatches a slash command, e.g. ``slash("video admin budget", {"amount": "5", "user": bob})``."""
        user = user or self.alice
        channel_id = channel_id or self.channel_id
        names = command.split()
        resolved: dict[str, dict[str, Any]] = {}
        leaf: list[dict[str, Any]] = []
        for name, value in (options or {}).items():
            leaf.append(self._option(name, value, resolved, channel_id))
        tree: list[dict[str, Any]] = leaf
        for depth, name in reversed(list(enumerate(names[1:], start=1))):
            kind = 1 if depth == len(names) - 1 else 2
            tree = [{"name": name, "type": kind, "options": tree}]
        data: dict[str, Any] = {"id": str(self.ids.next()), "name": names[0], "type": 1, "options": tree}
        if resolved:
            data["resolved"] = resolved
        channel = self.channels[channel_id]
        if guild_command and "guild_id" in channel:
            data["guild_id"] = channel["guild_id"]
        rec = self._base_interaction(2, user=user, channel_id=channel_id, permissions=permissions, data=data)
        await self.dispatch("INTERACTION_CREATE", rec.payload)
        return rec

    def _option(self, name: str, value: Any, resolved: dict[str, dict[str, Any]], channel_id: int) -> dict[str, Any]:
        if isinstance(value, FakeAttachment):
            aid = self.ids.next()
            url = value.url
            if url is None:
                path = f"{channel_id}/{aid}/{value.filename}"
                self.cdn[path] = (value.data, value.content_type or "application/octet-stream")
                url = f"{self.base}/attachments/{path}?ex=0&is=0&hm=0"
            att = {
                "id": str(aid),
                "filename": value.filename,
                "size": value.size if value.size is not None else len(value.data),
                "url": url,
                "proxy_url": url,
                "ephemeral": True,
            }
            if value.content_type is not None:
                att["content_type"] = value.content_type
            resolved.setdefault("attachments", {})[str(aid)] = att
            return {"name": name, "type": 11, "value": str(aid)}
        if isinstance(value, FakeUser):
            resolved.setdefault("users", {})[str(value.id)] = value.payload()
            member = self._member(value, MEMBER_PERMISSIONS)
            member.pop("user")
            resolved.setdefault("members", {})[str(value.id)] = member
            return {"name": name, "type": 6, "value": str(value.id)}
        if isinstance(value, bool):
            return {"name": name, "type": 5, "value": value}
        if isinstance(value, int):
            return {"name": name, "type": 4, "value": value}
        return {"name": name, "type": 3, "value": str(value)}

    async def autocomplete(
        self, command: str, focused: str, value: str, *, user: FakeUser | None = None, channel_id: int | None = None
    ) -> InteractionRecord:
        names = command.split()
        tree: list[dict[str, Any]] = [{"name": focused, "type": 3, "value": value, "focused": True}]
        for depth, name in reversed(list(enumerate(names[1:], start=1))):
            tree = [{"name": name, "type": 1 if depth == len(names) - 1 else 2, "options": tree}]
        data = {"id": str(self.ids.next()), "name": names[0], "type": 1, "options": tree}
        rec = self._base_interaction(
            4, user=user or self.alice, channel_id=channel_id or self.channel_id, permissions=None, data=data
        )
        await self.dispatch("INTERACTION_CREATE", rec.payload)
        return rec

    async def click(
        self,
        channel_id: int | str,
        message_id: int | str,
        custom_id: str,
        *,
        user: FakeUser | None = None,
        permissions: int | None = None,
    ) -> InteractionRecord:
        """Presses a button on a stored message (the button must be on it, as on Discord)."""
        message = self.message(channel_id, message_id)
        ids = [c.get("custom_id") for row in message.get("components", []) for c in row.get("components", [])]
        assert custom_id in ids, f"no button {custom_id} on message {message_id}: {ids}"
        data = {"custom_id": custom_id, "component_type": 2}
        rec = self._base_interaction(
            3, user=user or self.alice, channel_id=int(channel_id), permissions=permissions, data=data, message=message
        )
        await self.dispatch("INTERACTION_CREATE", rec.payload)
        return rec

    async def submit_modal(
        self,
        channel_id: int | str,
        custom_id: str,
        values: dict[str, str],
        *,
        user: FakeUser | None = None,
        message: dict[str, Any] | None = None,
    ) -> InteractionRecord:
        components = [{"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in values.items()]
        data = {"custom_id": custom_id, "components": components}
        rec = self._base_interaction(
            5, user=user or self.alice, channel_id=int(channel_id), permissions=None, data=data, message=message
        )
        await self.dispatch("INTERACTION_CREATE", rec.payload)
        return rec

    async def replay(self, rec: InteractionRecord) -> None:
        """Delivers the same INTERACTION_CREATE again (as after a gateway resume)."""
        rec.replayed = True
        await self.dispatch("INTERACTION_CREATE", rec.payload)

    def expire(self, rec: InteractionRecord) -> None:
        """Makes the interaction token unusable, as 15 minutes later."""
        rec.expired = True

    # --- REST helpers -----------------------------------------------------------------------

    def _log(self, request: web.Request) -> None:
        self.requests.append((request.method, request.path))

    def _bot_auth(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            return _error(401, 0, "401: Unauthorized")
        return None

    async def _body(self, request: web.Request) -> tuple[dict[str, Any], list[tuple[str, bytes, str]]]:
        """JSON or multipart (``payload_json`` + ``files[n]``) → (payload, [(filename, bytes, type)])."""
        if request.content_type.startswith("multipart/"):
            payload: dict[str, Any] = {}
            files: list[tuple[str, bytes, str]] = []
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif part.name and part.name.startswith("files["):
                    files.append(
                        (
                            part.filename or "file",
                            bytes(await part.read()),
                            part.headers.get("Content-Type", "application/octet-stream"),
                        )
                    )
            return payload, files
        if request.can_read_body:
            return await request.json(), []
        return {}, []

    def _message(
        self,
        channel_id: int,
        author: dict[str, Any],
        body: dict[str, Any],
        files: list[tuple[str, bytes, str]],
        *,
        webhook_id: int | None = None,
    ) -> dict[str, Any]:
        mid = self.ids.next()
        attachments = []
        for index, (filename, data, content_type) in enumerate(files):
            declared = body.get("attachments") or []
            name = declared[index].get("filename", filename) if index < len(declared) else filename
            aid = self.ids.next()
            path = f"{channel_id}/{aid}/{name}"
            self.cdn[path] = (data, content_type)
            url = f"{self.base}/attachments/{path}"
            attachments.append(
                {
                    "id": str(aid),
                    "filename": name,
                    "size": len(data),
                    "content_type": content_type,
                    "url": url,
                    "proxy_url": url,
                }
            )
            self.files.append(UploadedFile(channel_id, mid, name, data, content_type))
        channel = self.channels.get(channel_id, {})
        message = {
            "id": str(mid),
            "channel_id": str(channel_id),
            "author": author,
            "content": body.get("content") or "",
            "timestamp": _now_iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": attachments,
            "embeds": body.get("embeds") or [],
            "pinned": False,
            "type": 0,
            "flags": body.get("flags") or 0,
            "components": body.get("components") or [],
            "allowed_mentions": body.get("allowed_mentions"),
        }
        if "guild_id" in channel:
            message["guild_id"] = channel["guild_id"]
        if webhook_id is not None:
            message["webhook_id"] = str(webhook_id)
        return message

    def _too_large(self, channel_id: int, files: list[tuple[str, bytes, str]]) -> web.Response | None:
        channel = self.channels.get(channel_id, {})
        limit = (
            self.guilds[int(channel["guild_id"])]["upload_limit"] if "guild_id" in channel else (DEFAULT_UPLOAD_LIMIT)
        )
        for name, data, _ in files:
            if len(data) > limit:
                self.rejected_uploads.append((channel_id, name, len(data)))
                return _error(413, 40005, "Request entity too large")
        return None

    # --- REST routes ------------------------------------------------------------------------

    async def _unknown(self, request: web.Request) -> web.Response:
        self._log(request)
        return _error(404, 0, f"404: Not Found ({request.method} {request.path})")

    async def _me(self, request: web.Request) -> web.Response:
        self._log(request)
        return self._bot_auth(request) or _json(
            {**self.bot.payload(), "verified": True, "flags": 0, "mfa_enabled": False}
        )

    async def _app_info(self, request: web.Request) -> web.Response:
        self._log(request)
        return self._bot_auth(request) or _json(
            {
                "id": str(self.application_id),
                "name": "reelbot",
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.owner.payload(),
                "verify_key": "00" * 32,
                "flags": 0,
                "team": None,
                "summary": "",
                "rpc_origins": [],
            }
        )

    async def _sync(self, request: web.Request) -> web.Response:
        self._log(request)
        denied = self._bot_auth(request)
        if denied:
            return denied
        body = await request.json()
        scope = f"guild:{request.match_info['guild']}" if "guild" in request.match_info else "global"
        self.syncs.append((scope, body))
        out = []
        for cmd in body:
            out.append(
                {
                    **cmd,
                    "id": str(self.ids.next()),
                    "application_id": str(self.application_id),
                    "version": str(self.ids.next()),
                    "default_member_permissions": None,
                    "type": cmd.get("type", 1),
                    **({"guild_id": request.match_info["guild"]} if "guild" in request.match_info else {}),
                }
            )
        return _json(out)

    async def _callback(self, request: web.Request) -> web.Response:
        self._log(request)
        rec = self.interactions.get(int(request.match_info["iid"]))
        if rec is None or rec.token != request.match_info["token"]:
            return _error(404, 10062, "Unknown interaction")
        if "Authorization" in request.headers:
            return _error(400, 0, "interaction callbacks take no bot token")
        body, files = await self._body(request)
        latency = asyncio.get_running_loop().time() - rec.dispatched_at
        if latency > CALLBACK_DEADLINE_S:
            rec.errors.append(10062)
            rec.changed.set()
            return _error(404, 10062, "Unknown interaction")
        if rec.acks:
            rec.errors.append(40060)
            rec.changed.set()
            return _error(400, 40060, "Interaction has already been acknowledged.")
        kind = body["type"]
        rec.acks.append((kind, body, latency))
        answer: dict[str, Any] = {"interaction": {"id": str(rec.id), "type": rec.type}}
        if kind in (4, 5):
            data = body.get("data") or {}
            message = self._message(
                int(rec.payload["channel_id"]), self.bot.payload(), data, files, webhook_id=self.application_id
            )
            if kind == 5:
                message["flags"] = (data.get("flags") or 0) | 128
            rec.original = message if kind == 4 else {**message, "content": ""}
            answer["interaction"].update(
                response_message_id=message["id"],
                response_message_loading=kind == 5,
                response_message_ephemeral=bool((data.get("flags") or 0) & 64),
            )
            answer["resource"] = {"type": kind, "message": message}
        else:
            answer["resource"] = {"type": kind}
        rec.changed.set()
        return _json(answer)

    def _webhook_record(self, request: web.Request) -> InteractionRecord | web.Response:
        if int(request.match_info["app"]) != self.application_id:
            return _error(404, 10015, "Unknown Webhook")
        for rec in self.interactions.values():
            if rec.token == request.match_info["token"]:
                too_old = asyncio.get_running_loop().time() - rec.dispatched_at > TOKEN_LIFETIME_S
                if rec.expired or too_old:
                    return _error(401, 50027, "Invalid Webhook Token")
                if not rec.acks:
                    return _error(404, 10015, "Unknown Webhook")
                return rec
        return _error(404, 10015, "Unknown Webhook")

    async def _followup(self, request: web.Request) -> web.Response:
        self._log(request)
        found = self._webhook_record(request)
        if isinstance(found, web.Response):
            return found
        body, files = await self._body(request)
        message = self._message(
            int(found.payload["channel_id"]), self.bot.payload(), body, files, webhook_id=self.application_id
        )
        found.followups.append(message)
        if not (body.get("flags") or 0) & 64:
            self.messages.setdefault(int(found.payload["channel_id"]), []).append(message)
        found.changed.set()
        return _json(message)

    async def _edit_webhook_message(self, request: web.Request) -> web.Response:
        self._log(request)
        found = self._webhook_record(request)
        if isinstance(found, web.Response):
            return found
        body, files = await self._body(request)
        if request.match_info["mid"] == "@original":
            base = found.original or self._message(int(found.payload["channel_id"]), self.bot.payload(), {}, [])
            for key in ("content", "embeds", "components"):
                if key in body:
                    base[key] = body[key]
            if files:
                base["attachments"] = self._message(int(found.payload["channel_id"]), self.bot.payload(), body, files)[
                    "attachments"
                ]
            base["edited_timestamp"] = _now_iso()
            found.original = base
            found.changed.set()
            return _json(base)
        for msg in found.followups:
            if msg["id"] == request.match_info["mid"]:
                msg.update({k: v for k, v in body.items() if k in ("content", "embeds", "components")})
                found.changed.set()
                return _json(msg)
        return _error(404, 10008, "Unknown Message")

    async def _get_webhook_message(self, request: web.Request) -> web.Response:
        self._log(request)
        found = self._webhook_record(request)
        if isinstance(found, web.Response):
            return found
        return _json(found.original or {}) if found.original else _error(404, 10008, "Unknown Message")

    def _channel_or_error(self, request: web.Request) -> int | web.Response:
        denied = self._bot_auth(request)
        if denied:
            return denied
        cid = int(request.match_info["cid"])
        if cid not in self.channels:
            return _error(404, 10003, "Unknown Channel")
        if cid in self.forbidden or int(self.channels[cid].get("parent_id") or 0) in self.forbidden:
            return _error(403, 50001, "Missing Access")
        return cid

    async def _post_message(self, request: web.Request) -> web.Response:
        self._log(request)
        cid = self._channel_or_error(request)
        if isinstance(cid, web.Response):
            return cid
        body, files = await self._body(request)
        too_large = self._too_large(cid, files)
        if too_large is not None:
            return too_large
        message = self._message(cid, self.bot.payload(), body, files)
        self.messages[cid].append(message)
        return _json(message)

    async def _list_messages(self, request: web.Request) -> web.Response:
        self._log(request)
        cid = self._channel_or_error(request)
        if isinstance(cid, web.Response):
            return cid
        limit = min(100, int(request.query.get("limit", 50)))
        msgs = sorted(self.messages[cid], key=lambda m: int(m["id"]))
        if "after" in request.query:
            after = int(request.query["after"])
            msgs = [m for m in msgs if int(m["id"]) > after][:limit]
        else:
            if "before" in request.query:
                before = int(request.query["before"])
                msgs = [m for m in msgs if int(m["id"]) < before]
            msgs = msgs[-limit:]
        return _json(list(reversed(msgs)))  # newest first, as Discord answers

    async def _edit_message(self, request: web.Request) -> web.Response:
        self._log(request)
        cid = self._channel_or_error(request)
        if isinstance(cid, web.Response):
            return cid
        body, _ = await self._body(request)
        try:
            message = self.message(cid, request.match_info["mid"])
        except KeyError:
            return _error(404, 10008, "Unknown Message")
        for key in ("content", "embeds", "components"):
            if key in body:
                message[key] = body[key]
        message["edited_timestamp"] = _now_iso()
        self.edits.append(CardEdit(cid, int(message["id"]), asyncio.get_running_loop().time(), body))
        return _json(message)

    async def _delete_message(self, request: web.Request) -> web.Response:
        self._log(request)
        cid = self._channel_or_error(request)
        if isinstance(cid, web.Response):
            return cid
        before = len(self.messages[cid])
        self.messages[cid] = [m for m in self.messages[cid] if m["id"] != request.match_info["mid"]]
        if len(self.messages[cid]) == before:
            return _error(404, 10008, "Unknown Message")
        self.deleted.append((cid, int(request.match_info["mid"])))
        return web.Response(status=204)

    async def _start_thread(self, request: web.Request) -> web.Response:
        self._log(request)
        cid = self._channel_or_error(request)
        if isinstance(cid, web.Response):
            return cid
        channel = self.channels[cid]
        if channel["type"] not in (0, 5):
            return _error(400, 50024, "Cannot execute action on this channel type")
        if cid in self.no_threads:
            return _error(403, 50013, "Missing Permissions")
        mid = int(request.match_info["mid"])
        try:
            self.message(cid, mid)
        except KeyError:
            return _error(404, 10008, "Unknown Message")
        body = await request.json()
        thread = self.add_channel(
            mid, guild_id=int(channel["guild_id"]), type=11, parent_id=cid, name=body.get("name", "thread")
        )
        thread["thread_metadata"]["auto_archive_duration"] = body.get("auto_archive_duration") or 1440
        with contextlib.suppress(AssertionError):
            await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True})
        return _json(thread)

    async def _open_dm(self, request: web.Request) -> web.Response:
        self._log(request)
        denied = self._bot_auth(request)
        if denied:
            return denied
        body = await request.json()
        user_id = int(body["recipient_id"])
        if user_id not in self.dms:
            self.dms[user_id] = self.ids.next()
            channel = self.add_channel(self.dms[user_id], guild_id=None, type=1, name="")
            channel["recipients"] = [
                {
                    "id": str(user_id),
                    "username": f"user{user_id}",
                    "discriminator": "0",
                    "global_name": None,
                    "avatar": None,
                }
            ]
        return _json(self.channels[self.dms[user_id]])

    async def _get_user(self, request: web.Request) -> web.Response:
        if (denied := self._bot_auth(request)) is not None:
            return denied
        uid = int(request.match_info["uid"])
        self.user_lookups.append(uid)
        for user in (self.bot, self.owner, self.alice, self.bob, self.admin):
            if user.id == uid:
                return _json(user.payload())
        return _error(404, 10013, "Unknown User")

    async def _avatar(self, request: web.Request) -> web.Response:
        """``/avatars/{user id}/{hash}.png?size=N`` like Discord's CDN: no token wanted, any size asked."""
        path = f"{request.match_info['uid']}/{request.match_info['file'].rsplit('.', 1)[0]}"
        self.cdn_hits.append((f"avatars/{path}", dict(request.headers)))
        if self.avatar_redirect is not None:
            raise web.HTTPFound(self.avatar_redirect)
        if self.avatar_status is not None:
            return web.Response(status=self.avatar_status, text="unavailable")
        found = self.avatars.get(path)
        if found is None:
            return web.Response(status=404, text="not found")
        data, content_type = found
        return web.Response(body=data, headers={"Content-Type": content_type})

    async def _cdn(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        self.cdn_hits.append((path, dict(request.headers)))
        found = self.cdn.get(path)
        if found is None:
            return web.Response(status=404, text="not found")
        data, content_type = found
        return web.Response(body=data, headers={"Content-Type": content_type})


# --- the harness used by the e2e tests ------------------------------------------------------


class DiscordHarness:
    """A fake Discord plus the real core (``build_app``) and the real adapter, restartable.

    ``settings`` are built with the conftest ``make_settings`` factory so data lives in tmp_path.
    """

    def __init__(self, fake: FakeDiscord, make_settings: Callable[..., Any], **env: object) -> None:
        self.fake = fake
        self.env = {
            "DISCORD_BOT_TOKEN": fake.token,
            "DISCORD_API_URL": fake.api_url,
            "DISCORD_GATEWAY_URL": fake.gateway_url,
            **env,
        }
        self.settings = make_settings(**self.env)
        self.app: Any = None
        self.adapter: Any = None

    async def start(
        self,
        *,
        provider: Any = None,
        worker: bool = True,
        configure: Callable[[Any], None] | None = None,
        **adapter_options: Any,
    ) -> DiscordHarness:
        """Builds the app and the adapter (``configure(adapter)`` runs before it connects), then starts."""
        from adapters.discord import DiscordAdapter
        from bot.app import build_app

        self.app = await build_app(self.settings, provider=provider)
        options = {"guild_ready_timeout": 0.05, **adapter_options}
        self.adapter = DiscordAdapter.from_settings(self.app.bot, self.settings, **options)
        if configure is not None:
            configure(self.adapter)
        await self.adapter.start()
        if worker:
            await self.app.worker.start()
        return self

    async def stop(self) -> None:
        if self.adapter is not None:
            await self.adapter.stop()
            self.adapter = None
        if self.app is not None:
            await self.app.worker.stop()
            await self.app.close()
            self.app = None

    async def restart(self, **kwargs: Any) -> DiscordHarness:
        await self.stop()
        return await self.start(**kwargs)

    async def job_for(self, rec: InteractionRecord) -> Any:
        return await self.app.store.get_job_by_request(f"discord:interaction:{rec.id}")

    async def wait_state(self, job_id: str, *states: str, within: float = 10.0) -> Any:
        deadline = asyncio.get_running_loop().time() + within
        while True:
            job = await self.app.store.get_job(job_id)
            if job is not None and job.state.value in states:
                return job
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    f"job {job_id} is {job.state.value if job else None} ({job.error if job else None}), "
                    f"not one of {states}"
                )
            await asyncio.sleep(0.05)


def read_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()
