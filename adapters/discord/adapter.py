"""The Discord adapter: ``/video`` application commands, persistent buttons, and the Discord delivery.

Every interaction is deferred at once (ephemeral, "thinking"), then translated into the shared
command language and passed to ``ReelBot.handle``; the answer is an ephemeral follow-up. The job
card, its thread, progress edits and the clip are posted with the bot token by
``DiscordDelivery``, so nothing after the first minute depends on the 15-minute interaction token.

Adding subcommands (e.g. ``/video cameo ...``)::

    cameo = app_commands.Group(name="cameo", description="Your cameo")

    @cameo.command(name="register", description="...")
    async def register(interaction: discord.Interaction, photo: discord.Attachment) -> None:
        await adapter.run_command(interaction, "cameo register", image=photo)

    adapter.add_subgroup(cameo)        # before adapter.start(), which syncs the commands

``run_command`` defers, refuses bad text with the core's message before downloading anything,
fetches ``image`` (content type and size checked first, CDN hosts only) and answers ephemerally.
Build the text so that no option value can turn it into another command (see ``job_text``).

This module deliberately has no ``from __future__ import annotations``: discord.py reads the
command callbacks' annotations at definition time.
"""

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from adapters.discord.attachments import AttachmentFetcher, AttachmentInfo, AttachmentRefused, origin_of
from adapters.discord.delivery import DiscordDelivery, discord_text
from adapters.discord.views import REMIX_MODAL, ActionButton, JobButton, RemixModal, action_buttons, modal_value
from bot import texts
from bot.catalog import ASPECT_WORDS, SIZES
from bot.commands import SUBCOMMANDS, CommandError, CommandRules, parse
from bot.config import Settings
from bot.core import CATCH_ALL, MAX_ATTACHMENT_BYTES, ReelBot, Reply
from bot.jobs import ChatRequest, InputFile, Requester

log = logging.getLogger(__name__)

DISCORD_API_URL = "https://discord.com/api/v10"
DISCORD_GATEWAY_URL = "wss://gateway.discord.gg/"
_JOB_ID = re.compile(r"[A-Za-z0-9]{1,40}")


class DiscordStartError(RuntimeError):
    """The adapter could not connect; the message is one line for the operator (never the token)."""


