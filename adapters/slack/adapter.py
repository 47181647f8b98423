"""``SlackAdapter``: slack-bolt's ``AsyncApp`` in front of the reelbot core.

Every listener acknowledges first (Slack wants an answer within 3 s) and then does its work in a
task of its own: downloading a picture, asking the core, answering the person ephemerally. The
core posts the job card and the clip through ``SlackDelivery``.

Ways in:

* ``/video PROMPT [flags]`` and every subcommand (``budget``, ``jobs``, ``cancel``, ``admin``...);
  ``/video`` alone opens a form with an image upload.
* A message that mentions the bot (``@reelbot a paper boat --pro`` plus a picture); a direct message.
* The "Make a video" message shortcut on any message with a picture.
* The card's buttons (Cancel, Re-roll, Remix, Retry delivery) and consent buttons in DMs.

Events are de-duplicated durably in SQLite by ``event_id`` (Slack retries) and by channel and
``ts`` (the same post arrives as ``message`` and as ``app_mention``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from adapters.slack import blocks
from adapters.slack.delivery import SlackDelivery, slack_error_code
from adapters.slack.files import SlackFileRefused, SlackFiles
from bot.commands import CameoCommand, CommandError, VideoCommand, parse
from bot.config import Settings
from bot.core import CATCH_ALL, MAX_ATTACHMENT_BYTES, ReelBot, Reply
from bot.jobs import ChatRequest, InputFile, Requester
from bot.web.ratelimited_log import RateLimitedLog
from bot.web.server import WebServer
from bot.web.slack_request import SlackRequestRefused, check_signature, decode_body

log = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
EVENTS_PATH = "/slack/events"
ADMIN_CACHE_SECONDS = 600.0
ACK_FIRST_QUIET = 0.05
ACK_FIRST_MAX_WAIT = 0.5

_USER_TOKEN = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
_CHANNEL_TOKEN = re.compile(r"<#([CG][A-Z0-9]+)(?:\|([^>]*))?>")
_LINK_TOKEN = re.compile(r"<((?:https?|mailto):[^>|]+)(?:\|([^>]*))?>")
_SPECIAL_TOKEN = re.compile(r"<!(here|channel|everyone)(?:\|[^>]*)?>|<!subteam\^[A-Z0-9]+(?:\|([^>]*))?>")
_MESSAGE_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})


def normalize_text(text: str) -> str:
    """Slack's escaped message text as a person typed it; user mentions stay ``<@U…>`` tokens
    (the core resolves them for ``admin budget @user`` and ``--cameo @user``)."""
    text = _CHANNEL_TOKEN.sub(lambda m: f"#{m.group(2) or m.group(1)}", text)
    text = _LINK_TOKEN.sub(lambda m: m.group(2) or m.group(1), text)
    text = _SPECIAL_TOKEN.sub(lambda m: "@" + (m.group(1) or (m.group(2) or "group").lstrip("@")), text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def mentions_in(text: str) -> dict[str, str]:
    """``{"<@U1|alice>": "U1", "@alice": "U1", "<@U1>": "U1"}`` for the user mentions in ``text``."""
    found: dict[str, str] = {}
    for match in _USER_TOKEN.finditer(text):
        user_id, label = match.group(1), match.group(2)
        found[match.group(0)] = user_id
        found[f"<@{user_id}>"] = user_id
        if label:
            found[f"@{label}"] = user_id
    return found


def _is_image(file: dict) -> bool:
    mimetype = str(file.get("mimetype") or "")
    name = str(file.get("name") or "").lower()
    return mimetype.startswith("image/") or name.endswith((".png", ".jpg", ".jpeg", ".webp"))


class _UnusedTokenWarning(logging.Filter):
    """Drops Bolt's "`token` will be unused" warning: Bolt falls back to ``SLACK_BOT_TOKEN`` from the
    environment whenever it is given a client, so the warning would come at every start in production."""

    _message = warning_client_prioritized_and_token_skipped()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self._message


_BOLT_LOGGER = logging.getLogger("slack_bolt.reelbot")
_BOLT_LOGGER.addFilter(_UnusedTokenWarning())


class _SocketModeHandler(AsyncSocketModeHandler):
    """Bolt's Socket Mode handler, noting when each envelope arrives (for ack-first scheduling)."""

    def __init__(self, app: AsyncApp, app_token: str | None, *, on_arrival: Callable[[], None]) -> None:
        super().__init__(app, app_token)
        self._on_arrival = on_arrival

    async def handle(self, client: Any, req: Any) -> None:
        self._on_arrival()
        await super().handle(client, req)


