"""A fake Slack on 127.0.0.1 that the real slack-bolt app and ``AsyncWebClient`` talk to.

It plays both sides of Slack:

* **The Web API** at ``{url}/api/{method}`` (point ``AsyncWebClient(base_url=fake.api_url)`` at
  it): ``auth.test``, ``chat.postMessage``/``update``/``postEphemeral``/``delete``,
  ``conversations.replies``/``open``, ``users.info``, ``views.open``, the ``files_upload_v2`` flow
  (``files.getUploadURLExternal`` -> raw POST to ``/upload/v1/{id}`` -> ``files.completeUploadExternal``),
  ``files.info``/``list``/``delete`` and ``apps.connections.open``. Every call is recorded with its
  arguments; uploaded bytes are kept. Channels hold messages and threads like Slack does.
* **Slack calling the bot**: ``command()``, ``event()`` and ``interact()`` deliver a slash
  command, an Events API callback or an interaction payload either as a signed HTTP POST to the
  bot's ``/slack/events`` (HTTP mode) or as an envelope over the Socket Mode websocket at
  ``/link`` (Socket Mode), and return the bot's acknowledgement with its latency.

It enforces what keeps tests honest: bearer tokens (``invalid_auth``), membership
(``not_in_channel`` for channels the bot was removed from), ``trigger_id`` expiry (3 s),
upload ids and lengths, and the bearer-only private file URLs, which answer an HTML sign-in page
with status 200 without the token, as Slack does. Errors can be injected per method.

Quick start::

    async with FakeSlack() as fake:
        fake.mode = "http"; fake.bot_url = adapter.url      # or fake.mode = "socket"
        ack = await fake.command("a paper boat --seconds 4", user="U_ALICE", channel="C_GENERAL")
        assert ack.status == 200 and ack.elapsed < 3
        card = fake.messages_in("C_GENERAL")[0]
        assert fake.uploads[0].thread_ts == card["ts"]
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

BOT_TOKEN = "xoxb-1111111111-2222222222222-FakeBotTokenForTests00"
APP_TOKEN = "xapp-1-A0000000001-3333333333-FakeAppTokenForTests0000000"
SIGNING_SECRET = "fake-signing-secret-8f14e45fceea167a5a36dedd4bea2543"
TEAM_ID = "T0000FAKE"
BOT_USER_ID = "U0REELBOT"
BOT_ID = "B0REELBOT"
APP_ID = "A0REELBOT"
TRIGGER_TTL = 3.0
LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"

# Methods that change something in a channel: refused with not_in_channel where the bot is not a member.
_CHANNEL_WRITES = {
    "chat.postMessage": "channel",
    "chat.update": "channel",
    "chat.postEphemeral": "channel",
    "chat.delete": "channel",
    "files.completeUploadExternal": "channel_id",
    "conversations.replies": "channel",
}


@dataclass
class Call:
    method: str
    args: dict[str, Any]
    token: str | None
    at: float


@dataclass
class Upload:
    file_id: str
    filename: str
    title: str | None
    data: bytes
    channel: str | None
    thread_ts: str | None
    initial_comment: str | None


@dataclass
class Ack:
    """The bot's acknowledgement of something Slack sent it."""

    status: int
    body: str
    elapsed: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