class _Redact(logging.Filter):
    """Masks the bot token and interaction tokens (discord.py logs webhook URLs at DEBUG)."""

    _URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?'\"]+")
    _FIELD_TOKEN = re.compile(r"""(['"]token['"]\s*:\s*['"])[^'"]+""")  # gateway payloads logged at DEBUG

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record: leave it to the handler
            return True
        redacted = self._scrub(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True

    def _scrub(self, text: str) -> str:
        text = self._FIELD_TOKEN.sub(r"\1[redacted]", self._URL_TOKEN.sub(r"\1[redacted]", text))
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text


def _chunks(text: str, limit: int = 2000) -> list[str]:
    """Splits a long answer at line breaks into Discord-sized messages."""
    out: list[str] = []
    current = ""
    for line in text.splitlines() or [""]:
        while len(line) > limit:
            if current:
                out.append(current)
                current = ""
            out.append(line[:limit])
            line = line[limit:]
        candidate = f"{current}\n{line}" if current else line
        if len(candidate) > limit:
            out.append(current)
            current = line
        else:
            current = candidate
    if current or not out:
        out.append(current)
    return out


def video_text(
    prompt: str,
    *,
    model: str | None = None,
    seconds: int | None = None,
    size: str | None = None,
    cameo: str | None = None,
    aspect: str | None = None,
    resolution: str | None = None,
    audio: bool | None = None,
    seed: int | None = None,
    negative: str | None = None,
) -> str:
    """``/video create`` options as the shared command text; flags typed in the prompt keep working.

    Nothing is quoted, so ``--pro`` in the prompt is a flag; only a first word that would read as a
    subcommand (``jobs``, ``help``...) is quoted so the text stays a clip request. The catalog checks the
    options against the model afterwards, like any typed command.
    """
    words = prompt.strip()
    first = words.split(maxsplit=1)[0] if words else ""
    if first.lower() in SUBCOMMANDS and '"' not in first:
        words = f'"{first}"' + words[len(first) :]
    parts = [words]
    if model:
        parts += ["--model", model]
    if seconds is not None:
        parts += ["--seconds", str(seconds)]
    if size:
        parts += ["--size", size]
    if aspect:
        parts += ["--aspect", aspect]
    if resolution:
        parts += ["--resolution", resolution]
    if audio is not None:
        parts.append("--audio" if audio else "--silent")
    if seed is not None:
        parts += ["--seed", str(seed)]
    if negative and negative.strip():
        parts += ["--negative", '"' + " ".join(negative.replace('"', "'").split()) + '"']
    if cameo:
        parts += ["--cameo", cameo]
    return " ".join(parts)


def job_text(verb: str, job: str) -> str:
    """``cancel JOB`` / ``retry JOB``; anything that is not one job id stays a job id, never a prompt.

    (``cancel two words`` would parse as a clip request: a typo must not start a paid render.)
    """
    cleaned = job.strip().strip("`#")
    if not _JOB_ID.fullmatch(cleaned):
        cleaned = re.sub(r"[^A-Za-z0-9]", "", cleaned)[:40] or "?"
    return f"{verb} {cleaned}"


def _workspace(interaction: discord.Interaction) -> str:
    return str(interaction.guild_id) if interaction.guild_id else "dm"


class ReelClient(discord.Client):
    """The discord.py client; ``reelbot`` is the adapter the persistent buttons call back into."""

    def __init__(self, adapter: "DiscordAdapter", **options: Any) -> None:
        intents = discord.Intents.none()
        intents.guilds = True  # GUILD_CREATE: channels, threads and the guild's upload limit
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False  # reelbot never joins voice
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none(), **options)
        self.reelbot = adapter
        self.tree = app_commands.CommandTree(self)
        self.tree.error(adapter.on_command_error)

    async def setup_hook(self) -> None:
        await self.reelbot.setup(self)

    async def on_ready(self) -> None:
        self.reelbot.connected()

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        await self.reelbot.on_interaction(interaction)


