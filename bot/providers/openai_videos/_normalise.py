"""Turning a ``/v1/videos`` answer (or a relay's variant of it) into a ``ProviderVideo``.

Shapes accepted, all seen in the spec or in public client code for relays:

- the OpenAI Video object, with null keys or with the null keys left out;
- a ``{"data": {...}}`` wrapper, with the id as ``id``, ``task_id`` or ``video_id``;
- statuses in any case, including ``SUCCESS``/``FAILURE``/``IN_PROGRESS``/``NOT_START``;
- ``progress`` as an int, a float or a string such as ``"33%"``;
- a failure as ``error: {code, message}``, ``error: "text"``, ``fail_reason`` or
  ``failure_reason``;
- a download URL as ``url``, ``video_url`` or ``download_url``.

Unknown fields are ignored. Unknown statuses count as in progress: the worker's overall deadline
bounds a job that never reaches a terminal state.
"""

from __future__ import annotations

import math
from typing import Any

from bot.providers._http import bad_response
from bot.providers.base import ProviderError, ProviderVideo, VideoStatus
from bot.providers.openai_videos._errors import job_error

_STATUS: dict[str, VideoStatus] = {}
for _names, _status in (
    (("queued", "pending", "submitted", "not_start", "not_started", "preprocessing", "waiting"), VideoStatus.QUEUED),
    (("in_progress", "processing", "running", "generating", "started"), VideoStatus.IN_PROGRESS),
    (("completed", "complete", "succeeded", "success", "succeed", "done", "finished"), VideoStatus.COMPLETED),
    (("failed", "failure", "fail", "error", "cancelled", "canceled", "expired"), VideoStatus.FAILED),
):
    for _name in _names:
        _STATUS[_name] = _status

_ID_KEYS = ("id", "task_id", "video_id")
_URL_KEYS = ("url", "video_url", "download_url")


def parse_status(raw: Any) -> VideoStatus:
    if not isinstance(raw, str):
        return VideoStatus.IN_PROGRESS
    key = raw.strip().lower().replace("-", "_").replace(" ", "_")
    return _STATUS.get(key, VideoStatus.IN_PROGRESS)


def parse_progress(raw: Any) -> int:
    """0-100 from an int, a float, ``"33"`` or ``"33%"``; anything else is 0."""
    if isinstance(raw, bool) or raw is None:
        return 0
    if isinstance(raw, str):
        try:
            value = float(raw.strip().rstrip("%").strip())
        except ValueError:
            return 0
    elif isinstance(raw, int | float):
        value = float(raw)
    else:
        return 0
    if not math.isfinite(value):
        return 0
    return max(0, min(100, int(value)))


def _unwrap(payload: dict[str, Any]) -> dict[str, Any]:
    inner = payload.get("data")
    if isinstance(inner, dict) and not any(key in payload for key in _ID_KEYS):
        return inner
    return payload


def _video_id(body: dict[str, Any]) -> str | None:
    for key in _ID_KEYS:
        value = body.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def _download_url(body: dict[str, Any]) -> str | None:
    for key in _URL_KEYS:
        value = body.get(key)
        if isinstance(value, str) and value.startswith(("https://", "http://")):
            return value
    return None


def _failure(body: dict[str, Any], raw_status: Any) -> ProviderError:
    error = body.get("error")
    code: str | None = None
    message: str | None = None
    if isinstance(error, dict):
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
    elif isinstance(error, str) and error:
        message = error
    for key in ("fail_reason", "failure_reason"):
        value = body.get(key)
        if isinstance(value, str) and value and not message:
            message = value
        if isinstance(value, str) and value and not code and "_" in value and " " not in value:
            code = value  # Azure-style reasons such as "input_moderation" are codes
    if not code and not message:
        if isinstance(raw_status, str) and raw_status.lower() in ("cancelled", "canceled", "expired"):
            message = f"the job ended as {raw_status.lower()} at the provider"
        else:
            message = "the render failed without a reason"
    return job_error(code, message)


def normalise_video(payload: Any, *, poll_after: float | None = None) -> ProviderVideo:
    """A ``ProviderVideo`` from a decoded JSON answer.

    Raises:
        ProviderError: BAD_RESPONSE (retryable) when the answer is not an object or has no id.
    """
    if not isinstance(payload, dict):
        raise bad_response(f"expected a JSON object, got {type(payload).__name__}")
    body = _unwrap(payload)
    video_id = _video_id(body)
    if video_id is None:
        hint = body.get("message") or payload.get("message")
        extra = f": {str(hint)[:200]}" if hint else ""
        raise bad_response(f"the answer has no video id{extra}")
    raw_status = body.get("status")
    status = parse_status(raw_status)
    progress = parse_progress(body.get("progress"))
    if status is VideoStatus.COMPLETED:
        progress = 100
    error = _failure(body, raw_status) if status is VideoStatus.FAILED else None
    return ProviderVideo(
        id=video_id,
        status=status,
        progress=progress,
        error=error,
        poll_after=poll_after,
        download_url=_download_url(body),
    )