class FakeSlack:
    """See the module docstring. Use as ``async with FakeSlack() as fake``."""

    def __init__(
        self,
        *,
        bot_token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
        signing_secret: str = SIGNING_SECRET,
        team_id: str = TEAM_ID,
        admins: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.team_id = team_id
        self.bot_user_id = BOT_USER_ID
        self.admins = set(admins)
        self.clock = clock
        self.mode = "http"  # or "socket": how command()/event()/interact() reach the bot
        self.bot_url: str | None = None
        self.url = ""
        # Recorded state.
        self.calls: list[Call] = []
        self.channels: dict[str, list[dict]] = {}
        self.ephemerals: list[dict] = []
        self.responses: list[dict] = []  # what the bot POSTed to response_urls
        self.uploads: list[Upload] = []
        #: When set, upload bodies are read at this many bytes per second (a shaped link; benchmarks).
        self.upload_rate: float | None = None
        self.views: dict[str, dict] = {}
        self.files: dict[str, dict] = {}  # file id -> file object (attachments and uploads)
        self.file_bytes: dict[str, bytes] = {}
        self.downloads: list[dict] = []  # every GET of a private file URL
        self.outside: set[str] = set()  # channels the bot is not a member of
        self.files_read_scope = True  # False: private file URLs answer the HTML sign-in page
        self.redirect_files_to: str | None = None  # private file URLs redirect here (to test the host check)
        # users.info ``profile`` picture URLs per user (``set_profile_photo``); absent: no ``profile`` in the answer.
        self.profile_images: dict[str, dict[str, Any]] = {}
        self.socket_connections = 0
        self.replies_page_size = 1000  # conversations.replies pages are at most this long
        # Injected failures: method -> list of (error, http status, retry_after).
        self._failures: dict[str, list[tuple[str, int, int | None]]] = {}
        self._pending_uploads: dict[str, dict] = {}
        self._triggers: dict[str, float] = {}
        self._response_users: dict[str, str] = {}
        self._responded = asyncio.Event()
        self._uploaded = asyncio.Event()
        self._ids = itertools.count(1)
        self._ts = itertools.count(1)
        self._ws: web.WebSocketResponse | None = None
        self._ws_connected = asyncio.Event()
        self._envelopes: dict[str, asyncio.Future[dict]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post("/upload/v1/{file_id}", self._upload)
        app.router.add_get("/files-pri/{key}/{name}", self._private_file)
        app.router.add_get("/files-pri/{key}/download/{name}", self._private_file)
        app.router.add_post("/response/{id}", self._response_url)
        app.router.add_get("/link", self._link)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        # No connection cap: Slack delivers concurrent requests on as many connections as it likes.
        self._session = aiohttp.ClientSession(trust_env=False, connector=aiohttp.TCPConnector(limit=0))

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    # --- ids and clocks -------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"

    def new_ts(self) -> str:
        return f"{int(self.clock())}.{next(self._ts):06d}"

    def trigger_id(self) -> str:
        trigger = f"{next(self._ids)}.{int(self.clock())}.{hashlib.md5(str(time.monotonic_ns()).encode()).hexdigest()}"
        self._triggers[trigger] = time.monotonic()
        return trigger

    # --- assertions helpers ---------------------------------------------------------------------

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [c.args for c in self.calls if c.method == method]

    def messages_in(self, channel: str) -> list[dict]:
        """Top-level messages of a channel, oldest first."""
        return [m for m in self.channels.get(channel, []) if not m.get("thread_ts") or m["thread_ts"] == m["ts"]]

    def thread(self, channel: str, ts: str) -> list[dict]:
        """Replies in a thread (without the parent), oldest first."""
        return [m for m in self.channels.get(channel, []) if m.get("thread_ts") == ts and m["ts"] != ts]

    def message(self, channel: str, ts: str) -> dict | None:
        return next((m for m in self.channels.get(channel, []) if m["ts"] == ts), None)

    def bot_messages(self, channel: str) -> list[dict]:
        return [m for m in self.channels.get(channel, []) if m.get("user") == self.bot_user_id]

    def ephemerals_for(self, user: str) -> list[str]:
        texts = [e["text"] for e in self.ephemerals if e.get("user") == user]
        texts += [r.get("text", "") for r in self.responses if r.get("_user") == user]
        texts += [
            m.get("text", "")
            for ch, msgs in self.channels.items()
            if ch == self.dm_channel(user)
            for m in msgs
            if m.get("user") == self.bot_user_id
        ]
        return texts

    def dm_channel(self, user: str) -> str:
        return f"D{user}"

    def button(self, channel: str, ts: str, action_id: str) -> dict | None:
        """The button with this action id on a message (what a person would click)."""
        message = self.message(channel, ts)
        for block in (message or {}).get("blocks") or []:
            for element in block.get("elements") or []:
                if element.get("type") == "button" and element.get("action_id") == action_id:
                    return element
        return None

    # --- failure injection ----------------------------------------------------------------------

    def fail(
        self, method: str, error: str, *, times: int = 1, status: int = 200, retry_after: int | None = None
    ) -> None:
        """The next ``times`` calls of ``method`` answer ``{"ok": false, "error": error}``."""
        self._failures.setdefault(method, []).extend([(error, status, retry_after)] * times)

    def kick(self, channel: str) -> None:
        """Removes the bot from a channel (its writes there now fail with not_in_channel)."""
        self.outside.add(channel)

    def invite(self, channel: str) -> None:
        self.outside.discard(channel)

    # --- files people attach --------------------------------------------------------------------

    def add_file(
        self,
        data: bytes,
        name: str = "picture.png",
        *,
        mimetype: str = "image/png",
        size: int | None = None,
        url: str | None = None,
        user: str = "U_ALICE",
    ) -> dict:
        """A file as Slack describes it in events: id, name, mimetype, size and private URLs here."""
        file_id = self._id("F")
        base = f"{self.url}/files-pri/{self.team_id}-{file_id}"
        obj = {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": name.rsplit(".", 1)[-1].lower() if "." in name else "",
            "user": user,
            "size": len(data) if size is None else size,
            "mode": "hosted",
            "url_private": url or f"{base}/{name}",
            "url_private_download": url or f"{base}/download/{name}",
        }
        self.files[file_id] = obj
        self.file_bytes[file_id] = data
        return dict(obj)

    def set_profile_photo(
        self,
        user: str,
        data: bytes | None = None,
        *,
        url: str | None = None,
        mimetype: str = "image/png",
        custom: bool = True,
        original: bool = False,
    ) -> str:
        """Gives ``user`` a profile picture: ``users.info`` answers ``profile.image_512`` (or only
        ``image_original`` with ``original=True``) pointing at ``url``, or at the fake's own private
        file route serving ``data``. ``custom=False`` marks Slack's generated default picture."""
        if url is None:
            url = self.add_file(data or b"", f"{user}_512.png", mimetype=mimetype, user=user)["url_private"]
        field_name = "image_original" if original else "image_512"
        self.profile_images[user] = {field_name: url, "is_custom_image": custom}
        return url

    async def _private_file(self, request: web.Request) -> web.StreamResponse:
        key = request.match_info["key"]
        file_id = key.split("-", 1)[-1]
        auth = request.headers.get("Authorization", "")
        authorized = auth == f"Bearer {self.bot_token}"
        self.downloads.append({"file_id": file_id, "authorized": authorized, "path": request.path})
        if self.redirect_files_to:
            raise web.HTTPFound(self.redirect_files_to)
        if not authorized or not self.files_read_scope:
            return web.Response(body=LOGIN_PAGE, content_type="text/html")
        data = self.file_bytes.get(file_id)
        if data is None:
            return web.Response(status=404, text="file not found")
        response = web.StreamResponse(headers={"Content-Type": self.files[file_id].get("mimetype", "")})
        await response.prepare(request)
        for start in range(0, len(data), 256 * 1024):
            await response.write(data[start : start + 256 * 1024])
        await response.write_eof()
        return response

    # --- the Web API ----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        token = None
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth[len("Bearer ") :]
        if request.can_read_body:
            if request.content_type == "application/json":
                body = await request.json()
                if isinstance(body, dict):
                    args.update(body)
            else:
                form = await request.post()
                args.update({k: v for k, v in form.items() if isinstance(v, str)})
        token = token or args.pop("token", None)
        for key in ("blocks", "view", "files", "attachments"):
            if isinstance(args.get(key), str):
                with contextlib.suppress(ValueError):
                    args[key] = json.loads(args[key])
        self.calls.append(Call(method, args, token, time.monotonic()))

        expected = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != expected:
            return self._error("invalid_auth" if token else "not_authed")
        failures = self._failures.get(method)
        if failures:
            error, status, retry_after = failures.pop(0)
            headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
            return web.json_response({"ok": False, "error": error}, status=status, headers=headers)
        channel_arg = _CHANNEL_WRITES.get(method)
        if channel_arg and args.get(channel_arg) in self.outside:
            return self._error("not_in_channel")
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return self._error("unknown_method")
        result = handler(args)
        if isinstance(result, str):
            return self._error(result)
        return web.json_response({"ok": True, **result})

    @staticmethod
    def _error(error: str) -> web.Response:
        return web.json_response({"ok": False, "error": error})

    def _m_auth_test(self, args: dict) -> dict:
        return {
            "url": "https://fake.slack.com/",
            "team": "Fake Team",
            "user": "reelbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": BOT_ID,
            "is_enterprise_install": False,
        }

    def _post(
        self,
        channel: str,
        *,
        user: str,
        text: str = "",
        blocks: Any = None,
        thread_ts: str | None = None,
        files: list[dict] | None = None,
        **extra: Any,
    ) -> dict:
        ts = self.new_ts()
        message: dict[str, Any] = {"type": "message", "ts": ts, "user": user, "text": text, "team": self.team_id}
        if user == self.bot_user_id:
            message["bot_id"] = BOT_ID
        if blocks:
            message["blocks"] = blocks
        if thread_ts:
            message["thread_ts"] = thread_ts
            parent = self.message(channel, thread_ts)
            if parent is not None:
                parent.setdefault("thread_ts", thread_ts)
                parent["reply_count"] = parent.get("reply_count", 0) + 1
        if files:
            message["files"] = files
        message.update(extra)
        self.channels.setdefault(channel, []).append(message)
        return message

    def _m_chat_postMessage(self, args: dict) -> dict | str:
        channel = args.get("channel")
        if not channel:
            return "channel_not_found"
        if not args.get("text") and not args.get("blocks"):
            return "no_text"
        message = self._post(
            channel,
            user=self.bot_user_id,
            text=args.get("text", ""),
            blocks=args.get("blocks"),
            thread_ts=args.get("thread_ts"),
        )
        message["edits"] = 0
        return {"channel": channel, "ts": message["ts"], "message": message}

    def _m_chat_update(self, args: dict) -> dict | str:
        message = self.message(args.get("channel", ""), args.get("ts", ""))
        if message is None:
            return "message_not_found"
        if message.get("user") != self.bot_user_id:
            return "cant_update_message"
        if "text" in args:
            message["text"] = args["text"]
        if "blocks" in args:
            message["blocks"] = args["blocks"]
        message["edits"] = message.get("edits", 0) + 1
        message.setdefault("edit_log", []).append((time.monotonic(), message["text"]))
        return {"channel": args["channel"], "ts": message["ts"], "text": message["text"]}

    def _m_chat_postEphemeral(self, args: dict) -> dict | str:
        if not args.get("channel") or not args.get("user"):
            return "channel_not_found"
        self.ephemerals.append(
            {
                "channel": args["channel"],
                "user": args["user"],
                "text": args.get("text", ""),
                "blocks": args.get("blocks"),
                "thread_ts": args.get("thread_ts"),
            }
        )
        return {"message_ts": self.new_ts()}

    def _m_chat_delete(self, args: dict) -> dict | str:
        messages = self.channels.get(args.get("channel", ""), [])
        message = self.message(args.get("channel", ""), args.get("ts", ""))
        if message is None:
            return "message_not_found"
        messages.remove(message)
        return {"channel": args["channel"], "ts": args["ts"]}

    def _m_conversations_replies(self, args: dict) -> dict | str:
        channel, ts = args.get("channel", ""), args.get("ts", "")
        parent = self.message(channel, ts)
        if parent is None:
            return "thread_not_found"
        messages = [parent, *self.thread(channel, ts)]
        limit = min(int(args.get("limit") or 1000), self.replies_page_size)
        start = int(args.get("cursor") or 0)
        page = messages[start : start + limit]
        more = start + limit < len(messages)
        return {
            "messages": page,
            "has_more": more,
            "response_metadata": {"next_cursor": str(start + limit) if more else ""},
        }

    def _m_conversations_open(self, args: dict) -> dict | str:
        users = str(args.get("users") or "")
        if not users or "," in users:
            return "user_not_found"
        channel = self.dm_channel(users)
        self.channels.setdefault(channel, [])
        return {"channel": {"id": channel}}

    def _m_users_info(self, args: dict) -> dict | str:
        user = args.get("user")
        if not user:
            return "user_not_found"
        return {
            "user": {
                "id": user,
                "team_id": self.team_id,
                "name": user.lower(),
                "is_admin": user in self.admins,
                "is_owner": False,
                "is_bot": False,
                **({"profile": dict(self.profile_images[user])} if user in self.profile_images else {}),
            }
        }

    def _m_views_open(self, args: dict) -> dict | str:
        trigger = args.get("trigger_id")
        issued = self._triggers.pop(trigger, None) if trigger else None
        if issued is None:
            return "invalid_trigger_id"
        if time.monotonic() - issued > TRIGGER_TTL:
            return "expired_trigger_id"
        view = args.get("view")
        if not isinstance(view, dict) or view.get("type") != "modal" or len(view.get("blocks") or []) > 100:
            return "invalid_arguments"
        view_id = self._id("V")
        stored = {"id": view_id, "team_id": self.team_id, "hash": f"{view_id}.hash", **view}
        self.views[view_id] = stored
        return {"view": stored}

    def _m_files_getUploadURLExternal(self, args: dict) -> dict | str:
        filename, length = args.get("filename"), args.get("length")
        if not filename or not str(length or "").isdigit():
            return "invalid_arguments"
        file_id = self._id("F")
        self._pending_uploads[file_id] = {"filename": filename, "length": int(length), "data": None}
        return {"upload_url": f"{self.url}/upload/v1/{file_id}", "file_id": file_id}

    async def _upload(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        pending = self._pending_uploads.get(file_id)
        if pending is None:
            return web.Response(status=404, text="unknown upload")
        if request.headers.get("Authorization"):
            return web.Response(status=400, text="no auth expected on the upload URL")
        if self.upload_rate is None:
            pending["data"] = await request.read()
        else:
            pending["data"] = await _read_paced(request, self.upload_rate)
        return web.Response(text=f"OK - {len(pending['data'])}", content_type="text/plain")

    def _m_files_completeUploadExternal(self, args: dict) -> dict | str:
        files = args.get("files")
        if not isinstance(files, list) or not files:
            return "invalid_arguments"
        done = []
        for item in files:
            pending = self._pending_uploads.get(item.get("id"))
            if pending is None or pending["data"] is None:
                return "file_not_found"
            if len(pending["data"]) != pending["length"]:
                return "file_upload_size_mismatch"
        channel, thread_ts = args.get("channel_id"), args.get("thread_ts")
        shared = []
        for item in files:
            pending = self._pending_uploads.pop(item["id"])
            obj = {
                "id": item["id"],
                "name": pending["filename"],
                "title": item.get("title") or pending["filename"],
                "mimetype": "video/mp4",
                "filetype": "mp4",
                "size": len(pending["data"]),
                "user": self.bot_user_id,
                "channels": [channel] if channel else [],
                "created": int(self.clock()),
                "url_private": f"{self.url}/files-pri/{self.team_id}-{item['id']}/{pending['filename']}",
            }
            self.files[item["id"]] = obj
            self.file_bytes[item["id"]] = pending["data"]
            self.uploads.append(
                Upload(
                    item["id"],
                    pending["filename"],
                    item.get("title"),
                    pending["data"],
                    channel,
                    thread_ts,
                    args.get("initial_comment"),
                )
            )
            self._uploaded.set()
            shared.append(obj)
            done.append({"id": item["id"], "title": obj["title"]})
        if channel:
            self._post(
                channel,
                user=self.bot_user_id,
                text=args.get("initial_comment") or "",
                thread_ts=thread_ts,
                files=shared,
                upload=True,
            )
        return {"files": done}

    def _m_files_info(self, args: dict) -> dict | str:
        obj = self.files.get(args.get("file", ""))
        return {"file": obj} if obj is not None else "file_not_found"

    def _m_files_list(self, args: dict) -> dict | str:
        channel = args.get("channel")
        since = float(args.get("ts_from") or 0)
        found = [
            f
            for f in self.files.values()
            if f.get("user") == self.bot_user_id
            and (not channel or channel in f.get("channels", []))
            and f.get("created", 0) >= since
        ]
        return {"files": found, "paging": {"count": len(found), "total": len(found), "page": 1, "pages": 1}}

    def _m_files_delete(self, args: dict) -> dict | str:
        obj = self.files.pop(args.get("file", ""), None)
        return {} if obj is not None else "file_not_found"

    def _m_apps_connections_open(self, args: dict) -> dict:
        return {"url": self.url.replace("http://", "ws://") + f"/link?ticket={self._id('tk')}"}

    async def _response_url(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_id"] = request.match_info["id"]
        body["_user"] = self._response_users.get(request.match_info["id"])
        body["_at"] = time.perf_counter()
        self.responses.append(body)
        self._responded.set()
        return web.Response(text="ok")

    async def wait_responses(self, count: int, within: float = 30.0) -> None:
        """Waits until the bot has answered through ``count`` response URLs in all."""
        async with asyncio.timeout(within):
            while len(self.responses) < count:
                self._responded.clear()
                await self._responded.wait()

    async def wait_uploads(self, count: int = 1, within: float = 20.0) -> None:
        """Waits until ``count`` files have been uploaded in all."""
        async with asyncio.timeout(within):
            while len(self.uploads) < count:
                self._uploaded.clear()
                await self._uploaded.wait()

    def response_url(self, user: str) -> str:
        key = self._id("R")
        self._response_users[key] = user
        return f"{self.url}/response/{key}"

    # --- Socket Mode ----------------------------------------------------------------------------

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._ws = ws
        self.socket_connections += 1
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": 1,
                    "connection_info": {"app_id": APP_ID},
                    "debug_info": {"host": "fake"},
                }
            )
        )
        self._ws_connected.set()
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                with contextlib.suppress(ValueError):
                    data = json.loads(msg.data)
                    future = self._envelopes.pop(data.get("envelope_id"), None)
                    if future is not None and not future.done():
                        future.set_result(data)
        finally:
            if self._ws is ws:
                self._ws = None
                self._ws_connected.clear()
        return ws

    async def wait_connected(self, within: float = 5.0) -> None:
        await asyncio.wait_for(self._ws_connected.wait(), within)

    async def send_envelope(
        self,
        kind: str,
        payload: dict,
        *,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
        within: float = 5.0,
    ) -> Ack:
        await self.wait_connected()
        assert self._ws is not None
        envelope_id = self._id("env-")
        envelope: dict[str, Any] = {
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": kind != "events_api",
        }
        if retry_attempt is not None:
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason or "timeout"
        future: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self._envelopes[envelope_id] = future
        started = time.perf_counter()
        await self._ws.send_str(json.dumps(envelope))
        try:
            answer = await asyncio.wait_for(future, within)
        except TimeoutError:
            self._envelopes.pop(envelope_id, None)
            return Ack(status=0, body="", elapsed=time.perf_counter() - started)
        elapsed = time.perf_counter() - started
        body = answer.get("payload")
        return Ack(status=200, body=json.dumps(body) if body else "", elapsed=elapsed)

    # --- Slack calling the bot (HTTP mode) ------------------------------------------------------

    async def post_signed(
        self,
        body: bytes,
        content_type: str,
        *,
        headers: dict[str, str] | None = None,
        signature: str | None = None,
        timestamp: int | None = None,
        within: float = 10.0,
    ) -> Ack:
        """POSTs to the bot's events URL the way Slack does: ``X-Slack-Signature`` over the raw body."""
        assert self.bot_url, "set fake.bot_url to the bot's /slack/events URL"
        assert self._session is not None
        stamp = str(int(self.clock()) if timestamp is None else timestamp)
        all_headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": stamp,
            "X-Slack-Signature": signature if signature is not None else sign(self.signing_secret, stamp, body),
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
            **(headers or {}),
        }
        started = time.perf_counter()
        async with self._session.post(
            self.bot_url, data=body, headers=all_headers, timeout=aiohttp.ClientTimeout(total=within)
        ) as response:
            text = await response.text()
            elapsed = time.perf_counter() - started
            return Ack(response.status, text, elapsed, dict(response.headers))

    # --- what Slack sends -----------------------------------------------------------------------

    def command_form(
        self, text: str, *, user: str = "U_ALICE", channel: str = "C_GENERAL", command: str = "/video"
    ) -> dict[str, str]:
        return {
            "token": "verification-token-unused",
            "team_id": self.team_id,
            "team_domain": "fake",
            "channel_id": channel,
            "channel_name": "general",
            "user_id": user,
            "user_name": user.lower(),
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": self.response_url(user),
            "trigger_id": self.trigger_id(),
        }

    async def command(
        self, text: str, *, user: str = "U_ALICE", channel: str = "C_GENERAL", command: str = "/video", **post: Any
    ) -> Ack:
        form = self.command_form(text, user=user, channel=channel, command=command)
        if self.mode == "socket":
            return await self.send_envelope("slash_commands", form)
        return await self.post_signed(urlencode(form).encode(), "application/x-www-form-urlencoded", **post)

    def event_body(self, event: dict, *, event_id: str | None = None) -> dict:
        return {
            "token": "verification-token-unused",
            "team_id": self.team_id,
            "api_app_id": APP_ID,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or self._id("Ev"),
            "event_time": int(self.clock()),
            "authorizations": [
                {
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "enterprise_id": None,
                    "is_enterprise_install": False,
                }
            ],
        }

    async def event(
        self, event: dict, *, event_id: str | None = None, retry_num: int | None = None, **post: Any
    ) -> Ack:
        body = self.event_body(event, event_id=event_id)
        if self.mode == "socket":
            return await self.send_envelope(
                "events_api", body, retry_attempt=retry_num, retry_reason="http_timeout" if retry_num else None
            )
        headers = {}
        if retry_num is not None:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        return await self.post_signed(json.dumps(body).encode(), "application/json", headers=headers, **post)

    async def interact(self, payload: dict, **post: Any) -> Ack:
        if self.mode == "socket":
            return await self.send_envelope("interactive", payload)
        body = urlencode({"payload": json.dumps(payload)}).encode()
        return await self.post_signed(body, "application/x-www-form-urlencoded", **post)

    # --- building what people do ----------------------------------------------------------------

    def user_post(
        self,
        text: str,
        *,
        user: str = "U_ALICE",
        channel: str = "C_GENERAL",
        files: list[dict] | None = None,
        thread_ts: str | None = None,
    ) -> dict:
        """A person's message, stored in the channel; returns it as Slack would put it in an event."""
        extra = {"subtype": "file_share"} if files else {}
        message = self._post(channel, user=user, text=text, thread_ts=thread_ts, files=files, **extra)
        return dict(message)

    def mention_event(self, message: dict, channel: str = "C_GENERAL") -> dict:
        event = {k: v for k, v in message.items() if k in ("ts", "user", "text", "files", "thread_ts", "team")}
        event.update({"type": "app_mention", "channel": channel, "event_ts": message["ts"]})
        return event

    def message_event(self, message: dict, channel: str = "C_GENERAL", channel_type: str = "channel") -> dict:
        event = {
            k: v for k, v in message.items() if k in ("ts", "user", "text", "files", "thread_ts", "team", "subtype")
        }
        event.update({"type": "message", "channel": channel, "channel_type": channel_type, "event_ts": message["ts"]})
        return event

    def block_action(self, channel: str, ts: str, action_id: str, *, user: str = "U_ALICE") -> dict:
        """What Slack sends when ``user`` clicks the button ``action_id`` on the message ``ts``."""
        element = self.button(channel, ts, action_id)
        assert element is not None, f"no {action_id} button on {channel}/{ts}"
        message = self.message(channel, ts) or {}
        return {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": self.team_id},
            "api_app_id": APP_ID,
            "token": "verification-token-unused",
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "trigger_id": self.trigger_id(),
            "team": {"id": self.team_id, "domain": "fake"},
            "channel": {"id": channel, "name": "general"},
            "message": message,
            "response_url": self.response_url(user),
            "actions": [
                {
                    "action_id": action_id,
                    "block_id": "card_actions",
                    "value": element.get("value"),
                    "type": "button",
                    "text": element.get("text"),
                    "action_ts": str(self.clock()),
                }
            ],
        }

    def message_shortcut(
        self, message: dict, callback_id: str, *, channel: str = "C_GENERAL", user: str = "U_ALICE"
    ) -> dict:
        return {
            "type": "message_action",
            "token": "verification-token-unused",
            "action_ts": str(self.clock()),
            "team": {"id": self.team_id, "domain": "fake"},
            "user": {"id": user, "name": user.lower(), "team_id": self.team_id},
            "channel": {"id": channel, "name": "general"},
            "callback_id": callback_id,
            "trigger_id": self.trigger_id(),
            "message_ts": message["ts"],
            "message": message,
            "response_url": self.response_url(user),
        }

    def view_submission(self, view_id: str, values: dict[str, Any] | None = None, *, user: str = "U_ALICE") -> dict:
        """Submitting an opened modal: each input keeps its initial value unless ``values`` sets it
        (text for inputs, an option value for selects, a list of file objects for file inputs)."""
        view = self.views[view_id]
        values = values or {}
        state: dict[str, dict] = {}
        for block in view.get("blocks") or []:
            if block.get("type") != "input":
                continue
            element = block["element"]
            block_id, action_id, kind = block["block_id"], element["action_id"], element["type"]
            given = values.get(block_id)
            if kind == "plain_text_input":
                state[block_id] = {
                    action_id: {"type": kind, "value": given if given is not None else element.get("initial_value")}
                }
            elif kind == "static_select":
                option = element.get("initial_option")
                if given is not None:
                    option = next(o for o in element["options"] if o["value"] == given)
                state[block_id] = {action_id: {"type": kind, "selected_option": option}}
            elif kind == "file_input":
                state[block_id] = {action_id: {"type": kind, "files": list(given or [])}}
        return {
            "type": "view_submission",
            "team": {"id": self.team_id, "domain": "fake"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": self.team_id},
            "api_app_id": APP_ID,
            "token": "verification-token-unused",
            "trigger_id": self.trigger_id(),
            "view": {**view, "state": {"values": state}},
            "response_urls": [],
            "is_enterprise_install": False,
        }


# --- the bot under test ---------------------------------------------------------------------------


def slack_env(fake: FakeSlack, mode: str) -> dict[str, str]:
    """Configuration (env variable names) that points reelbot at the fake, in either mode."""
    env = {"SLACK_BOT_TOKEN": fake.bot_token, "SLACK_API_URL": fake.api_url}
    if mode == "socket":
        env["SLACK_APP_TOKEN"] = fake.app_token
    else:
        env["SLACK_SIGNING_SECRET"] = fake.signing_secret
    return env


@dataclass
class SlackBot:
    """The real app (store, worker, renderer) and the Slack adapter, wired to a ``FakeSlack``."""

    fake: FakeSlack
    app: Any  # bot.app.App
    adapter: Any  # adapters.slack.SlackAdapter

    @property
    def store(self) -> Any:
        return self.app.store

    async def stop(self) -> None:
        await self.adapter.stop()
        await self.app.close()

    async def settle(self) -> None:
        """Waits until every acknowledged request has been answered (Bolt may ack an event just
        before it starts the listener, so look twice, a moment apart)."""
        for _ in range(2):
            await asyncio.sleep(0.03)
            await self.adapter.idle(10)

    async def jobs(self, user: str = "U_ALICE") -> list[Any]:
        return await self.app.store.jobs_for_user("slack", self.fake.team_id, user)

    async def only_job(self, user: str = "U_ALICE") -> Any:
        await self.settle()
        jobs = await self.jobs(user)
        assert len(jobs) == 1, f"expected one job for {user}, found {[j.id for j in jobs]}"
        return jobs[0]

    async def wait_state(self, job_id: str, *states: Any, within: float = 20.0) -> Any:
        deadline = time.monotonic() + within
        job = None
        while time.monotonic() < deadline:
            job = await self.app.store.get_job(job_id)
            if job is not None and job.state in states:
                return job
            await asyncio.sleep(0.02)
        raise AssertionError(f"job {job_id} never reached {states}; it is {job.state if job else None}")

    async def wait_until(self, predicate: Callable[[], Any], *, within: float, what: str = "a condition") -> Any:
        """Polls ``predicate`` until it is truthy (returned) or ``within`` seconds pass (AssertionError)."""
        deadline = time.monotonic() + within
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {within} s waiting for {what}")
            await asyncio.sleep(0.02)

    async def delivered(self, job_id: str, within: float = 20.0) -> Any:
        """Waits for pending requests, then until the job is final or undelivered."""
        await self.settle()
        job = await self.app.worker.wait_for(job_id, timeout=within)
        await self.settle()
        return job


async def start_slack_bot(fake: FakeSlack, settings: Any, *, provider: Any = None, worker: bool = True) -> SlackBot:
    """Builds the app from ``settings`` (see ``slack_env``) and starts the adapter on 127.0.0.1:0."""
    from adapters.slack import SlackAdapter
    from bot.app import build_app
    from bot.providers.local import LocalRenderer

    provider = provider or LocalRenderer(work_dir=settings.data_dir / "renders", fps=8)
    app = await build_app(settings, provider=provider)
    adapter = SlackAdapter.from_settings(app.bot, settings, host="127.0.0.1", port=0)
    await adapter.start()
    if adapter.mode == "socket":
        fake.mode = "socket"
        await fake.wait_connected()
    else:
        fake.mode = "http"
        fake.bot_url = adapter.url
    app.worker.tick_seconds = 0.1
    if worker:
        await app.worker.start()
    return SlackBot(fake=fake, app=app, adapter=adapter)


async def _read_paced(request: web.Request, rate: float) -> bytes:
    """Reads a body no faster than ``rate`` bytes per second, as a link of that speed would deliver it."""
    loop = asyncio.get_running_loop()
    started, parts, got = loop.time(), [], 0
    async for piece in request.content.iter_chunked(64 << 10):
        parts.append(piece)
        got += len(piece)
        await asyncio.sleep(max(0.0, started + got / rate - loop.time()))
    return b"".join(parts)
