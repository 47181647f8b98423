"""``bot.delivery.Delivery`` for Discord: job cards, threads, clips, notices and DMs, all with the bot token.

Nothing here uses an interaction token, so a render that outlives the 15-minute token still lands.

References (what the core stores):

* card_ref ``"<message id>"``: the card is in ``job.channel_id`` and a thread was opened on it;
  the thread's id equals the message id, so the reference doubles as a ``thread_id``.
* card_ref ``"<channel id>:<message id>"``: the card is in that channel (an existing thread, a DM,
  or a channel where no thread could be opened) and the clip goes to the same channel.
* clip and message refs are always ``"<channel id>:<message id>"``.

A ``thread_id`` given by the core may be either form; the part before ``:`` is where to post.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import discord

from adapters.discord.fit import fit_clip
from adapters.discord.views import action_buttons, card_buttons
from bot import texts
from bot.delivery import CardView, DeliveryError
from bot.jobs import Job
from bot.media import MediaError

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord's default per-file limit (10 MiB)
UPLOAD_TIERS = (100 * 1024 * 1024, 50 * 1024 * 1024, 25 * 1024 * 1024, DEFAULT_UPLOAD_LIMIT)  # boost levels
MISSING_ACCESS = (
    "I can't post in this channel; give me View Channel, Send Messages, Send Messages in Threads, "
    "Create Public Threads, Attach Files and Embed Links here."
)
_COLOURS = {
    "queued": 0x5865F2,
    "submitting": 0x5865F2,
    "rendering": 0xFEE75C,
    "downloading": 0xFEE75C,
    "delivering": 0xFEE75C,
    "delivered": 0x57F287,
    "undelivered": 0xEB459E,
    "failed": 0xED4245,
    "cancelled": 0x99AAB5,
    "refused": 0xED4245,
    "pending_consent": 0x5865F2,
}


def lower_limit(rejected: int, believed: int) -> int:
    """The limit to try after Discord refused ``rejected`` bytes: the next boost tier below, else 60 %."""
    tiers = [t for t in UPLOAD_TIERS if t < rejected]
    return min(believed, tiers[0] if tiers else int(rejected * 0.6))


def clip_filename(job_id: str) -> str:
    return f"reelbot-{job_id}.mp4"


def split_ref(ref: str) -> tuple[int, int]:
    """``"C:M"`` -> ``(C, M)``; a plain ``"M"`` -> ``(M, M)`` (a thread opened on message M)."""
    channel, _, message = ref.partition(":")
    return (int(channel), int(message)) if message else (int(channel), int(channel))


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f}".removesuffix(".0") + " MB"


def delivery_error(exc: Exception, doing: str) -> DeliveryError:
    """A Discord failure as a sentence for the requester, and whether trying again may help."""
    if isinstance(exc, discord.HTTPException):
        code = exc.code
        if code == 50007:
            return DeliveryError(
                "I can't send that member a direct message (their DMs are closed to me).", retryable=False
            )
        if isinstance(exc, discord.Forbidden) or code in (50001, 50013):
            return DeliveryError(MISSING_ACCESS, retryable=False)
        if code == 40005 or exc.status == 413:
            return DeliveryError("The clip is larger than this server's upload limit.", retryable=False)
        if code in (50083, 160005):
            return DeliveryError(
                "This job's thread is archived or locked; unarchive it, then press Retry.", retryable=False
            )
        if isinstance(exc, discord.NotFound):
            return DeliveryError("The channel or thread for this job no longer exists.", retryable=False)
        if exc.status == 429:
            return DeliveryError("Discord is rate-limiting me; I will try again shortly.", retryable=True)
        if isinstance(exc, discord.DiscordServerError) or exc.status >= 500:
            return DeliveryError("Discord had a server error; I will try again.", retryable=True)
        return DeliveryError(f"Discord refused to {doing} (error {code or exc.status}).", retryable=False)
    if isinstance(exc, aiohttp.ClientError | asyncio.TimeoutError | TimeoutError | OSError):
        return DeliveryError(f"I could not reach Discord to {doing}; I will try again.", retryable=True)
    raise exc


@contextlib.asynccontextmanager
async def discord_errors(doing: str) -> AsyncIterator[None]:
    """Turns Discord and network failures inside the block into ``DeliveryError``."""
    try:
        yield
    except DeliveryError:
        raise
    except (discord.HTTPException, aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise delivery_error(exc, doing) from None
    except RuntimeError as exc:  # aiohttp's "Session is closed" while the client shuts down
        raise DeliveryError(
            f"I am not connected to Discord right now, so I could not {doing}; I will try again.", retryable=True
        ) from exc


# Markdown that changes a message's structure or hides what a link points at, at the start of a line:
# headers, subtext, block quotes, list items.
_LINE_MARKUP = re.compile(r"^([ \t]*)(#{1,3}[ \t]|-#[ \t]|>>>[ \t]|>[ \t]|[-*+][ \t]|\d{1,9}[.)][ \t])", re.MULTILINE)
_MASS_MENTION = re.compile(r"@(everyone|here)\b")


def _escape_line_markup(match: re.Match[str]) -> str:
    indent, mark = match.group(1), match.group(2)
    if mark[0].isdigit():  # "1. item" -> "1\. item"
        return f"{indent}{mark[:-2]}\\{mark[-2:]}"
    return f"{indent}\\{mark}"


def discord_text(text: str) -> str:
    """The one way text from the core reaches Discord (captions, notices, replies, DMs, embed fields).

    The core's sentences mix reelbot's words with what people typed and cannot tell them apart, so
    the whole string is neutralised: a masked link ``[Sign in](https://evil)`` gets a zero-width
    space between ``]`` and ``(`` (so it shows as typed, and reelbot's own `` `/video [--flags]` ``
    code spans, where a backslash would show, are untouched); headers, subtext, quotes and lists at
    line starts, code fences and spoilers are backslash-escaped, backslashes being doubled first so
    typed escapes cannot undo that. ``@everyone``/``@here`` get a zero-width
    space. Inline ``*bold*`` and `` `code` `` (which reelbot's own texts use) are left alone: they
    cannot hide or forge anything. Pings are governed separately by ``AllowedMentions``: only the
    requester of a job is ever pinged, so a typed ``<@id>`` shows as a name and notifies nobody.
    """
    text = text.replace("\\", "\\\\")
    text = text.replace("](", "]\u200b(")  # no masked link; invisible inside reelbot's own `code [--flags]`
    text = text.replace("```", "\\`\\`\\`").replace("||", "\\|\\|")
    text = _LINE_MARKUP.sub(_escape_line_markup, text)
    return _MASS_MENTION.sub("@\u200b\\1", text)


def progress_bar(progress: int, width: int = 20) -> str:
    filled = max(0, min(width, round(progress * width / 100)))
    return "█" * filled + "░" * (width - filled) + f" {progress}%"


def card_embed(card: CardView) -> discord.Embed:
    embed = discord.Embed(
        title=discord_text(card.title)[:256],
        description=discord_text(card.prompt)[:4000],
        colour=_COLOURS.get(card.state, 0x5865F2),
    )
    embed.add_field(name="Settings", value=discord_text(card.settings)[:1024], inline=True)
    embed.add_field(name="Cost", value=discord_text(card.cost)[:1024], inline=True)
    embed.add_field(name="Requested by", value=discord_text(card.requester)[:1024], inline=True)
    status = discord_text(card.status)
    if card.state == "rendering":
        status += "\n" + progress_bar(card.progress)
    embed.add_field(name="Status", value=status[:1024], inline=False)
    embed.set_footer(text=f"{texts.AI_LABEL} · job {card.job_id}")
    return embed


@dataclass
class _CardSlot:
    """Throttling state of one job card: the latest view waits here until it may be shown."""

    last: float = -1e9
    pending: tuple[Job, CardView] | None = None
    timer: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DiscordDelivery:
    """Shows jobs on Discord through a connected ``discord.Client``.

    Args:
        client: the logged-in client (REST calls only; the gateway is not needed here).
        min_update_interval: seconds between two edits of one card; newer views wait and coalesce.
    """

    platform = "discord"

    def __init__(
        self,
        client: discord.Client,
        *,
        min_update_interval: float = 3.0,
        default_upload_limit: int = DEFAULT_UPLOAD_LIMIT,
    ) -> None:
        self.client = client
        self.min_update_interval = min_update_interval
        self.default_upload_limit = default_upload_limit
        self._limits: dict[str, int] = {}
        self._cards: dict[str, _CardSlot] = {}

    # --- upload limits ------------------------------------------------------------------------

    def note_limit(self, workspace_id: str, limit: int | None) -> None:
        """Remembers the ``attachment_size_limit`` an interaction from this guild carried."""
        if limit and limit > 0:
            self._limits[workspace_id] = int(limit)

    def upload_limit(self, workspace_id: str) -> int:
        """The interaction's limit we saw, else the cached guild's tier limit, else 10 MiB."""
        if workspace_id in self._limits:
            return self._limits[workspace_id]
        if workspace_id.isdigit():
            guild = self.client.get_guild(int(workspace_id))
            if guild is not None:
                return guild.filesize_limit
        return self.default_upload_limit

    # --- where things go ----------------------------------------------------------------------

    def _card_place(self, job: Job) -> tuple[int, int]:
        """(channel of the card message, card message id)."""
        assert job.card_ref is not None
        channel, _, message = job.card_ref.partition(":")
        if message:
            return int(channel), int(message)
        return int(job.channel_id), int(channel)

    def _clip_place(self, job: Job) -> tuple[int, int | None]:
        """(channel or thread the clip goes to, message id after which it would be)."""
        if job.card_ref:
            channel, message = split_ref(job.card_ref)
            return channel, message
        if job.thread_id:
            return split_ref(job.thread_id)[0], None
        return int(job.channel_id), None

    def _channel(self, channel_id: int) -> discord.PartialMessageable:
        self._check_connected()
        return self.client.get_partial_messageable(channel_id)

    def _check_connected(self) -> None:
        """Refuses (retryably) while the client is not logged in, e.g. during a restart."""
        if self.client.is_closed() or self.client.user is None:
            raise DeliveryError("I am not connected to Discord right now; I will try again.", retryable=True)

    def _requester_mentions(self, job: Job) -> discord.AllowedMentions:
        users = [discord.Object(int(job.user_id))] if job.user_id.isdigit() else False
        return discord.AllowedMentions(everyone=False, roles=False, replied_user=False, users=users)

    # --- Delivery -------------------------------------------------------------------------------

    async def post_card(self, job: Job, card: CardView) -> str:
        if job.thread_id:
            target = split_ref(job.thread_id)[0]
            async with discord_errors("post the job card"):
                message = await self._channel(target).send(
                    embed=card_embed(card), view=card_buttons(job.id, card.actions)
                )
            self._cards[job.id] = _CardSlot(last=asyncio.get_running_loop().time())
            return f"{target}:{message.id}"
        channel_id = int(job.channel_id)
        async with discord_errors("post the job card"):
            message = await self._channel(channel_id).send(
                embed=card_embed(card), view=card_buttons(job.id, card.actions)
            )
        self._cards[job.id] = _CardSlot(last=asyncio.get_running_loop().time())
        if job.workspace_id == "dm":
            return f"{channel_id}:{message.id}"
        name = f"🎬 {texts.short_prompt(job.prompt, 80)}"[:100]
        try:
            thread = await self.client.http.start_thread_with_message(
                channel_id, message.id, name=name, auto_archive_duration=1440, reason=f"reelbot job {job.id}"
            )
        except (discord.HTTPException, aiohttp.ClientError, TimeoutError, OSError) as exc:
            # The card is up already: rather than orphan it, the clip goes under it in the channel.
            code = exc.code if isinstance(exc, discord.HTTPException) else type(exc).__name__
            log.warning(
                "job %s: no thread on the card in channel %s (%s); the clip will go in the channel",
                job.id,
                channel_id,
                code,
            )
            return f"{channel_id}:{message.id}"
        return str(thread["id"])

    async def update_card(self, job: Job, card: CardView) -> None:
        """Edits the card; at most one edit per ``min_update_interval``, the newest view wins."""
        if not job.card_ref:
            return
        slot = self._cards.setdefault(job.id, _CardSlot())
        slot.pending = (job, card)
        if slot.timer is not None and not slot.timer.done():
            return  # the scheduled edit will show this newer view
        wait = slot.last + self.min_update_interval - asyncio.get_running_loop().time()
        if wait > 0:
            slot.timer = asyncio.create_task(self._edit_later(job.id, wait), name=f"reelbot-card-{job.id}")
            return
        await self._edit_now(job.id)

    async def _edit_later(self, job_id: str, wait: float) -> None:
        await asyncio.sleep(wait)
        slot = self._cards.get(job_id)
        if slot is not None:
            slot.timer = None
        try:
            await self._edit_now(job_id)
        except DeliveryError as exc:
            log.warning("card update for job %s failed: %s", job_id, exc.user_message)

    async def _edit_now(self, job_id: str) -> None:
        slot = self._cards.get(job_id)
        if slot is None:
            return
        async with slot.lock:
            if slot.pending is None:
                return
            job, card = slot.pending
            slot.pending = None
            slot.last = asyncio.get_running_loop().time()
            channel_id, message_id = self._card_place(job)
            try:
                async with discord_errors("update the job card"):
                    await (
                        self._channel(channel_id)
                        .get_partial_message(message_id)
                        .edit(embed=card_embed(card), view=card_buttons(job.id, card.actions))
                    )
            finally:
                if job.state.is_final and slot.pending is None and slot.timer is None:
                    self._cards.pop(job_id, None)

    async def flush(self) -> None:
        """Shows every card edit still waiting for its interval (called before disconnecting)."""
        for job_id, slot in list(self._cards.items()):
            if slot.timer is not None and not slot.timer.done():
                slot.timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await slot.timer
                slot.timer = None
            if slot.pending is not None:
                try:
                    await self._edit_now(job_id)
                except DeliveryError as exc:
                    log.warning("card update for job %s failed: %s", job_id, exc.user_message)

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        channel_id, _ = self._clip_place(job)
        limit = self.upload_limit(job.workspace_id)
        upload = clip
        try:
            for _attempt in range(5):
                size = upload.stat().st_size
                if size > limit:
                    upload = await self._shrink(job, clip, limit)
                try:
                    message = await self._channel(channel_id).send(
                        content=discord_text(caption)[:2000],
                        file=discord.File(upload, filename=clip_filename(job.id)),
                        allowed_mentions=self._requester_mentions(job),
                    )
                except discord.HTTPException as exc:
                    if exc.code == 40005 or exc.status == 413:
                        # The real limit is lower than we knew (the guild lost boosts, say): aim lower.
                        limit = lower_limit(upload.stat().st_size, limit)
                        self._limits[job.workspace_id] = limit
                        log.info("job %s: the upload was too large for Discord; shrinking to %d bytes", job.id, limit)
                        continue
                    raise delivery_error(exc, "upload the clip") from None
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    raise delivery_error(exc, "upload the clip") from None
                return f"{channel_id}:{message.id}"
        finally:
            if upload != clip:
                with contextlib.suppress(OSError):
                    upload.unlink()
        raise DeliveryError(
            f"The clip is {_megabytes(clip.stat().st_size)} and Discord would not take it even re-encoded smaller.",
            retryable=False,
        )

    async def _shrink(self, job: Job, clip: Path, limit: int) -> Path:
        size = clip.stat().st_size
        log.info("job %s: clip is %d bytes, over the %d byte upload limit; re-encoding", job.id, size, limit)
        try:
            return await fit_clip(clip, limit)
        except MediaError as exc:
            raise DeliveryError(
                f"The clip is {_megabytes(size)}, over this server's {_megabytes(limit)} upload limit, and I could "
                f"not re-encode it small enough ({exc})",
                retryable=False,
            ) from None

    async def find_clip(self, job: Job) -> str | None:
        channel_id, after = self._clip_place(job)
        name = clip_filename(job.id)
        me = self.client.user
        async with discord_errors("look for the clip"):
            history = self._channel(channel_id).history(
                limit=200, after=discord.Object(after) if after else None, oldest_first=after is not None
            )
            async for message in history:
                if me is not None and message.author.id != me.id:
                    continue
                if any(a.filename == name for a in message.attachments):
                    return f"{channel_id}:{message.id}"
        return None

    async def notify(self, job: Job, text: str) -> None:
        channel_id, _ = self._clip_place(job)
        who = f"<@{job.user_id}> " if job.user_id.isdigit() else ""
        async with discord_errors("post a notice"):
            await self._channel(channel_id).send(
                content=(who + discord_text(text))[:2000], allowed_mentions=self._requester_mentions(job)
            )

    async def delete_message(self, job: Job, ref: str) -> None:
        channel_id, message_id = split_ref(ref) if ":" in ref else (self._clip_place(job)[0], int(ref))
        async with discord_errors("delete the message"):
            self._check_connected()
            with contextlib.suppress(discord.NotFound):  # already gone
                await self.client.http.delete_message(channel_id, message_id, reason=f"reelbot job {job.id}")

    async def direct_message(
        self, workspace_id: str, user_id: str, text: str, actions: tuple[tuple[str, str], ...] = ()
    ) -> str | None:
        if not user_id.isdigit():
            return None
        view = action_buttons(workspace_id, actions) if actions else None
        async with discord_errors("send a direct message"):
            self._check_connected()
            channel = await self.client.create_dm(discord.Object(int(user_id)))
            kwargs = {"view": view} if view is not None else {}
            message = await channel.send(
                content=discord_text(text)[:2000], allowed_mentions=discord.AllowedMentions.none(), **kwargs
            )
        return f"{channel.id}:{message.id}"