class DiscordAdapter:
    """Runs reelbot on Discord.

    Args:
        bot: the core; the adapter registers its ``DiscordDelivery`` on it.
        token: the bot token (``DISCORD_BOT_TOKEN``); kept private, never logged.
        api_url / gateway_url: Discord's endpoints, or a proxy's / the test fake's.
        guild_id: sync commands to this guild only (instant) instead of globally.
        guild_ready_timeout: discord.py's wait for GUILD_CREATEs before ``ready`` (short in tests).
        card_interval: seconds between two edits of one job card.
        ready_timeout: how long ``start`` waits for the gateway's READY.
    """

    platform = "discord"

    def __init__(
        self,
        bot: ReelBot,
        *,
        token: str,
        api_url: str = DISCORD_API_URL,
        gateway_url: str = DISCORD_GATEWAY_URL,
        guild_id: int | None = None,
        guild_ready_timeout: float = 2.0,
        card_interval: float = 3.0,
        ready_timeout: float = 60.0,
        max_attachment_bytes: int = MAX_ATTACHMENT_BYTES,
    ) -> None:
        if not token:
            raise DiscordStartError("DISCORD_BOT_TOKEN is empty")
        self.bot = bot
        self.__token = token
        self.api_url = api_url.rstrip("/")
        self.gateway_url = gateway_url
        self.guild_id = guild_id
        self.ready_timeout = ready_timeout
        extra = [origin_of(self.api_url)] if self.api_url != DISCORD_API_URL else []
        self.fetcher = AttachmentFetcher(max_bytes=max_attachment_bytes, extra_origins=extra)
        self.client = ReelClient(self, guild_ready_timeout=guild_ready_timeout)
        self.delivery = DiscordDelivery(self.client, min_update_interval=card_interval)
        self.video = self._build_video_group(bot.policy.rules)
        if bot.cameos is not None:
            from adapters.discord.cameo import add_cameo_commands
            from adapters.discord.profile import DiscordProfilePhotos, cdn_for

            add_cameo_commands(self)
            # Registrations are checked against the person's Discord avatar.
            bot.cameos.add_profile_photos(
                self.platform,
                DiscordProfilePhotos(
                    client=self.client, cdn_url=cdn_for(self.api_url), extra_origins=self.fetcher.extra_origins
                ),
            )
        self.client.tree.add_command(self.video)
        bot.register(self.delivery)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._saved_endpoints: tuple[str, yarl.URL] | None = None
        self._filter = _Redact([token])
        self._filtered: list[logging.Logger] = []
        self.synced: list[app_commands.AppCommand] = []

    def __repr__(self) -> str:
        return f"<DiscordAdapter api={self.api_url!r} guild={self.guild_id!r}>"

    @classmethod
    def from_settings(cls, bot: ReelBot, settings: Settings, **options: Any) -> "DiscordAdapter":
        if settings.discord_bot_token is None:
            raise DiscordStartError("DISCORD_BOT_TOKEN is not set")
        return cls(
            bot,
            token=settings.discord_bot_token.get_secret_value(),
            api_url=settings.discord_api_url,
            gateway_url=settings.discord_gateway_url,
            guild_id=settings.discord_guild_id,
            **options,
        )

    def add_subgroup(self, group: app_commands.Group) -> None:
        """Adds ``/video <group> ...`` (call before ``start``, which syncs)."""
        self.video.add_command(group)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Logs in, syncs commands, connects the gateway; returns once READY (the client keeps running)."""
        self._apply_endpoints()
        self._install_log_filter()
        self._session = aiohttp.ClientSession(trust_env=False)
        self._ready.clear()
        self._task = asyncio.create_task(self._run(), name="reelbot-discord")
        ready = asyncio.create_task(self._ready.wait())
        done, _ = await asyncio.wait(
            {self._task, ready}, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            log.info(
                "discord: connected as %s; commands synced %s",
                self.client.user,
                f"to guild {self.guild_id}" if self.guild_id else "globally",
            )
            return
        ready.cancel()
        problem = "timed out waiting for Discord's gateway"
        if self._task in done and self._task.exception() is not None:
            exc = self._task.exception()
            if isinstance(exc, discord.LoginFailure):
                problem = "Discord refused DISCORD_BOT_TOKEN (check the token in the Developer Portal)"
            elif isinstance(exc, discord.PrivilegedIntentsRequired):
                problem = "Discord refused the gateway intents"
            else:
                problem = f"could not connect ({type(exc).__name__})"
        await self.stop()
        raise DiscordStartError(f"Discord: {problem}.")

    async def _run(self) -> None:
        await self.client.start(self.__token, reconnect=True)

    async def stop(self) -> None:
        """Shows pending card edits, disconnects, and restores the endpoints and logging."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.delivery.flush(), timeout=10)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.close(), timeout=10)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=10)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._restore_endpoints()
        self._remove_log_filter()

    def _apply_endpoints(self) -> None:
        self._saved_endpoints = (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)
        if self.api_url != DISCORD_API_URL:
            Route.BASE = self.api_url  # type: ignore[misc]
        if self.gateway_url != DISCORD_GATEWAY_URL:
            DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def _restore_endpoints(self) -> None:
        if self._saved_endpoints is not None:
            Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = self._saved_endpoints  # type: ignore[misc]
            self._saved_endpoints = None

    def _install_log_filter(self) -> None:
        names = [name for name in logging.Logger.manager.loggerDict if name.startswith(("discord", "adapters.discord"))]
        for name in ["discord", *names]:
            logger = logging.getLogger(name)
            if self._filter not in logger.filters:
                logger.addFilter(self._filter)
                self._filtered.append(logger)

    def _remove_log_filter(self) -> None:
        for logger in self._filtered:
            logger.removeFilter(self._filter)
        self._filtered.clear()

    async def setup(self, client: discord.Client) -> None:
        """discord.py's setup_hook: persistent buttons, then the command sync."""
        client.add_dynamic_items(JobButton, ActionButton)
        tree = self.client.tree
        try:
            if self.guild_id:
                guild = discord.Object(self.guild_id)
                tree.copy_global_to(guild=guild)
                self.synced = await tree.sync(guild=guild)
            else:
                self.synced = await tree.sync()
        except discord.HTTPException as exc:
            log.error(
                "discord: could not sync the /video commands (HTTP %s, code %s); the ones Discord already "
                "has stay in place",
                exc.status,
                exc.code,
            )

    def connected(self) -> None:
        self._ready.set()

    # --- commands -------------------------------------------------------------------------------

    def _build_video_group(self, rules: CommandRules) -> app_commands.Group:
        """The /video commands; the model, length, aspect and resolution choices come from the catalog's
        models that a configured provider serves (Discord allows 25 choices per option)."""
        adapter = self
        video = app_commands.Group(name="video", description="Make short AI video clips")
        admin = app_commands.Group(name="admin", description="Budgets and usage (Manage Server)", parent=video)
        catalog, names = self.bot.catalog, self.bot.providers.names
        enabled = catalog.enabled(names)[:25]
        default = catalog.default_for(names)

        def model_label(m) -> str:
            cheapest = m.cheapest_per_second()
            price = f"from {texts.format_usd(cheapest)}/s" if cheapest is not None else "no price"
            return f"{m.name}{' (default)' if m is default else ''} · {price}"[:100]

        def size_label(size: str) -> str:
            aspect, resolution = next(key for key, value in SIZES.items() if value == size)
            return f"{size} ({ASPECT_WORDS[aspect]}, {resolution})"

        model_choices = [app_commands.Choice(name=model_label(m), value=m.name) for m in enabled]
        seconds = sorted({s for m in enabled for s in m.durations})[:25]
        second_choices = [app_commands.Choice(name=f"{n} seconds", value=n) for n in seconds]
        sizes = list(dict.fromkeys(size for m in enabled for size in m.sizes()))[:25]
        size_choices = [app_commands.Choice(name=size_label(size), value=size) for size in sizes]
        aspects = [a for a in ("16:9", "9:16", "1:1") if any(a in m.aspects for m in enabled)]
        aspect_choices = [app_commands.Choice(name=f"{a} ({ASPECT_WORDS[a]})", value=a) for a in aspects]
        resolutions = [r for r in ("480p", "720p", "1080p") if any(r in m.resolutions for m in enabled)]
        resolution_choices = [app_commands.Choice(name=r, value=r) for r in resolutions]
        sound_choices = [
            app_commands.Choice(name="with sound", value="on"),
            app_commands.Choice(name="silent (cheaper where the model lets you choose)", value="off"),
        ]

        @video.command(name="create", description="Make a clip from a prompt, optionally starting from a picture")
        @app_commands.describe(
            prompt="What to film; flags such as --model veo-3.1-lite --seconds 8 work here too",
            image="A JPEG, PNG or WEBP picture to start the clip from",
            model=f"Which model (default {default.name if default else 'none'}); /video models compares them",
            seconds="How long the clip is (each model takes its own lengths)",
            size="Width x height (or choose aspect and resolution)",
            aspect="Landscape, portrait or square",
            resolution="720p or 1080p (each model takes its own)",
            sound="With sound or silent, where the model lets you choose (the price follows)",
            seed="A number for repeatable results, where the model takes one",
            negative="What the clip should not show, where the model takes it",
            cameo="Someone whose registered cameo to use (they must allow it)",
        )
        @app_commands.choices(
            model=model_choices,
            seconds=second_choices,
            size=size_choices,
            aspect=aspect_choices,
            resolution=resolution_choices,
            sound=sound_choices,
        )
        async def create(
            interaction: discord.Interaction,
            prompt: app_commands.Range[str, 1, 6000],
            image: discord.Attachment | None = None,
            model: str | None = None,
            seconds: int | None = None,
            size: str | None = None,
            aspect: str | None = None,
            resolution: str | None = None,
            sound: str | None = None,
            seed: app_commands.Range[int, 0, 4_294_967_295] | None = None,
            negative: app_commands.Range[str, 1, 2000] | None = None,
            cameo: discord.User | None = None,
        ) -> None:
            mentions = {cameo.mention: str(cameo.id)} if cameo is not None else {}
            text = video_text(
                prompt,
                model=model,
                seconds=seconds,
                size=size,
                aspect=aspect,
                resolution=resolution,
                audio=None if sound is None else sound == "on",
                seed=seed,
                negative=negative,
                cameo=cameo.mention if cameo is not None else None,
            )
            await adapter.run_command(interaction, text, image=image, mentions=mentions)

        @video.command(name="models", description="The models here: what each takes and costs")
        async def models(interaction: discord.Interaction) -> None:
            await adapter.run_command(interaction, "models")

        @video.command(name="budget", description="Your budget: spent, reserved and left")
        async def budget(interaction: discord.Interaction) -> None:
            await adapter.run_command(interaction, "budget")

        @video.command(name="jobs", description="Your latest video jobs")
        async def jobs(interaction: discord.Interaction) -> None:
            await adapter.run_command(interaction, "jobs")

        @video.command(name="cancel", description="Cancel one of your jobs (not charged)")
        @app_commands.describe(job="The job id, e.g. k3m9qr2x")
        async def cancel(interaction: discord.Interaction, job: app_commands.Range[str, 1, 40]) -> None:
            await adapter.run_command(interaction, job_text("cancel", job))

        @video.command(name="retry", description="Deliver a rendered clip again")
        @app_commands.describe(job="The job id, e.g. k3m9qr2x")
        async def retry(interaction: discord.Interaction, job: app_commands.Range[str, 1, 40]) -> None:
            await adapter.run_command(interaction, job_text("retry", job))

        @video.command(name="help", description="How to use reelbot, or everything about one model")
        @app_commands.describe(model="A model to explain")
        @app_commands.choices(model=model_choices)
        async def help_(interaction: discord.Interaction, model: str | None = None) -> None:
            await adapter.run_command(interaction, f"help {model}" if model else "help")

        async def job_choices(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return await adapter.job_choices(interaction, current)

        cancel.autocomplete("job")(job_choices)
        retry.autocomplete("job")(job_choices)

        @admin.command(name="budget", description="Set a member's budget, or the default for everyone here")
        @app_commands.describe(
            amount="US dollars per period, e.g. 20 or 12.50",
            user="The member; leave empty to set the default for everyone here",
        )
        async def admin_budget(
            interaction: discord.Interaction, amount: app_commands.Range[str, 1, 20], user: discord.User | None = None
        ) -> None:
            target = user.mention if user is not None else "default"
            mentions = {user.mention: str(user.id)} if user is not None else {}
            await adapter.run_command(interaction, f"admin budget {target} {amount}", mentions=mentions)

        @admin.command(name="usage", description="Everyone's usage this period")
        async def admin_usage(interaction: discord.Interaction) -> None:
            await adapter.run_command(interaction, "admin usage")

        return video

    async def job_choices(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        """Autocomplete for job ids: the asker's latest jobs."""
        try:
            found = await self.bot.store.jobs_for_user("discord", _workspace(interaction), str(interaction.user.id))
        except Exception:
            log.exception("job autocomplete failed")
            return []
        current = current.strip().lower()
        choices = []
        for job in found:
            if current and current not in job.id:
                continue
            label = f"{job.id} · {texts.status_text(job)} · {texts.short_prompt(job.prompt, 40)}"
            choices.append(app_commands.Choice(name=label[:100], value=job.id))
        return choices[:25]

    # --- answering ------------------------------------------------------------------------------

    def _requester(self, interaction: discord.Interaction, workspace_id: str | None = None) -> Requester:
        user = interaction.user
        workspace = workspace_id or _workspace(interaction)
        permissions = interaction.permissions
        in_guild = interaction.guild_id is not None and workspace == str(interaction.guild_id)
        is_admin = in_guild and (permissions.manage_guild or permissions.administrator)
        return Requester(
            platform="discord",
            workspace_id=workspace,
            user_id=str(user.id),
            display_name=user.mention,
            is_admin=bool(is_admin),
        )

    @staticmethod
    def _place(interaction: discord.Interaction) -> tuple[str, str | None]:
        channel = interaction.channel
        if isinstance(channel, discord.Thread):
            return str(channel.parent_id), str(channel.id)
        return str(interaction.channel_id), None

    def _request(
        self, interaction: discord.Interaction, text: str, files: tuple[InputFile, ...], mentions: dict[str, str] | None
    ) -> ChatRequest:
        channel_id, thread_id = self._place(interaction)
        return ChatRequest(
            requester=self._requester(interaction),
            request_key=self._key(interaction),
            channel_id=channel_id,
            thread_id=thread_id,
            text=text,
            attachments=files,
            mentions=dict(mentions or {}),
        )

    @staticmethod
    def _key(interaction: discord.Interaction) -> str:
        return f"discord:interaction:{interaction.id}"

    def _note(self, interaction: discord.Interaction) -> None:
        self.delivery.note_limit(_workspace(interaction), getattr(interaction, "filesize_limit", None))

    async def _defer(self, interaction: discord.Interaction) -> bool:
        """Acknowledges within Discord's 3 s; false when it is too late or already done (do nothing then)."""
        try:
            await interaction.response.defer(ephemeral=True, thinking=True)
            return True
        except discord.InteractionResponded:
            return False
        except discord.HTTPException as exc:
            if exc.code == 40060:
                log.info("interaction %s was already acknowledged (delivered twice); ignoring it", interaction.id)
            else:
                log.warning(
                    "could not acknowledge interaction %s (HTTP %s, code %s); nothing was started",
                    interaction.id,
                    exc.status,
                    exc.code,
                )
            return False
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.warning(
                "could not acknowledge interaction %s (%s); nothing was started", interaction.id, type(exc).__name__
            )
            return False

    async def _answer(self, interaction: discord.Interaction, reply: Reply) -> None:
        view = action_buttons(_workspace(interaction), reply.actions) if reply.actions else None
        parts = _chunks(discord_text(reply.text))
        for index, part in enumerate(parts):
            kwargs: dict[str, Any] = {}
            if view is not None and index == len(parts) - 1:
                kwargs["view"] = view
            try:
                await interaction.followup.send(
                    part, ephemeral=reply.private, allowed_mentions=discord.AllowedMentions.none(), **kwargs
                )
            except (TimeoutError, discord.HTTPException, aiohttp.ClientError) as exc:
                log.warning("could not answer interaction %s: %s", interaction.id, type(exc).__name__)
                return

    async def run_command(
        self,
        interaction: discord.Interaction,
        text: str,
        *,
        image: discord.Attachment | None = None,
        mentions: dict[str, str] | None = None,
        fetcher: AttachmentFetcher | None = None,
    ) -> None:
        """Defers, checks, fetches the attachment, asks the core, answers ephemerally."""
        self._note(interaction)
        if not await self._defer(interaction):
            return
        try:
            reply = await self._handle(interaction, text, image, mentions, fetcher or self.fetcher)
        except Exception:
            log.exception("command failed for interaction %s", interaction.id)
            reply = Reply(CATCH_ALL, ok=False)
        await self._answer(interaction, reply)

    async def _handle(
        self,
        interaction: discord.Interaction,
        text: str,
        image: discord.Attachment | None,
        mentions: dict[str, str] | None,
        fetcher: AttachmentFetcher,
    ) -> Reply:
        try:
            parse(text, self.bot.policy.rules)  # the same message the core would give, before any download
        except CommandError as exc:
            return Reply(str(exc), ok=False)
        files: tuple[InputFile, ...] = ()
        if image is not None:
            if self._session is None:
                return Reply("I am still starting up; try again in a moment.", ok=False)
            info = AttachmentInfo(
                filename=image.filename, content_type=image.content_type, size=image.size, url=image.url
            )
            try:
                files = (await fetcher.fetch(self._session, info),)
            except AttachmentRefused as exc:
                return Reply(str(exc), ok=False)
        return await self.bot.handle(self._request(interaction, text, files, mentions))

    # --- buttons and modals -----------------------------------------------------------------------

    async def on_job_button(self, interaction: discord.Interaction, action: str, job_id: str) -> None:
        self._note(interaction)
        requester = self._requester(interaction)
        if action == "remix":
            await self._open_remix(interaction, job_id)
            return
        if not await self._defer(interaction):
            return
        try:
            reply = await self.bot.press(requester, action, job_id, self._key(interaction))
        except Exception:
            log.exception("%s button failed for job %s", action, job_id)
            reply = Reply(CATCH_ALL, ok=False)
        await self._answer(interaction, reply)

    async def _open_remix(self, interaction: discord.Interaction, job_id: str) -> None:
        try:  # a modal must be the first answer, within Discord's 3 s: the look-up gets 1.5 s
            target = await asyncio.wait_for(self.bot.remix_target(self._requester(interaction), job_id), timeout=1.5)
        except Exception:
            target = Reply(CATCH_ALL, ok=False)
        try:
            if isinstance(target, Reply):
                await interaction.response.send_message(discord_text(target.text), ephemeral=True)
            else:
                modal = RemixModal(job_id)
                modal.stop()  # not kept in memory: the submission is routed by custom id (see on_interaction)
                await interaction.response.send_modal(modal)
        except (discord.HTTPException, discord.InteractionResponded) as exc:
            log.warning("could not answer the remix button on job %s: %s", job_id, type(exc).__name__)

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        """Every interaction passes here; Remix modal submissions are handled here."""
        self._note(interaction)
        if interaction.type is not discord.InteractionType.modal_submit:
            return
        data: dict[str, Any] = dict(interaction.data or {})  # type: ignore[arg-type]
        match = REMIX_MODAL.fullmatch(str(data.get("custom_id", "")))
        if match is None:
            return
        if not await self._defer(interaction):
            return
        prompt = modal_value(data) or ""
        reply = await self.bot.press(
            self._requester(interaction), "remix", match["job"], self._key(interaction), text=prompt
        )  # never raises: anything unexpected is answered with the core's catch-all
        await self._answer(interaction, reply)

    async def on_action_button(self, interaction: discord.Interaction, workspace_id: str, action_id: str) -> None:
        self._note(interaction)
        if not await self._defer(interaction):
            return
        requester = self._requester(interaction, workspace_id=workspace_id)
        action, _, argument = action_id.partition(":")
        try:
            reply = await self.bot.press(requester, action, argument, self._key(interaction))
        except Exception:
            log.exception("button %s failed", action_id)
            reply = Reply(CATCH_ALL, ok=False)
        await self._answer(interaction, reply)

    async def on_command_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Last resort: a command that failed before answering still gets an answer in time."""
        text = CATCH_ALL
        if isinstance(error, app_commands.CommandNotFound | app_commands.CommandSignatureMismatch):
            text = "Discord showed you an older version of this command; try again in a minute."
            log.warning("stale application command used: %s", error)
        else:
            log.error("application command failed: %s", type(error).__name__, exc_info=error)
        with contextlib.suppress(Exception):
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
