"""Turning OpenRouter's HTTP failures and failed jobs into ``ProviderError``.

The envelope is ``{"error": {"code": <int>, "message": "...", "metadata": {...}}}``, but bodies
vary (``routing_funnel`` metadata, ``availability`` objects, a ZodError shape on other routes, an
HTML page from a proxy), so every shape is read defensively and the HTTP status is the fallback.

The failover rule shapes this module: the worker moves a job to the model's next provider only
when nothing can have been queued. So a 5xx *answer to a create* is ambiguous (OpenRouter may
have accepted the job before failing: the reference says the outcome is unknown, and there is no
list endpoint to look it up), while a refused connection is not.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from bot.providers._http import UNSENT_ERRORS, retry_after_seconds
from bot.providers.base import ErrorKind, ProviderError

_MAX_DETAIL = 400
_CREDITS_URL = "https://openrouter.ai/credits"
_MODERATION_WORDS = ("content policy", "moderation", "policy violation", "safety", "guardrail", "nsfw")
_MODERATION_TYPES = frozenset({"content_policy_violation", "moderation", "guardrail"})
_MODEL_CODES = frozenset({"model_not_found", "model_deprecated", "no_endpoints", "region_restricted"})
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error body said, whatever its shape."""

    message: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def error_type(self) -> str:
        return str(self.metadata.get("error_type") or "").lower()

    @property
    def availability_code(self) -> str:
        availability = self.metadata.get("availability")
        if isinstance(availability, dict):
            return str(availability.get("code") or "").lower()
        return ""


def shorten(text: str) -> str:
    return _SPACE.sub(" ", _TAGS.sub(" ", text)).strip()[:_MAX_DETAIL]


def parse_error_body(body: bytes) -> ErrorInfo:
    """Reads an error body in any shape; never raises (unreadable bodies become their text)."""
    try:
        data = json.loads(body)
    except ValueError:
        return ErrorInfo(message=shorten(body[:4096].decode("utf-8", "replace")))
    if not isinstance(data, dict):
        return ErrorInfo(message=shorten(str(data)))
    error = data.get("error")
    if isinstance(error, str):
        return ErrorInfo(message=shorten(error))
    source: dict[str, Any] = error if isinstance(error, dict) else data
    message = source.get("message")
    metadata = source.get("metadata") if isinstance(source.get("metadata"), dict) else {}
    availability = source.get("availability")
    if isinstance(availability, dict) and "availability" not in metadata:
        metadata = {**metadata, "availability": availability}
    return ErrorInfo(message=shorten(message if isinstance(message, str) else ""), metadata=dict(metadata))


def _metadata_retry_after(info: ErrorInfo) -> float | None:
    value = info.metadata.get("retry_after_seconds")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    return None


def is_moderation(text: str, error_type: str = "") -> bool:
    lowered = text.lower()
    return error_type in _MODERATION_TYPES or any(word in lowered for word in _MODERATION_WORDS)


def _quota_detail(status: int, info: ErrorInfo) -> str:
    """A 402 told to an admin: what OpenRouter said and what to do about it."""
    parts = [f"OpenRouter HTTP {status}: {info.message or 'payment required'}"]
    source = info.metadata.get("limit_source")
    if source:
        parts.append(f"(limit source: {source})")
    hint = info.metadata.get("remedy_hint")
    if isinstance(hint, str) and hint:
        parts.append(f"hint: {shorten(hint)}")
    parts.append(
        f"Add credits at {_CREDITS_URL} or raise this key's credit limit; OpenRouter needs at least $1.00 "
        "of balance to start any video."
    )
    return " ".join(parts)


