"""The provider interface the worker drives, independent of any vendor.

Adding a vendor means adding a module here that implements ``VideoProvider``; adapters never
see providers, and the worker only sees this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from bot.clip_stream import ClipStream


class VideoStatus(StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"


class ErrorKind(StrEnum):
    """What went wrong, in terms the bot can explain and decide retries on."""

    MODERATION = "moderation"
    AUTH = "auth"
    MODEL_UNAVAILABLE = "model_unavailable"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    QUOTA = "quota"  # the account is out of credit or quota: only an admin can fix it
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    SERVER = "server"
    UNAVAILABLE = "unavailable"  # host unreachable, connection refused or reset
    BAD_RESPONSE = "bad_response"  # garbage JSON, a clip that is not a video


_PLAIN: dict[ErrorKind, str] = {
    ErrorKind.MODERATION: "The video service's moderation blocked this request; try a different prompt.",
    ErrorKind.AUTH: "The video service rejected reelbot's API key; an admin needs to check it (`reelbot doctor`).",
    ErrorKind.MODEL_UNAVAILABLE: "The video service does not offer this model (it may be retired).",
    ErrorKind.TIMEOUT: "The video service did not finish in time.",
    ErrorKind.RATE_LIMITED: "The video service is busy (rate limited); try again in a little while.",
    ErrorKind.QUOTA: "reelbot's video service account is out of credit or quota; an admin needs to check its billing.",
    ErrorKind.BAD_REQUEST: "The video service refused the request.",
    ErrorKind.NOT_FOUND: "The video service no longer knows this video.",
    ErrorKind.SERVER: "The video service had an internal error.",
    ErrorKind.UNAVAILABLE: "The video service could not be reached.",
    ErrorKind.BAD_RESPONSE: "The video service sent back something that is not a usable answer.",
}


class ProviderError(Exception):
    """A provider call failed.

    Attributes:
        kind: the category, for retry decisions and wording.
        detail: the provider's own message (for logs; may be shown after the plain sentence).
        retryable: whether the same call may succeed later.
        retry_after: seconds the provider asked us to wait, when it said.
        ambiguous: the request may have reached the service before the failure (a read timeout
            or a reset), so a call that starts a paid render must not simply be sent again.
    """

    def __init__(
        self,
        kind: ErrorKind,
        detail: str = "",
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status_code: int | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(f"{kind}: {detail}" if detail else str(kind))
        self.kind = kind
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after
        self.status_code = status_code
        self.ambiguous = ambiguous

    @property
    def user_message(self) -> str:
        """One plain sentence for the person who asked."""
        base = _PLAIN[self.kind]
        if self.kind is ErrorKind.BAD_REQUEST and self.detail:
            return f"{base} It said: {self.detail[:300]}"
        return base


@dataclass(frozen=True, slots=True)
class ReferenceImage:
    """An image already fitted to the exact clip size (the protocol wants exact dimensions)."""

    data: bytes
    content_type: str  # image/jpeg, image/png or image/webp
    filename: str
    is_likeness: bool = False  # a registered cameo, not a plain reference


@dataclass(frozen=True, slots=True)
class Route:
    """How one provider serves one catalog model (a row of the model catalog's ``routes``).

    Attributes:
        provider: the provider's name in reelbot (``fal``, ``openrouter``, ``openai``, ``local``).
        model_id: the provider's own id for text-to-video (``fal-ai/veo3.1/fast``, ``google/veo-3.1-fast``).
        image_model_id: the id for a first frame (image-to-video), when the provider uses another one.
        reference_model_id: the id for subject reference images (a cameo), when the provider uses another one.
    """

    provider: str
    model_id: str
    image_model_id: str = ""
    reference_model_id: str = ""


@dataclass(frozen=True, slots=True)
class RenderSpec:
    """One render, in the catalog's terms; each provider maps it onto its own wire format.

    Attributes:
        model: the catalog name people type (``veo-3.1-fast``); ``family`` says whose input
            conventions it follows (``veo``, ``kling``, ``seedance``, ``ltx``, ``wan``, ``sora``).
        size: the exact frame ``WxH`` (what the local renderer and /v1/videos take).
        aspect, resolution: ``16:9``/``9:16``/``1:1`` and ``720p``/``1080p`` (what the aggregators take).
        audio: whether to generate sound; None leaves it to the model (always or never).
        reference: a first frame, or a cameo when ``reference.is_likeness`` (sent as the subject
            reference to models that take one).
        route: the provider's ids for this model; None for providers that take ``model`` as is.
        webhook_url: where the provider should call back on completion, when reelbot listens.
    """

    prompt: str
    model: str
    size: str  # "WxH"
    seconds: int
    reference: ReferenceImage | None = None
    aspect: str = ""
    resolution: str = ""
    audio: bool | None = None
    seed: int | None = None
    negative_prompt: str = ""
    family: str = ""
    route: Route | None = None
    webhook_url: str | None = None


@dataclass(frozen=True, slots=True)
class ProviderVideo:
    """A provider's view of one video, normalised across relay variants.

    ``poll_after`` is the provider's hint, in seconds, for when to ask again (e.g. from
    ``openai-poll-after-ms``), or None when it gave none.
    """

    id: str
    status: VideoStatus
    progress: int = 0
    error: ProviderError | None = None
    poll_after: float | None = None
    download_url: str | None = None
    #: Renders ahead of this one in the provider's queue (fal tells; 0 = next), None when unknown.
    queue_position: int | None = None


ProgressCallback = Callable[[int], None]


@runtime_checkable
class VideoProvider(Protocol):
    """What the worker needs from a video service."""

    name: str
    #: Whether the service accepts references that show a real person (cameos).
    accepts_likeness: bool

    async def create(self, spec: RenderSpec) -> ProviderVideo:
        """Starts a render and returns at once with the provider's id."""
        ...

    async def retrieve(self, video_id: str) -> ProviderVideo:
        """The current status of a render."""
        ...

    async def download(self, video_id: str, dest: Path, *, stream: ClipStream | None = None) -> int:
        """Streams the finished MP4 to ``dest`` and returns its size in bytes.

        ``stream``, when given, gets the bytes as they are written (``bot.clip_stream``); a provider
        that cannot feed it leaves it alone.
        """
        ...

    async def delete(self, video_id: str) -> None:
        """Deletes the video and its assets at the provider (best effort for unfinished ones)."""
        ...

    async def remix(self, video_id: str, prompt: str) -> ProviderVideo:
        """Starts a new render that changes a finished one according to ``prompt``."""
        ...

    async def retrieve_many(self, video_ids: Collection[str], *, since: float) -> dict[str, ProviderVideo]:
        """The statuses of many renders in a few requests, as far as the service can tell.

        Args:
            video_ids: the renders wanted.
            since: unix seconds; none of them was asked for before this, so a newest-first
                listing can stop once it is past it.

        Returns:
            The ones found, by id. The caller asks about the rest one by one, so a service with
            no way to list returns an empty dict.

        Raises:
            ProviderError: when the service cannot be asked right now.
        """
        ...

    async def find_recent(self, spec: RenderSpec, since: float) -> ProviderVideo | None:
        """A render of ``spec`` created at or after ``since`` (unix seconds), if the service has one.

        Used after a crash between sending a create and storing its id, so the render is adopted
        rather than paid for twice.

        Raises:
            ProviderError: when the service cannot be asked right now.
        """
        ...

    async def aclose(self) -> None:
        """Releases connections and background tasks."""
        ...


@runtime_checkable
class TakesWebhookResults(Protocol):
    """A provider whose signed webhooks carry the finished render's result (fal), so it can skip asking."""

    def take_webhook_result(self, video_id: str, body: Mapping[str, Any]) -> bool:
        """Remembers what a verified ``OK`` webhook says; True when the render's result was in it."""
        ...