class SlackAdapter:
    """Connects one Slack workspace to the core, over Socket Mode or HTTP.

    Args:
        bot: the core; the adapter registers its ``SlackDelivery`` on it.
        bot_token: ``xoxb-`` token. ``app_token`` (``xapp-``) selects Socket Mode; without it the
            adapter serves HTTP at ``POST /slack/events`` and needs ``signing_secret``.
        api_url: the Web API base (``SLACK_API_URL``); its host is also trusted for file downloads.
        server: the shared ``WebServer`` to mount ``/slack/events`` on (HTTP mode); whoever made it
            starts and stops it. Without one the adapter runs its own on ``host``:``http_port``.
        host: the HTTP interface of its own server (``0.0.0.0``; tests use ``127.0.0.1`` with port 0).
        command: the slash command's name.
    """

    platform = "slack"

    def __init__(
        self,
        bot: ReelBot,
        *,
        bot_token: str,
        signing_secret: str | None = None,
        app_token: str | None = None,
        api_url: str = DEFAULT_API_URL,
        http_port: int = 3000,
        host: str = "0.0.0.0",
        command: str = "/video",
        max_file_bytes: int = MAX_ATTACHMENT_BYTES,
        admin_cache_seconds: float = ADMIN_CACHE_SECONDS,
        max_concurrent_work: int = 32,
        server: WebServer | None = None,
    ) -> None:
        if not bot_token:
            raise ValueError("SLACK_BOT_TOKEN is required")
        if not app_token and not signing_secret:
            raise ValueError("set SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)")
        self.bot = bot
        self.mode = "socket" if app_token else "http"
        self.host = host
        self.http_port = http_port
        self.command = command
        self._app_token = app_token
        self.client = AsyncWebClient(token=bot_token, base_url=api_url)
        # Wait out Slack's 429s (Retry-After) instead of failing: all Web API work happens after the ack.
        self.client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=2))
        # The signature is checked once, on the raw bytes, before Bolt parses anything (``_http_events``).
        # Every listener only acks and hands its work to ``_spawn``, so Bolt runs it before answering
        # (``process_before_response``): the ack is the answer at once, without Bolt's 10 ms ack polling.
        self.app = AsyncApp(
            client=self.client,
            signing_secret=signing_secret or "",
            request_verification_enabled=False,
            process_before_response=True,
            logger=_BOLT_LOGGER,
        )
        self._signing_secret = signing_secret or ""
        self._forged = RateLimitedLog(logger=log, interval_s=600.0)
        self._unreadable = RateLimitedLog(logger=log, interval_s=600.0)
        self.delivery = SlackDelivery(self.client)
        self.files = SlackFiles(token=bot_token, api_url=api_url, client=self.client, max_bytes=max_file_bytes)
        if bot.cameos is not None:  # registrations are checked against the person's Slack profile photo
            from adapters.slack.profile import SlackProfilePhotos

            bot.cameos.add_profile_photos(
                self.platform, SlackProfilePhotos(client=self.client, files=self.files, token=bot_token)
            )
        self.bot_user_id: str | None = None
        self.team_id: str | None = None
        self._admin_cache: dict[tuple[str, str], tuple[bool, float]] = {}
        self._admin_cache_seconds = admin_cache_seconds
        self._tasks: set[asyncio.Task[None]] = set()
        # Work after the ack runs at most this many at a time, so that a burst of requests is
        # acknowledged first; work tied to a trigger_id (opening a form) does not wait.
        self._work_slots = asyncio.Semaphore(max_concurrent_work)
        self._http: aiohttp.ClientSession | None = None
        self._last_arrival = 0.0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._gate: asyncio.Task[None] | None = None
        self._server: WebServer | None = None
        self._owns_server = False
        if self.mode == "http":
            self._owns_server = server is None
            self._server = server or WebServer(host=host, port=http_port)
            self._server.add_routes([web.post(EVENTS_PATH, self._http_events)])
        self._socket: AsyncSocketModeHandler | None = None
        self._register()
        bot.register(self.delivery)

    def __repr__(self) -> str:  # no token in reprs
        return f"SlackAdapter(mode={self.mode!r}, port={self.port})"

    @classmethod
    def from_settings(
        cls,
        bot: ReelBot,
        settings: Settings,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
        server: WebServer | None = None,
    ) -> SlackAdapter:
        """The adapter ``reelbot serve`` starts; ``port`` overrides ``REELBOT_HTTP_PORT`` (0: any free port).

        ``server``: the shared ``WebServer`` (``bot.web.build_web``) to mount on in HTTP mode."""
        if settings.slack_bot_token is None:
            raise ValueError("SLACK_BOT_TOKEN is required")
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else None
        app_token = settings.slack_app_token.get_secret_value() if settings.slack_app_token else None
        return cls(
            bot,
            bot_token=settings.slack_bot_token.get_secret_value(),
            signing_secret=secret,
            app_token=app_token,
            api_url=settings.slack_api_url,
            http_port=settings.http_port if port is None else port,
            host=host,
            server=server,
        )

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The HTTP port (HTTP mode; the bound one once the server has started)."""
        return self._server.port if self._server is not None else None

    async def start(self) -> None:
        """Checks the token (``auth.test``), then connects Socket Mode or starts its own HTTP server
        (a shared server is started by whoever made it, once every route is mounted)."""
        # One pooled HTTP session for every Web API call, upload and response_url (keep-alive).
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        self.client.session = self._http
        auth = await self.client.auth_test()
        self.bot_user_id = auth.get("user_id")
        self.team_id = auth.get("team_id")
        if self.mode == "socket":
            self._socket = _SocketModeHandler(self.app, self._app_token, on_arrival=self._arrived)
            await self._socket.connect_async()
            log.info("Slack connected over Socket Mode as %s in team %s", self.bot_user_id, self.team_id)
            return
        assert self._server is not None
        if self._owns_server:
            await self._server.start()
        where = f"port {self.port}" if self._owns_server else "the shared web server"
        log.info("Slack HTTP endpoint on %s at %s as %s", where, EVENTS_PATH, self.bot_user_id)

    async def stop(self, *, grace: float = 5.0) -> None:
        """Disconnects, then lets in-flight requests finish for up to ``grace`` seconds."""
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close_async()
            self._socket = None
        if self._server is not None and self._owns_server:
            await self._server.stop()
        self._quiet.set()  # nothing more arrives: let waiting work run now
        if self._gate is not None:
            self._gate.cancel()
        await self.idle(grace)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.files.close()
        if self._http is not None:
            self.client.session = None  # the worker may still post; the SDK then opens its own sessions
            await self._http.close()
            self._http = None

    async def idle(self, limit: float | None = None) -> None:
        """Waits (up to ``limit`` seconds) until no request is being worked on (acked, not yet answered)."""
        deadline = None if limit is None else time.monotonic() + limit
        while self._tasks:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            await asyncio.wait(list(self._tasks), timeout=remaining)

    @property
    def url(self) -> str:
        """The events URL in HTTP mode (after the server started)."""
        if self._server is None:
            raise RuntimeError("the Slack adapter has no HTTP endpoint in Socket Mode")
        return f"{self._server.url}{EVENTS_PATH}"

    async def _http_events(self, request: web.Request) -> web.Response:
        """``POST /slack/events``: the signature is checked once, on the raw bytes, before anything parses
        the body; then the body is checked the way Bolt will parse it, and Bolt dispatches it (its
        listeners ack at once and leave the work to ``_spawn``).

        Unsigned or badly signed: 401 ``{"error": "invalid request"}`` (Bolt's answer). Signed but
        unusable: 400. Neither is logged per request above DEBUG, and never with the body (Bolt used to
        log every unsigned body at INFO); one WARNING every 10 minutes says refusals are happening.
        """
        raw = await request.read()  # the WebServer read it within its body timeout and size limit
        try:
            check_signature(secret=self._signing_secret, headers=request.headers, body=raw, now=time.time())
            text = decode_body(raw, request.headers.get("Content-Type"))
            bolt_request = AsyncBoltRequest(body=text, query=request.query_string, headers=dict(request.headers))
        except SlackRequestRefused as exc:
            return self._refuse(exc.status, exc.reason)
        except (ValueError, TypeError, AttributeError, RecursionError):  # anything else Bolt cannot take
            return self._refuse(400, "the body could not be read")
        self._arrived()
        body = bolt_request.body
        if isinstance(body, dict) and body.get("command") and "payload" not in body:
            # A slash command needs only the 200 (reelbot answers through its response_url), so it is acked
            # here and Bolt sees it once the burst is over: 200 commands at once are all acked in time.
            urgent = not str(body.get("text") or "").strip()  # an empty /video opens a form: trigger ids expire
            self._spawn(self._dispatch(bolt_request), "command", urgent=urgent)
            return web.Response(status=200)
        return await to_aiohttp_response(await self.app.async_dispatch(bolt_request))

    async def _dispatch(self, bolt_request: AsyncBoltRequest) -> None:
        """Bolt's turn with a request already acked (its own ack goes nowhere)."""
        response = await self.app.async_dispatch(bolt_request)
        if response.status >= 400:
            log.debug("Bolt answered %s to an acked Slack command", response.status)

    def _refuse(self, status: int, reason: str) -> web.Response:
        log.debug("refused a Slack request with HTTP %s: %s", status, reason)
        if status == 401:
            self._forged.note("refusing Slack requests with a bad or missing signature (check SLACK_SIGNING_SECRET)")
        else:
            self._unreadable.note("refusing signed Slack requests that cannot be read (%s)", reason)
        return web.json_response({"error": reason}, status=status)

    def _spawn(self, work: Coroutine[Any, Any, None], what: str, *, urgent: bool = False) -> None:
        task = asyncio.create_task(self._guarded(work, what, urgent), name=f"reelbot-slack-{what}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Coroutine[Any, Any, None], what: str, urgent: bool) -> None:
        try:
            if urgent:
                await work
            else:
                await self._after_burst()
                async with self._work_slots:
                    await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handling a Slack %s failed", what)
        finally:
            work.close()  # cancelled before it started: no "never awaited" warning

    def _arrived(self) -> None:
        """A request from Slack arrived: work waits until requests stop arriving (see ``_after_burst``)."""
        self._last_arrival = time.monotonic()
        if self._quiet.is_set():
            self._quiet.clear()
            self._gate = asyncio.create_task(self._open_when_quiet(), name="reelbot-slack-ack-first")

    async def _open_when_quiet(self) -> None:
        while (wait := self._last_arrival + ACK_FIRST_QUIET - time.monotonic()) > 0:
            await asyncio.sleep(wait)
        self._quiet.set()

    async def _after_burst(self) -> None:
        """Acks first: work waits until no request has arrived for ``ACK_FIRST_QUIET`` seconds (at
        most ``ACK_FIRST_MAX_WAIT``), so a burst of commands is acknowledged before any of them
        competes with the others for the event loop and SQLite."""
        if self._quiet.is_set():
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACK_FIRST_MAX_WAIT):
                await self._quiet.wait()

    # --- listeners ---------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.command(self.command)(self._on_command)
        app.event("app_mention")(self._on_app_mention)
        app.event("message")(self._on_message)
        app.shortcut(blocks.SHORTCUT)(self._on_shortcut)
        app.view(blocks.VIDEO_VIEW)(self._on_video_view)
        app.view(blocks.REMIX_VIEW)(self._on_remix_view)
        app.action(re.compile(r"^reelbot_(cancel|reroll|remix|retry)$"))(self._on_job_button)
        app.action(re.compile(r"^cameo_"))(self._on_cameo_button)
        # Events the manifest subscribes to but that need no work.
        app.event("app_home_opened")(self._ignore)
        app.event("app_uninstalled")(self._ignore)
        app.event("tokens_revoked")(self._ignore)

    async def _ignore(self) -> None:
        return None

    async def _on_command(self, ack, body: dict) -> None:
        await ack()
        self._spawn(self._command(body), "command", urgent=not str(body.get("text") or "").strip())

    async def _on_app_mention(self, body: dict, event: dict) -> None:
        self._spawn(self._message(body, event, mentioned=True), "mention")

    async def _on_message(self, body: dict, event: dict) -> None:
        self._spawn(self._message(body, event, mentioned=False), "message")

    async def _on_shortcut(self, ack, body: dict) -> None:
        await ack()
        self._spawn(self._shortcut(body), "shortcut", urgent=True)

    async def _on_job_button(self, ack, body: dict, action: dict) -> None:
        await ack()
        self._spawn(self._job_button(body, action), "button", urgent=action.get("action_id") == blocks.REMIX)

    async def _on_cameo_button(self, ack, body: dict, action: dict) -> None:
        await ack()
        self._spawn(self._cameo_button(body, action), "button")

    async def _on_video_view(self, ack, body: dict, view: dict) -> None:
        values = blocks.view_values(view)
        text = self._form_text(values)
        try:
            command = parse(text, self.bot.policy.rules)
        except CommandError as exc:
            await ack(response_action="errors", errors={self._error_block(str(exc)): str(exc)[:150]})
            return
        if not isinstance(command, VideoCommand):
            await ack(response_action="errors", errors={blocks.PROMPT_BLOCK: "Say what the clip should show."})
            return
        await ack()
        self._spawn(self._video_view(body, view, values, text), "form")

    async def _on_remix_view(self, ack, body: dict, view: dict) -> None:
        prompt = str(blocks.view_values(view).get(blocks.PROMPT_BLOCK) or "").strip()
        if not prompt:
            await ack(response_action="errors", errors={blocks.PROMPT_BLOCK: "Say what to change."})
            return
        await ack()
        self._spawn(self._remix_view(body, view, prompt), "remix")

    # --- who is asking -----------------------------------------------------------------------

    async def requester(self, team_id: str, user_id: str) -> Requester:
        """The person, with ``is_admin`` from ``users.info`` (workspace admins and owners), cached."""
        return Requester(
            platform=self.platform,
            workspace_id=team_id or self.team_id or "",
            user_id=user_id,
            display_name=f"<@{user_id}>",
            is_admin=await self._is_workspace_admin(team_id, user_id),
        )

    async def _is_workspace_admin(self, team_id: str, user_id: str) -> bool:
        now = time.monotonic()
        cached = self._admin_cache.get((team_id, user_id))
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            response = await self.client.users_info(user=user_id)
            user = response.get("user") or {}
            admin = bool(user.get("is_admin") or user.get("is_owner") or user.get("is_primary_owner"))
        except Exception as exc:  # a missing users:read scope must not stop the request
            log.warning(
                "users.info failed (%s); treating the user as a non-admin", slack_error_code(exc) or type(exc).__name__
            )
            return False
        self._admin_cache[(team_id, user_id)] = (admin, now + self._admin_cache_seconds)
        return admin

    # --- answering ---------------------------------------------------------------------------

    async def tell(
        self,
        user_id: str,
        text: str,
        *,
        channel_id: str | None = None,
        thread_ts: str | None = None,
        response_url: str | None = None,
        actions: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Says something only ``user_id`` sees: via the response URL, else ephemerally, else by DM."""
        raw, text = text, blocks.slack_text(text, private=True)
        rendered = blocks.reply_blocks(text, actions) if actions else None
        if response_url:
            try:
                webhook = AsyncWebhookClient(response_url, session=self._http)
                result = await webhook.send(
                    text=text, blocks=rendered, response_type="ephemeral", replace_original=False
                )
                if result.status_code == 200:
                    return
                log.warning("response_url answered HTTP %s", result.status_code)
            except Exception as exc:
                log.warning("response_url failed: %s", type(exc).__name__)
        if channel_id:
            try:
                await self.client.chat_postEphemeral(
                    channel=channel_id, user=user_id, text=text, blocks=rendered, thread_ts=thread_ts
                )
                return
            except Exception as exc:
                log.info("ephemeral reply failed (%s); sending a DM", slack_error_code(exc) or type(exc).__name__)
        try:
            await self.delivery.direct_message(self.team_id or "", user_id, raw, actions)
        except Exception as exc:
            log.warning("could not answer a user at all: %s", getattr(exc, "user_message", type(exc).__name__))

    async def _answer(self, reply: Reply, user_id: str, **where: Any) -> None:
        await self.tell(user_id, reply.text, actions=reply.actions, **where)

    # --- /video ------------------------------------------------------------------------------

    async def _command(self, body: dict) -> None:
        user_id = str(body.get("user_id") or "")
        channel_id = str(body.get("channel_id") or "")
        response_url = body.get("response_url")
        text = normalize_text(str(body.get("text") or "")).strip()
        try:
            if not text:
                await self._open_video_form(
                    body.get("trigger_id"),
                    blocks.ModalContext(channel_id=channel_id),
                    user_id=user_id,
                    response_url=response_url,
                )
                return
            requester = await self.requester(str(body.get("team_id") or ""), user_id)
            request = ChatRequest(
                requester=requester,
                request_key=f"slack:cmd:{body.get('trigger_id') or body.get('response_url')}",
                channel_id=channel_id,
                text=text,
                mentions=mentions_in(text),
            )
            reply = await self.bot.handle(request)
        except Exception:
            log.exception("a /video command failed")
            reply = Reply(CATCH_ALL, ok=False)
        await self._answer(reply, user_id, channel_id=channel_id, response_url=response_url)

    async def _open_video_form(
        self,
        trigger_id: str | None,
        context: blocks.ModalContext,
        *,
        user_id: str,
        response_url: str | None = None,
        prompt: str = "",
        file_input: bool = True,
        image_note: str | None = None,
    ) -> None:
        names = self.bot.providers.names
        default = self.bot.catalog.default_for(names)
        view = blocks.video_modal(
            self.bot.catalog.enabled(names),
            context,
            default_model=default.name if default is not None else None,
            prompt=prompt,
            file_input=file_input,
            image_note=image_note,
        )
        try:
            await self.client.views_open(trigger_id=trigger_id, view=view)
        except Exception as exc:
            log.warning("views.open failed: %s", slack_error_code(exc) or type(exc).__name__)
            await self.tell(
                user_id,
                "I couldn't open the form; type `/video PROMPT [flags]` instead (`/video help` lists the flags).",
                channel_id=context.channel_id or None,
                response_url=response_url,
            )

    # --- mentions and direct messages --------------------------------------------------------

    async def _message(self, body: dict, event: dict, *, mentioned: bool) -> None:
        if event.get("subtype") not in _MESSAGE_SUBTYPES or event.get("bot_id") or not event.get("user"):
            return
        user_id = str(event["user"])
        if user_id == self.bot_user_id:
            return
        raw = str(event.get("text") or "")
        bot_token = f"<@{self.bot_user_id}" if self.bot_user_id else None
        in_dm = event.get("channel_type") == "im"
        if not mentioned and not in_dm and not (bot_token and bot_token in raw):
            return  # ordinary chatter in a channel
        event_id = body.get("event_id")
        if event_id and not await self.bot.store.first_sighting(f"slack:event:{event_id}"):
            log.info("ignoring a repeated Slack event %s", event_id)
            return
        channel_id = str(event.get("channel") or "")
        ts = str(event.get("ts") or "")
        request_key = f"slack:msg:{channel_id}:{ts}"
        # The same post arrives as both `message` and `app_mention`: the first one handles it.
        if not await self.bot.store.first_sighting(request_key):
            return
        thread_ts = event.get("thread_ts")
        team_id = str(body.get("team_id") or event.get("team") or "")
        text = self._strip_bot_mention(raw)
        where = {"channel_id": channel_id, "thread_ts": thread_ts}
        try:
            reply = await self._from_message(
                team_id, user_id, channel_id, thread_ts, text, list(event.get("files") or []), request_key
            )
        except Exception:
            log.exception("a Slack mention failed")
            reply = Reply(CATCH_ALL, ok=False)
        await self._answer(reply, user_id, **where)

    def _strip_bot_mention(self, raw: str) -> str:
        if self.bot_user_id:
            raw = re.sub(rf"<@{re.escape(self.bot_user_id)}(?:\|[^>]*)?>", " ", raw)
        text = normalize_text(raw).strip()
        if text.lower().startswith(self.command + " ") or text.lower() == self.command:
            text = text[len(self.command) :].strip()
        return text

    async def _from_message(
        self,
        team_id: str,
        user_id: str,
        channel_id: str,
        thread_ts: str | None,
        text: str,
        files: list[dict],
        request_key: str,
    ) -> Reply:
        """A request from message text plus its files (checked before anything is downloaded)."""
        try:
            command = parse(text, self.bot.policy.rules)
        except CommandError as exc:
            return Reply(str(exc), ok=False)
        attachments: tuple[InputFile, ...] = ()
        registering = isinstance(command, CameoCommand) and command.action == "register"
        if files and (isinstance(command, VideoCommand) or registering):
            refused = await self._fetch(files, allow_video=registering)
            if isinstance(refused, Reply):
                return refused
            attachments = refused
        requester = await self.requester(team_id, user_id)
        request = ChatRequest(
            requester=requester,
            request_key=request_key,
            channel_id=channel_id,
            thread_id=thread_ts,
            text=text,
            attachments=attachments,
            mentions=mentions_in(text),
        )
        return await self.bot.handle(request)

    async def _fetch(self, files: list[dict], *, allow_video: bool = False) -> tuple[InputFile, ...] | Reply:
        if len(files) > 1:
            return Reply("Attach one image at most; it becomes the clip's first frame.", ok=False)
        try:
            return (await self.files.download(files[0], allow_video=allow_video),)
        except SlackFileRefused as exc:
            return Reply(f"{exc.user_message} Nothing was charged.", ok=False)

    # --- the message shortcut and the form ------------------------------------------------------

    async def _shortcut(self, body: dict) -> None:
        user_id = str((body.get("user") or {}).get("id") or "")
        channel_id = str((body.get("channel") or {}).get("id") or "")
        message = body.get("message") or {}
        files = [f for f in message.get("files") or [] if isinstance(f, dict)]
        images = [f for f in files if _is_image(f)]
        note = None
        if images:
            note = f"The clip starts from the picture *{blocks.slack_text(str(images[0].get('name') or 'image'))}*."
            if len(images) > 1:
                note += " (The message has several; I use the first.)"
        elif files:
            note = "That message has no JPEG, PNG or WEBP picture, so the clip starts from the prompt alone."
        prompt = self._strip_bot_mention(str(message.get("text") or ""))
        thread = message.get("thread_ts") or message.get("ts")
        context = blocks.ModalContext(
            channel_id=channel_id,
            thread_ts=str(thread) if thread else None,
            file_ids=tuple(str(f["id"]) for f in images[:1] if f.get("id")),
        )
        await self._open_video_form(
            body.get("trigger_id"),
            context,
            user_id=user_id,
            response_url=body.get("response_url"),
            prompt=prompt,
            file_input=False,
            image_note=note,
        )

    def _form_text(self, values: dict[str, object]) -> str:
        prompt = blocks.literal_prompt(str(values.get(blocks.PROMPT_BLOCK) or ""))
        flags = []
        for block_id in (blocks.MODEL_BLOCK, blocks.SIZE_BLOCK, blocks.SECONDS_BLOCK):
            value = values.get(block_id)
            if isinstance(value, str) and value:
                flags.append(f"--{block_id} {value}")
        sound = values.get(blocks.AUDIO_BLOCK)
        if sound in ("on", "off"):
            flags.append("--audio" if sound == "on" else "--silent")
        return " ".join([prompt, *flags])

    @staticmethod
    def _error_block(message: str) -> str:
        return blocks.error_block(message)

    async def _video_view(self, body: dict, view: dict, values: dict[str, object], text: str) -> None:
        user = body.get("user") or {}
        user_id = str(user.get("id") or "")
        team_id = str(user.get("team_id") or (body.get("team") or {}).get("id") or "")
        context = blocks.ModalContext.load(view.get("private_metadata"))
        where = {"channel_id": context.channel_id or None, "thread_ts": context.thread_ts}
        try:
            files = [f for f in values.get(blocks.IMAGE_BLOCK) or [] if isinstance(f, dict)]
            if not files and context.file_ids:
                try:
                    files = [await self.files.info(context.file_ids[0])]
                except SlackFileRefused as exc:
                    await self.tell(user_id, f"{exc.user_message} Nothing was charged.", **where)
                    return
            reply = await self._from_message(
                team_id, user_id, context.channel_id, context.thread_ts, text, files, f"slack:view:{view.get('id')}"
            )
        except Exception:
            log.exception("a Slack form submission failed")
            reply = Reply(CATCH_ALL, ok=False)
        await self._answer(reply, user_id, **where)

    # --- buttons -------------------------------------------------------------------------------

    @staticmethod
    def _who(body: dict) -> tuple[str, str]:
        user = body.get("user") or {}
        team_id = str(user.get("team_id") or (body.get("team") or {}).get("id") or "")
        return team_id, str(user.get("id") or "")

    async def _job_button(self, body: dict, action: dict) -> None:
        team_id, user_id = self._who(body)
        channel_id = str((body.get("channel") or {}).get("id") or "") or None
        where = {"channel_id": channel_id, "response_url": body.get("response_url")}
        job_id = str(action.get("value") or "").strip()
        action_id = action.get("action_id")
        try:
            requester = await self.requester(team_id, user_id)
            if action_id == blocks.REMIX:
                reply = await self._open_remix_form(body, requester, job_id)
                if reply is None:
                    return
            else:
                key = f"slack:action:{body.get('trigger_id') or action.get('action_ts')}"
                reply = await self.bot.press(requester, str(action_id).removeprefix("reelbot_"), job_id, key)
        except Exception:
            log.exception("a Slack button failed")
            reply = Reply(CATCH_ALL, ok=False)
        await self._answer(reply, user_id, **where)

    async def _open_remix_form(self, body: dict, requester: Requester, job_id: str) -> Reply | None:
        job = await self.bot.remix_target(requester, job_id)
        if isinstance(job, Reply):
            return job
        context = blocks.ModalContext(channel_id=job.channel_id, thread_ts=job.thread_id or job.card_ref, job_id=job.id)
        settings = f"{job.options.model} · {job.options.size} · {job.options.seconds} s"
        try:
            await self.client.views_open(
                trigger_id=body.get("trigger_id"), view=blocks.remix_modal(context, job.prompt, settings)
            )
        except Exception as exc:
            log.warning("views.open for a remix failed: %s", slack_error_code(exc) or type(exc).__name__)
            return Reply("I couldn't open the remix form; please press Remix again.", ok=False)
        return None

    async def _remix_view(self, body: dict, view: dict, prompt: str) -> None:
        team_id, user_id = self._who(body)
        context = blocks.ModalContext.load(view.get("private_metadata"))
        where = {"channel_id": context.channel_id or None, "thread_ts": context.thread_ts}
        try:
            requester = await self.requester(team_id, user_id)
            reply = await self.bot.press(
                requester,
                "remix",
                context.job_id or "",
                f"slack:view:{view.get('id')}",
                text=blocks.literal_prompt(prompt),
            )
        except Exception:
            log.exception("a Slack remix failed")
            reply = Reply(CATCH_ALL, ok=False)
        await self._answer(reply, user_id, **where)

    async def _cameo_button(self, body: dict, action: dict) -> None:
        team_id, user_id = self._who(body)
        channel_id = str((body.get("channel") or {}).get("id") or "") or None
        where = {"channel_id": channel_id, "response_url": body.get("response_url")}
        name, _, argument = str(action.get("action_id") or "").partition(":")
        try:
            requester = await self.requester(team_id, user_id)
            key = f"slack:action:{body.get('trigger_id') or action.get('action_ts')}"
            reply = await self.bot.press(requester, name, argument, key)
        except Exception:
            log.exception("a Slack cameo button failed")
            reply = Reply(CATCH_ALL, ok=False)
        await self._answer(reply, user_id, **where)


__all__ = ["SlackAdapter", "mentions_in", "normalize_text"]
