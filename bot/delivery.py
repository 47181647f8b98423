"""What the core needs from a chat platform: each adapter implements ``Delivery``.

The core decides what to say and when; a Delivery only knows how to say it on its platform.
``CardThrottle`` is the one place card edits are paced, for every platform.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from bot.clip_stream import ClipStream
from bot.jobs import Job

log = logging.getLogger(__name__)

DEFAULT_CARD_INTERVAL_S = 3.0
_ENDED_KEPT = 10_000


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


@runtime_checkable
class StagesClips(Protocol):
    """A platform that takes a clip's bytes before it shows them (Slack: upload, then complete).

    The worker sends the bytes as they download (``ClipStream``) and while it checks the clip (probe,
    consent, the job's state), and shows them only once every check passed, so the upload neither
    follows the download nor waits for the checks. Bytes staged for a clip that is then refused or
    cancelled are never shown; the platform drops an upload that is never completed.
    """

    async def stage_clip(self, job: Job, source: ClipStream) -> str:
        """Sends the clip's bytes from ``source`` without showing them; returns what ``share_clip`` needs.

        Raises:
            DeliveryError: the platform did not take the bytes, or ``source`` broke (the worker then
                posts the checked file as usual).
        """
        ...

    async def share_clip(self, job: Job, staged: str, caption: str) -> str:
        """Shows staged bytes as the job's clip in its thread; returns the message reference.

        Raises:
            DeliveryError: as ``post_clip``.
        """
        ...


@dataclass(eq=False)
class _CardSlot:
    last: float = float("-inf")  # loop time of the last edit
    shown: float = float("-inf")  # ``updated_at`` of the view last shown: older views are stale
    latest: Job | None = None  # the newest view not yet shown
    timer: asyncio.Task[None] | None = None


class CardThrottle:
    """At most one edit of a job's card per interval; what arrives in between is kept, not dropped.

    An update inside the window is stored as the job's latest view, and one edit is scheduled for
    when the window ends; further updates only replace the stored view, so the card always ends
    up showing the latest known state (the final one included), with at most one edit per
    interval. State changes go through the same pacing. Posting the card is not an edit: the first
    edit may follow it at once.

    Args:
        edit: shows a job's view on its card (the core's; it renders the view and calls the platform).
        interval_for: the job's platform interval (a Delivery's ``min_update_interval``, 3 s by default).
    """

    def __init__(
        self,
        *,
        edit: Callable[[Job], Awaitable[None]],
        interval_for: Callable[[Job], float],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._edit = edit
        self._interval_for = interval_for
        self._clock = clock
        self._slots: dict[str, _CardSlot] = {}
        # Jobs whose final view was shown, with its ``updated_at``: a stale view read before the end
        # (a scheduler's snapshot, say) must not bring an old state back. Bounded; oldest forgotten.
        self._ended: OrderedDict[str, float] = OrderedDict()

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def update(self, job: Job) -> None:
        """Shows ``job`` now if the interval allows, else as part of the next allowed edit."""
        if job.updated_at < self._ended.get(job.id, float("-inf")):
            return  # older than the final view already shown
        slot = self._slots.setdefault(job.id, _CardSlot())
        if job.updated_at < slot.shown or (slot.latest is not None and job.updated_at < slot.latest.updated_at):
            return  # older than a view already shown or waiting
        slot.latest = job
        if slot.timer is not None:
            return  # an edit is scheduled; it will show this view
        wait = slot.last + self._interval_for(job) - self._now()
        if wait <= 0:
            await self._show(job.id)
            return
        slot.timer = asyncio.create_task(self._later(job.id, wait), name=f"reelbot-card-{job.id}")

    async def _later(self, job_id: str, wait: float) -> None:
        await asyncio.sleep(wait)
        slot = self._slots.get(job_id)
        if slot is not None:
            slot.timer = None
        await self._show(job_id)

    async def _show(self, job_id: str) -> None:
        slot = self._slots.get(job_id)
        if slot is None or slot.latest is None:
            return
        job, slot.latest = slot.latest, None
        slot.last = self._now()
        slot.shown = job.updated_at
        try:
            await self._edit(job)
        except Exception:
            log.exception("editing the card of job %s failed", job_id)
        if job.state.is_final and slot.latest is None and slot.timer is None:
            self._slots.pop(job_id, None)
            self._ended[job_id] = job.updated_at
            while len(self._ended) > _ENDED_KEPT:
                self._ended.popitem(last=False)

    def pending(self, job_id: str) -> bool:
        """Whether an edit of this job's card is waiting for its window."""
        slot = self._slots.get(job_id)
        return slot is not None and slot.timer is not None

    async def flush(self) -> None:
        """Shows every waiting view now (at shutdown: the last state is never lost)."""
        for job_id, slot in list(self._slots.items()):
            timer, slot.timer = slot.timer, None
            if timer is not None:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer
            await self._show(job_id)
