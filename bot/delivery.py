"""What the core needs from a chat platform: each adapter implements ``Delivery``.

The core decides what to say and when; a Delivery only knows how to say it on its platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from bot.jobs import Job


@dataclass(frozen=True, slots=True)
class CardView:
    """A platform-neutral job card: adapters render it as Block Kit, an embed or a terminal panel.

    Attributes:
        actions: which buttons make sense now: any of ``cancel``, ``reroll``, ``remix``, ``retry``.
    """

    job_id: str
    title: str
    prompt: str
    settings: str  # "sora-2-pro · 1280x720 · 8 s"
    cost: str  # "$2.40"
    requester: str
    status: str  # "Queued (position 2)", "Rendering 40%", "Delivered", ...
    state: str
    progress: int
    queue_position: int | None
    actions: tuple[str, ...]


class DeliveryError(Exception):
    """The platform refused to show something.

    Attributes:
        user_message: one sentence for the requester (e.g. "I am not in this channel").
        retryable: whether trying again later may work (rate limits, upload errors).
    """

    def __init__(self, user_message: str, *, retryable: bool = True) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.retryable = retryable


@runtime_checkable
class Delivery(Protocol):
    """One chat platform's way of showing jobs, clips and prompts."""

    platform: str

    async def post_card(self, job: Job, card: CardView) -> str:
        """Posts the job card where the request came from; returns its reference.

        On threaded platforms the card becomes the thread the clip will go into, and the returned
        reference must be usable as a ``thread_id`` for follow-up jobs (re-roll, remix).
        """
        ...

    async def update_card(self, job: Job, card: CardView) -> None:
        """Edits the job card in place (the core throttles calls to one every few seconds)."""
        ...

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        """Uploads the finished MP4 into the job's thread; returns the message reference.

        Raises:
            DeliveryError: when the platform refuses the upload.
        """
        ...

    async def find_clip(self, job: Job) -> str | None:
        """Looks for this job's clip already posted in its thread; returns its reference or None.

        Called before posting a clip that may have been posted before a crash, so that a clip is
        delivered exactly once. A platform that cannot look returns None.
        """
        ...

    async def notify(self, job: Job, text: str) -> None:
        """Tells the requester something about their job, in its thread."""
        ...

    async def delete_message(self, job: Job, ref: str) -> None:
        """Deletes one of the bot's own messages (used when a cameo is revoked)."""
        ...

    async def direct_message(
        self, workspace_id: str, user_id: str, text: str, actions: tuple[tuple[str, str], ...] = ()
    ) -> str | None:
        """Sends a private message with optional buttons ``(action_id, label)``; returns its ref."""
        ...
