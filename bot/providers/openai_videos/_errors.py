"""Turning HTTP failures and failed jobs into ``ProviderError``.

The OpenAI envelope is ``{"error": {"message", "type", "param", "code"}}``; relays send
``{"message", "code"}`` at the top level, ``{"error": "text"}`` or an HTML page from a proxy, so
every shape is tolerated and the worst case is the first few hundred characters of the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from bot.providers.base import ErrorKind, ProviderError

_MAX_DETAIL = 500
_MODERATION_CODES = frozenset(
    {
        "moderation_blocked",
        "content_policy_violation",
        "content_filter",
        "input_moderation",
        "output_moderation",
        "sensitive_content",
    }
)
_MODEL_CODES = frozenset({"model_not_found", "model_not_available", "model_deprecated", "model_retired"})
_RETIRED_WORDS = ("retired", "deprecated", "shut down", "shutdown", "no longer available")
_RETRYABLE_JOB_CODES = frozenset(
    {"internal_error", "server_error", "internal_server_error", "timeout", "service_unavailable"}
)
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error body said, whatever its shape."""

    message: str = ""
    type: str | None = None
    param: str | None = None
    code: str | None = None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def _shorten(text: str) -> str:
    text = _SPACE.sub(" ", _TAGS.sub(" ", text)).strip()
    return text[:_MAX_DETAIL]


def parse_error_body(body: bytes) -> ErrorInfo:
    """Reads an error body in any of the shapes servers and relays use.

    Never raises: an unreadable body becomes its (shortened, tag-stripped) text.
    """
    try:
        data = json.loads(body)
    except ValueError:
        return ErrorInfo(message=_shorten(body[:4096].decode("utf-8", "replace")))
    if not isinstance(data, dict):
        return ErrorInfo(message=_shorten(str(data)))
    error = data.get("error")
    if isinstance(error, dict):
        source: Mapping[str, Any] = error
    elif isinstance(error, str):
        return ErrorInfo(message=_shorten(error), code=_text(data.get("code")))
    else:
        source = data
    message = _text(source.get("message")) or _text(source.get("detail")) or _text(source.get("msg")) or ""
    return ErrorInfo(
        message=_shorten(message),
        type=_text(source.get("type")),
        param=_text(source.get("param")),
        code=_text(source.get("code")),
    )


def is_moderation(code: str | None, message: str) -> bool:
    return (code or "").lower() in _MODERATION_CODES or "moderation" in message.lower()


def is_model_unavailable(status: int | None, code: str | None, message: str) -> bool:
    lowered = message.lower()
    if (code or "").lower() in _MODEL_CODES:
        return True
    if any(word in lowered for word in _RETIRED_WORDS):
        return True
    return status == 404 and "model" in lowered


def _detail(info: ErrorInfo, request_id: str | None) -> str:
    parts = [info.message or "(no message)"]
    if info.code:
        parts.append(f"[code {info.code}]")
    if request_id:
        parts.append(f"(request {request_id})")
    return " ".join(parts)


def error_from_status(
    status: int,
    headers: httpx.Headers,
    body: bytes,
    *,
    retry_after: float | None = None,
) -> ProviderError:
    """Maps a non-2xx answer to a ``ProviderError`` (after any retries were spent).

    The order matters: an auth failure is reported as such even when the message mentions a
    model, and moderation wins over a generic 400 so the person is told why.
    """
    info = parse_error_body(body)
    detail = _detail(info, headers.get("x-request-id"))
    code = (info.code or "").lower()
    if status in (401, 403) or code == "invalid_api_key":
        return ProviderError(ErrorKind.AUTH, detail, status_code=status)
    if status < 500 and is_moderation(code, info.message):
        return ProviderError(ErrorKind.MODERATION, detail, status_code=status)
    if status < 500 and is_model_unavailable(status, code, info.message):
        return ProviderError(ErrorKind.MODEL_UNAVAILABLE, detail, status_code=status)
    if status == 404:
        return ProviderError(ErrorKind.NOT_FOUND, detail, status_code=status)
    if status == 429:
        # insufficient_quota needs a human (billing); waiting will not fix it.
        if code == "insufficient_quota" or (info.type or "") == "insufficient_quota":
            return ProviderError(ErrorKind.QUOTA, detail, status_code=status)
        return ProviderError(
            ErrorKind.RATE_LIMITED, detail, retryable=True, retry_after=retry_after, status_code=status
        )
    if status == 408:
        return ProviderError(ErrorKind.TIMEOUT, detail, retryable=True, status_code=status)
    if status == 409 or status >= 500:
        return ProviderError(ErrorKind.SERVER, detail, retryable=True, retry_after=retry_after, status_code=status)
    if 400 <= status < 500:
        return ProviderError(ErrorKind.BAD_REQUEST, info.message or detail, status_code=status)
    return ProviderError(ErrorKind.BAD_RESPONSE, f"unexpected HTTP {status}: {detail}", status_code=status)


def job_error(code: str | None, message: str | None) -> ProviderError:
    """The error of a job that the service reports as failed (HTTP 200, status failed)."""
    message = message or ""
    text = _detail(ErrorInfo(message=_shorten(message), code=code), None)
    lowered = (code or "").lower()
    if is_moderation(lowered, message):
        return ProviderError(ErrorKind.MODERATION, text)
    if is_model_unavailable(None, lowered, message):
        return ProviderError(ErrorKind.MODEL_UNAVAILABLE, text)
    if lowered in _RETRYABLE_JOB_CODES:
        return ProviderError(ErrorKind.SERVER, text, retryable=True)
    # An unexplained failure is not retried automatically: a resubmission costs money again.
    return ProviderError(ErrorKind.SERVER, text)
