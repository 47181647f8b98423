"""Turning an OpenRouter job object (``VideoGenerationResponse``) into a ``ProviderVideo``.

Statuses (an open enum): ``pending`` -> QUEUED, ``in_progress`` -> IN_PROGRESS, ``completed`` ->
COMPLETED, and ``failed``/``cancelled``/``expired`` -> FAILED with the string ``error``. Any other
status is *not* terminal: it counts as in progress, and the worker's deadline bounds it.

There is no progress field, so progress is an estimate from the time since the job was first
seen: ``100 * elapsed / expected``, held below 95 until the job completes.
"""

from __future__ import annotations

from typing import Any

from bot.providers._http import bad_response
from bot.providers.base import ProviderError, ProviderVideo, VideoStatus
from bot.providers.openrouter._errors import job_error

_STATUS = {
    "pending": VideoStatus.QUEUED,
    "in_progress": VideoStatus.IN_PROGRESS,
    "completed": VideoStatus.COMPLETED,
    "failed": VideoStatus.FAILED,
    "cancelled": VideoStatus.FAILED,
    "expired": VideoStatus.FAILED,
}
_MAX_ESTIMATE = 95


def raw_status(payload: dict[str, Any]) -> str:
    value = payload.get("status")
    return value.strip().lower() if isinstance(value, str) else ""


def parse_status(raw: str) -> VideoStatus:
    return _STATUS.get(raw, VideoStatus.IN_PROGRESS)


def estimate_progress(elapsed: float, expected: float) -> int:
    if expected <= 0 or elapsed <= 0:
        return 0
    return max(0, min(_MAX_ESTIMATE, int(100 * elapsed / expected)))


def job_id(payload: Any) -> str:
    """The job's id, or BAD_RESPONSE when the answer has none."""
    if not isinstance(payload, dict):
        raise bad_response(f"expected a JSON object, got {type(payload).__name__}")
    value = payload.get("id")
    if not isinstance(value, str) or not value.strip():
        raise bad_response("the answer has no job id")
    return value.strip()


def normalise_job(payload: Any, *, elapsed: float, expected: float) -> ProviderVideo:
    """A ``ProviderVideo`` from a decoded job object.

    Args:
        elapsed: seconds since this job was first seen (for the progress estimate).
        expected: seconds a render usually takes.
    """
    video_id = job_id(payload)
    raw = raw_status(payload)
    status = parse_status(raw)
    error: ProviderError | None = None
    if status is VideoStatus.COMPLETED:
        progress = 100
    elif status is VideoStatus.FAILED:
        progress = 0
        message = payload.get("error")
        if isinstance(message, dict):  # not the documented shape, but tolerated
            message = message.get("message")
        error = job_error(raw, message if isinstance(message, str) else None)
    else:
        progress = estimate_progress(elapsed, expected)
    return ProviderVideo(id=video_id, status=status, progress=progress, error=error)
