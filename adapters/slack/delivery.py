"""``SlackDelivery``: job cards as Block Kit messages, clips uploaded into the card's thread.

A card is a ``chat.postMessage`` whose ``ts`` is the card reference; it is edited in place with
``chat.update`` (the worker calls at most once every ``min_update_interval`` seconds). The clip
goes into the thread with ``files_upload_v2`` as ``reelbot-<job id>.mp4``, which is also how
``find_clip`` recognises it after a restart, so a clip is never posted twice.
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError, SlackRequestError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.blocks import card_blocks, card_text, reply_blocks, slack_text
from bot import texts
from bot.clip_stream import ClipStream, ClipStreamBroken
from bot.delivery import CardView, DeliveryError
from bot.jobs import Job

log = logging.getLogger(__name__)

NOT_IN_CHANNEL = "I'm not in this channel; invite me with /invite @reelbot."

# Slack error code -> (what the requester reads, whether trying again later may work).
_ERRORS: dict[str, tuple[str, bool]] = {
    "not_in_channel": (NOT_IN_CHANNEL, False),
    "channel_not_found": (
        "I can't see this channel; invite me with /invite @reelbot, or ask me in a channel I'm in.",
        False,
    ),
    "is_archived": ("This channel is archived, so I can't post in it.", False),
    "restricted_action": ("This workspace doesn't let me post here.", False),
    "restricted_action_read_only_channel": ("This channel is read-only for apps, so I can't post in it.", False),
    "restricted_action_thread_only_channel": (
        "This channel only allows replies in threads, so I can't post a new card here.",
        False,
    ),
    "restricted_action_non_threadable_channel": ("This channel doesn't allow threads, so I can't post here.", False),
    "ekm_access_denied": ("Your workspace's key management blocked this post.", False),
    "file_upload_size_restricted": ("The clip is bigger than this workspace allows apps to upload.", False),
    "file_uploads_disabled": ("File uploads are turned off in this workspace, so I can't post the clip.", False),
    "file_uploads_except_images_disabled": (
        "This workspace only allows image uploads, so I can't post the clip.",
        False,
    ),
    "missing_scope": ("reelbot is missing a Slack permission; ask an admin to reinstall it from its manifest.", False),
    "not_allowed_token_type": (
        "reelbot is set up with the wrong kind of Slack token; ask an admin to check it.",
        False,
    ),
    "invalid_auth": ("reelbot's Slack token is not valid; ask an admin to reinstall the app.", False),
    "not_authed": ("reelbot's Slack token is not valid; ask an admin to reinstall the app.", False),
    "token_revoked": ("reelbot's Slack token was revoked; ask an admin to reinstall the app.", False),
    "account_inactive": ("reelbot's Slack token was deactivated; ask an admin to reinstall the app.", False),
    "msg_too_long": ("The message was too long for Slack.", False),
    "invalid_blocks": ("Slack refused the message layout.", False),
    "message_not_found": ("The message is gone from Slack.", False),
    "cant_update_message": ("Slack won't let me edit that message.", False),
    "user_not_found": ("Slack doesn't know that user.", False),
    "cannot_dm_bot": ("I can't send a direct message to another bot.", False),
    "ratelimited": ("Slack is rate-limiting me; I'll try again shortly.", True),
    "rate_limited": ("Slack is rate-limiting me; I'll try again shortly.", True),
    "internal_error": ("Slack had an internal error; I'll try again.", True),
    "fatal_error": ("Slack had an internal error; I'll try again.", True),
    "service_unavailable": ("Slack is unavailable right now; I'll try again.", True),
    "request_timeout": ("Slack timed out; I'll try again.", True),
}
# Posting into a thread/channel failed for one of these: try an ephemeral message, then a DM.
_FALL_BACK = frozenset(
    {
        "not_in_channel",
        "channel_not_found",
        "is_archived",
        "restricted_action",
        "message_not_found",
        "thread_not_found",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
        "user_not_in_channel",
    }
)


def slack_error_code(exc: BaseException) -> str | None:
    if isinstance(exc, SlackApiError) and exc.response is not None:
        error = exc.response.get("error")
        if error:
            return str(error)
        if getattr(exc.response, "status_code", None) == 429:
            return "ratelimited"
    return None


def delivery_error(exc: BaseException, what: str) -> DeliveryError:
    """A ``DeliveryError`` with a sentence for the requester, from any Slack or network failure."""
    code = slack_error_code(exc)
    if code is not None:
        message, retryable = _ERRORS.get(code, (f"Slack refused to {what} ({code}).", True))
        return DeliveryError(message, retryable=retryable)
    if isinstance(exc, SlackRequestError):  # e.g. the upload URL answered something other than 200
        return DeliveryError(f"Slack did not accept the upload; I'll try again ({what}).", retryable=True)
    return DeliveryError(f"I couldn't reach Slack to {what}; I'll try again.", retryable=True)


_TRANSPORT_ERRORS = (SlackClientError, aiohttp.ClientError, TimeoutError, OSError)


class SlackDelivery:
    """The core's way of showing jobs in one Slack workspace (the one the bot token belongs to)."""

    platform = "slack"
    min_update_interval = 3.0

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client

    @staticmethod
    def thread_of(job: Job) -> str | None:
        """The thread a job's clip and messages go into: where it was asked, else the card's own thread."""
        return job.thread_id or job.card_ref

    # --- cards ------------------------------------------------------------------------------

    async def post_card(self, job: Job, card: CardView) -> str:
        try:
            response = await self.client.chat_postMessage(
                channel=job.channel_id,
                thread_ts=job.thread_id,
                text=card_text(card),
                blocks=card_blocks(card),
                unfurl_links=False,
                unfurl_media=False,
            )
        except _TRANSPORT_ERRORS as exc:
            log.warning("posting the card of job %s failed: %s", job.id, slack_error_code(exc) or type(exc).__name__)
            raise delivery_error(exc, "post the job card") from None
        return str(response["ts"])

    async def update_card(self, job: Job, card: CardView) -> None:
        if not job.card_ref:
            return
        try:
            await self.client.chat_update(
                channel=job.channel_id, ts=job.card_ref, text=card_text(card), blocks=card_blocks(card)
            )
        except _TRANSPORT_ERRORS as exc:
            raise delivery_error(exc, "update the job card") from None

    # --- clips ------------------------------------------------------------------------------

    @staticmethod
    def clip_name(job: Job) -> str:
        return f"reelbot-{job.id}.mp4"

    @staticmethod
    def clip_title(job: Job) -> str:
        return slack_text(f"{texts.short_prompt(job.prompt, 60)} ({texts.AI_LABEL})")

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        try:
            response = await self.client.files_upload_v2(
                channel=job.channel_id,
                thread_ts=self.thread_of(job),
                file=str(clip),
                filename=self.clip_name(job),
                title=self.clip_title(job),
                initial_comment=slack_text(caption, people=(job.user_id,)),
            )
        except _TRANSPORT_ERRORS as exc:
            log.warning("uploading the clip of job %s failed: %s", job.id, slack_error_code(exc) or type(exc).__name__)
            raise delivery_error(exc, "upload the clip") from None
        file = response.get("file") or next(iter(response.get("files") or []), None) or {}
        return str(file.get("id") or f"upload:{job.id}")

    async def stage_clip(self, job: Job, source: ClipStream) -> str:
        """The first two steps of ``files_upload_v2``: an upload URL, then the bytes; returns the file id.

        The bytes are sent as ``source`` yields them, with the declared length (Slack needs it for
        the upload URL). Nothing shows in Slack until ``share_clip`` completes the upload; an upload
        never completed is dropped by Slack. The bytes go over the client's pooled session, as
        slack_sdk sends them.
        """
        try:
            length = await source.size()
        except ClipStreamBroken as exc:
            raise DeliveryError(f"The clip could not be sent while downloading ({exc}).") from None
        try:
            answer = await self.client.files_getUploadURLExternal(filename=self.clip_name(job), length=length)
            upload_url, file_id = answer.get("upload_url"), answer.get("file_id")
            if not isinstance(upload_url, str) or not isinstance(file_id, str):
                raise DeliveryError("Slack did not give an upload address for the clip.")
            session = self.client.session
            owned = session is None or session.closed
            if owned:
                session = aiohttp.ClientSession()
            assert session is not None
            try:
                timeout = aiohttp.ClientTimeout(total=self.client.timeout)
                headers = {"Content-Length": str(length), "Content-Type": "application/octet-stream"}
                async with session.post(upload_url, data=source.chunks(), headers=headers, timeout=timeout) as response:
                    await response.read()
                    if response.status != 200:
                        raise DeliveryError(f"Slack did not take the clip's bytes (HTTP {response.status}).")
            finally:
                if owned:
                    await session.close()
        except ClipStreamBroken as exc:
            raise DeliveryError(f"The clip could not be sent while downloading ({exc}).") from None
        except _TRANSPORT_ERRORS as exc:
            raise delivery_error(exc, "upload the clip") from None
        return file_id

    async def share_clip(self, job: Job, staged: str, caption: str) -> str:
        """Completes a staged upload into the job's thread: only now does the clip show."""
        try:
            response = await self.client.files_completeUploadExternal(
                files=[{"id": staged, "title": self.clip_title(job)}],
                channel_id=job.channel_id,
                thread_ts=self.thread_of(job),
                initial_comment=slack_text(caption, people=(job.user_id,)),
            )
        except _TRANSPORT_ERRORS as exc:
            log.warning("sharing the clip of job %s failed: %s", job.id, slack_error_code(exc) or type(exc).__name__)
            raise delivery_error(exc, "upload the clip") from None
        file = next(iter(response.get("files") or []), None) or {}
        return str(file.get("id") or staged)

    async def find_clip(self, job: Job) -> str | None:
        """The id of ``reelbot-<job id>.mp4`` if it is already in the job's thread (or the channel)."""
        name = self.clip_name(job)
        thread = self.thread_of(job)
        try:
            if thread:
                cursor = None
                for _ in range(50):  # at most 50 pages of 200 replies
                    response = await self.client.conversations_replies(
                        channel=job.channel_id, ts=thread, limit=200, cursor=cursor
                    )
                    for message in response.get("messages") or []:
                        for file in message.get("files") or []:
                            if file.get("name") == name:
                                return str(file.get("id") or name)
                    cursor = (response.get("response_metadata") or {}).get("next_cursor")
                    if not cursor:
                        break
            # A file that was uploaded but whose message Slack had not yet shared when we crashed.
            response = await self.client.files_list(channel=job.channel_id, ts_from=int(job.created_at) - 60, count=100)
            for file in response.get("files") or []:
                if file.get("name") == name:
                    return str(file.get("id") or name)
        except _TRANSPORT_ERRORS as exc:
            log.warning(
                "looking for the clip of job %s failed: %s", job.id, slack_error_code(exc) or type(exc).__name__
            )
            raise delivery_error(exc, "look for the clip") from None
        return None

    # --- messages ---------------------------------------------------------------------------

    async def notify(self, job: Job, text: str) -> None:
        """A thread reply naming the requester; if the channel is closed to us, ephemeral, then a DM."""
        try:
            await self.client.chat_postMessage(
                channel=job.channel_id,
                thread_ts=self.thread_of(job),
                text=f"<@{job.user_id}> {slack_text(text, people=(job.user_id,))}",
                unfurl_links=False,
            )
            return
        except _TRANSPORT_ERRORS as exc:
            code = slack_error_code(exc)
            if code not in _FALL_BACK:
                raise delivery_error(exc, "post a message") from None
        try:
            await self.client.chat_postEphemeral(
                channel=job.channel_id,
                user=job.user_id,
                text=slack_text(text, private=True),
                thread_ts=self.thread_of(job),
            )
            return
        except _TRANSPORT_ERRORS:
            pass
        ref = await self.direct_message(job.workspace_id, job.user_id, text)
        if ref is None:
            raise DeliveryError("I couldn't reach you in Slack.", retryable=True)

    async def delete_message(self, job: Job, ref: str) -> None:
        """Deletes a card (a message ``ts``) or a clip (a file id ``F...``)."""
        try:
            if ref.startswith("F"):
                await self.client.files_delete(file=ref)
            else:
                await self.client.chat_delete(channel=job.channel_id, ts=ref)
        except _TRANSPORT_ERRORS as exc:
            if slack_error_code(exc) in ("message_not_found", "file_not_found", "file_deleted"):
                return
            raise delivery_error(exc, "delete the message") from None

    async def direct_message(
        self, workspace_id: str, user_id: str, text: str, actions: tuple[tuple[str, str], ...] = ()
    ) -> str | None:
        try:
            opened = await self.client.conversations_open(users=user_id)
            channel = opened["channel"]["id"]
            safe = slack_text(text, private=True)
            response = await self.client.chat_postMessage(
                channel=channel,
                text=safe,
                blocks=reply_blocks(safe, actions) if actions else None,
                unfurl_links=False,
            )
        except _TRANSPORT_ERRORS as exc:
            log.warning("direct message to a user failed: %s", slack_error_code(exc) or type(exc).__name__)
            raise delivery_error(exc, "send a direct message") from None
        return str(response["ts"])