def error_from_status(status: int, headers: httpx.Headers, body: bytes, *, op: str) -> ProviderError:
    """Maps a non-2xx answer to a ``ProviderError``.

    Args:
        op: ``create`` for the call that starts a paid render (5xx answers are then ambiguous),
            else any other name (reads, which can always be asked again).
    """
    info = parse_error_body(body)
    detail = f"HTTP {status}: {info.message or '(no message)'}"
    retry_after = retry_after_seconds(headers) or _metadata_retry_after(info)
    error_type = info.error_type
    availability = info.availability_code
    if status == 401:
        return ProviderError(ErrorKind.AUTH, f"OpenRouter rejected the API key ({detail})", status_code=status)
    if status == 402:
        if str(info.metadata.get("reason") or "") == "in_flight_budget_exhausted":
            # Credits are tied up in running renders; they come back when those finish.
            return ProviderError(
                ErrorKind.RATE_LIMITED,
                f"{detail} (in-flight budget exhausted: too many renders running for the balance)",
                retryable=True,
                retry_after=retry_after,
                status_code=status,
            )
        return ProviderError(ErrorKind.QUOTA, _quota_detail(status, info), status_code=status)
    if status < 500 and is_moderation(info.message, error_type):
        return ProviderError(ErrorKind.MODERATION, info.message or detail, status_code=status)
    if status < 500 and (availability in _MODEL_CODES or "not a valid model" in info.message.lower()):
        return ProviderError(ErrorKind.MODEL_UNAVAILABLE, detail, status_code=status)
    if status == 403:
        return ProviderError(ErrorKind.AUTH, f"OpenRouter refused this key access ({detail})", status_code=status)
    if status == 404:
        if op == "create":  # a deprecated model, or one with no endpoints left
            return ProviderError(ErrorKind.MODEL_UNAVAILABLE, detail, status_code=status)
        return ProviderError(ErrorKind.NOT_FOUND, detail, status_code=status)
    if status == 409 and op == "download":
        # Our choice of reading (the meaning is undocumented): the output is not ready yet.
        return ProviderError(ErrorKind.SERVER, f"{detail} (the video is not ready)", retryable=True, status_code=status)
    if status == 410:
        return ProviderError(ErrorKind.NOT_FOUND, f"{detail} (the output is no longer stored)", status_code=status)
    if status == 413:
        return ProviderError(
            ErrorKind.BAD_REQUEST, "the request is over OpenRouter's 50 MiB limit (the reference image is too big)"
        )
    if status == 429:
        return ProviderError(
            ErrorKind.RATE_LIMITED, detail, retryable=True, retry_after=retry_after, status_code=status
        )
    if status == 408:
        return ProviderError(ErrorKind.TIMEOUT, detail, retryable=True, status_code=status, ambiguous=op == "create")
    if status >= 500 or status == 499:
        suffix = "; OpenRouter may have accepted the job" if op == "create" else ""
        return ProviderError(
            ErrorKind.SERVER,
            f"{detail}{suffix}",
            retryable=True,
            retry_after=retry_after,
            status_code=status,
            ambiguous=op == "create",
        )
    if 400 <= status < 500:
        return ProviderError(ErrorKind.BAD_REQUEST, info.message or detail, status_code=status)
    return ProviderError(ErrorKind.BAD_RESPONSE, f"unexpected {detail}", status_code=status)


def error_from_transport(exc: httpx.HTTPError, *, op: str) -> ProviderError:
    """Maps an httpx failure; only a create that may have been received is ambiguous."""
    unsent = isinstance(exc, UNSENT_ERRORS)
    ambiguous = op == "create" and not unsent
    suffix = "; OpenRouter may have accepted the job" if ambiguous else ""
    text = str(exc).strip()
    name = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException) and not unsent:
        return ProviderError(ErrorKind.TIMEOUT, f"{name}{suffix}", retryable=True, ambiguous=ambiguous)
    if isinstance(exc, httpx.DecodingError):
        return ProviderError(ErrorKind.BAD_RESPONSE, name, retryable=True, ambiguous=ambiguous)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return ProviderError(ErrorKind.UNAVAILABLE, name)
    return ProviderError(ErrorKind.UNAVAILABLE, f"{name}{suffix}", retryable=True, ambiguous=ambiguous)


def job_error(raw_status: str, message: str | None) -> ProviderError:
    """The error of a job that ended ``failed``, ``cancelled`` or ``expired`` (a 200 poll).

    Never retryable: a resubmission is a new paid render, which the worker decides on.
    """
    text = shorten(message or "")
    if raw_status == "expired":
        return ProviderError(ErrorKind.TIMEOUT, text or "the job exceeded OpenRouter's maximum time to live")
    if raw_status == "cancelled":
        return ProviderError(ErrorKind.SERVER, text or "the job was cancelled at OpenRouter")
    if is_moderation(text):
        return ProviderError(ErrorKind.MODERATION, text)
    return ProviderError(ErrorKind.SERVER, text or "the render failed without a reason")
