"""The platform-neutral request every adapter produces, and the job it becomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class JobState(StrEnum):
    """Where a job is. Every transition is one row update in the store.

    ``received`` is written before anything is spent or sent; ``submitting`` before the provider
    is called; the provider's video id is stored with ``rendering``. ``undelivered`` means the
    clip exists but the platform refused it: it can be delivered again, never charged twice.
    """

    RECEIVED = "received"
    PENDING_CONSENT = "pending_consent"
    QUEUED = "queued"
    SUBMITTING = "submitting"
    RENDERING = "rendering"
    DOWNLOADING = "downloading"
    DELIVERING = "delivering"
    UNDELIVERED = "undelivered"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REFUSED = "refused"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def is_active(self) -> bool:
        """Counts against the in-flight caps: submitted to a provider and not yet finished."""
        return self in ACTIVE_STATES


FINAL_STATES = frozenset({JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED, JobState.REFUSED})
ACTIVE_STATES = frozenset({JobState.SUBMITTING, JobState.RENDERING, JobState.DOWNLOADING, JobState.DELIVERING})
# States the worker drives forward after a restart.
RESUMABLE_STATES = ACTIVE_STATES | {JobState.QUEUED}


@dataclass(frozen=True, slots=True)
class InputFile:
    """A file a person attached, already fetched by the adapter from its platform's own hosts."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is asking, in platform terms. ``key`` identifies the person across the store."""

    platform: str
    workspace_id: str
    user_id: str
    display_name: str
    is_admin: bool = False

    @property
    def key(self) -> str:
        return f"{self.platform}:{self.workspace_id}:{self.user_id}"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One thing a person typed, in any adapter.

    Attributes:
        request_key: the platform's id for this request (Slack trigger or event id, Discord
            interaction id); the same key twice makes one job.
        text: the command text after ``/video``.
        channel_id: where to answer. ``thread_id`` is set when the request came inside a thread.
        mentions: platform user ids the adapter resolved from ``@`` mentions in ``text``, keyed by
            the text of the mention, so the core can find ``@alice`` without knowing the platform.
    """

    requester: Requester
    request_key: str
    channel_id: str
    text: str
    thread_id: str | None = None
    attachments: tuple[InputFile, ...] = ()
    mentions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What the clip should be. ``model`` is a catalog name (``veo-3.1-fast``), not a provider's id.

    ``size`` is the exact frame (``1280x720``), derived from ``aspect`` and ``resolution`` by the
    catalog; ``audio`` is None when the model decides (it always or never makes sound).
    """

    model: str
    size: str
    seconds: int
    cameo: str | None = None
    aspect: str = ""
    resolution: str = ""
    audio: bool | None = None
    seed: int | None = None
    negative: str = ""

    @property
    def width(self) -> int:
        return int(self.size.split("x")[0])

    @property
    def height(self) -> int:
        return int(self.size.split("x")[1])


@dataclass(slots=True)
class Job:
    """A row of the ``jobs`` table."""

    id: str
    request_key: str
    platform: str
    workspace_id: str
    user_id: str
    user_name: str
    channel_id: str
    thread_id: str | None
    prompt: str
    options: JobOptions
    state: JobState
    cost_micros: int
    created_at: float
    updated_at: float
    provider: str = ""
    provider_video_id: str | None = None
    progress: int = 0
    card_ref: str | None = None
    clip_path: str | None = None
    delivered_ref: str | None = None
    error: str | None = None
    tries: int = 0
    cancel_requested: bool = False
    remix_of: str | None = None
    reference_path: str | None = None
    budget_period: str | None = None
    started_at: float | None = None
    # When reelbot learned the render's id: the render's age, which its poll schedule follows.
    render_started_at: float | None = None

    @property
    def user_key(self) -> str:
        return f"{self.platform}:{self.workspace_id}:{self.user_id}"
