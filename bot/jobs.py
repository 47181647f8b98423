"""The platform-neutral request every adapter produces, and the job it becomes."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class JobState(StrEnum):
    """Where a job is. Every change of state is one ``Store.transition`` call, checked against ``MOVES``.

    ``received`` is written before anything is spent or sent; ``submitting`` before the provider
    is called; the provider's video id is stored with ``rendering``. ``undelivered`` means the
    clip exists but the platform refused it: it can be delivered again, never charged twice, and
    it expires (failed, released) after ``REELBOT_UNDELIVERED_TTL_S``.
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


_S = JobState

# --- the named sets: each written once, used everywhere -------------------------------------
FINAL_STATES = frozenset({_S.DELIVERED, _S.FAILED, _S.CANCELLED, _S.REFUSED})
# Submitted to a provider (or about to be) and not finished: counts against the in-flight caps.
ACTIVE_STATES = frozenset({_S.SUBMITTING, _S.RENDERING, _S.DOWNLOADING, _S.DELIVERING})
# Nobody is working on the job right now: a cancel (or a refusal) ends it at once, in the caller.
WAITING_STATES = frozenset({_S.RECEIVED, _S.PENDING_CONSENT, _S.QUEUED, _S.UNDELIVERED})
CANCEL_NOW_STATES = WAITING_STATES
# A worker drives the job: a cancel is recorded (``cancel_requested``) and the worker ends it at
# its next check, which comes before every step that spends or posts (and interrupts an upload).
CANCEL_LATER_STATES = ACTIVE_STATES
# States the worker drives forward after a restart.
RESUMABLE_STATES = ACTIVE_STATES | {_S.QUEUED}
# Not final: every one of these has a way out (tests walk the table to prove it).
OPEN_STATES = frozenset(_S) - FINAL_STATES
# The ends that give the money back; ``delivered`` is the only one that settles.
RELEASING_STATES = frozenset({_S.FAILED, _S.CANCELLED, _S.REFUSED})
SETTLING_STATES = frozenset({_S.DELIVERED})
# Where admission moves a job: it reserves the cost (or refuses for budget) in the same transaction.
ADMITTING_STATES = frozenset({_S.RECEIVED, _S.PENDING_CONSENT})
# The steps a worker runs, each of which may crash; its attempts are counted per step.
STEP_STATES = frozenset({_S.SUBMITTING, _S.RENDERING, _S.DOWNLOADING, _S.DELIVERING})

_ENDS = RELEASING_STATES  # any unfinished job may fail, be cancelled or be refused

# --- the transition table: state -> the states it may move to ------------------------------
MOVES: dict[JobState, frozenset[JobState]] = {
    _S.RECEIVED: frozenset({_S.PENDING_CONSENT, _S.QUEUED}) | _ENDS,
    _S.PENDING_CONSENT: frozenset({_S.QUEUED}) | _ENDS,
    _S.QUEUED: frozenset({_S.SUBMITTING}) | _ENDS,
    _S.SUBMITTING: frozenset({_S.RENDERING}) | _ENDS,
    _S.RENDERING: frozenset({_S.DOWNLOADING}) | _ENDS,
    _S.DOWNLOADING: frozenset({_S.DELIVERING}) | _ENDS,
    _S.DELIVERING: frozenset({_S.DELIVERED, _S.UNDELIVERED}) | _ENDS,
    _S.UNDELIVERED: frozenset({_S.DELIVERING}) | _ENDS,
    _S.DELIVERED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
    _S.REFUSED: frozenset(),
}


def can_move(source: JobState, target: JobState) -> bool:
    """Whether the table allows ``source -> target``."""
    return target in MOVES[source]


def all_moves() -> frozenset[tuple[JobState, JobState]]:
    """Every allowed ``(from, to)`` pair of the table."""
    return frozenset((a, b) for a, targets in MOVES.items() for b in targets)


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
    # How often the step ``attempt_step`` was begun; a claim increments it (it survives restarts).
    attempts: int = 0
    attempt_step: str | None = None
    # After a crash the step is tried again no earlier than this (unix time).
    not_before: float | None = None
    undelivered_at: float | None = None
    # Renders ahead of this one in the provider's own queue while it waits there (0 = next); None otherwise.
    provider_position: int | None = None
    # A stop was asked for (``cancel_requested``): the state it must end in, and why.
    stop_to: JobState | None = None
    stop_reason: str | None = None

    @property
    def user_key(self) -> str:
        return f"{self.platform}:{self.workspace_id}:{self.user_id}"
