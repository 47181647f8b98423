"""Turning fal's HTTP failures, failed requests and transport errors into ``ProviderError``.

fal answers errors in three layers (reference §7), and each needs its own reading:

- auth and routing: ``{"detail": "text"}`` with 401/403/404;
- model errors: 422 with ``{"detail": [{"loc", "msg", "type", ...}]}`` (content policy is
  ``type == "content_policy_violation"``, with ``categories``);
- infrastructure: ``{"detail": "Request timed out", "error_type": "request_timeout"}`` with 5xx and
  the same value in ``X-Fal-Error-Type``; or an nginx page from the ingress, without
  ``x-fal-request-id`` (nothing reached fal's queue).

Whether a failed *submit* can have queued a paid request decides failover (``ambiguous``): an answer
that did not come from fal's own servers (no ``x-fal-request-id``) or a connection that never opened
cannot have queued anything; a 500 carrying fal's request id, or a connection lost after the body
was sent, may have.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bot.providers._http import retry_after_seconds
from bot.providers.base import ErrorKind, ProviderError

_MAX_DETAIL = 500
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_MODERATION_TYPES = frozenset({"content_policy_violation", "content_moderation", "nsfw", "safety_violation"})
_QUOTA_WORDS = ("exhausted balance", "balance", "top up", "billing", "insufficient credit", "out of credit")
_TIMEOUT_TYPES = frozenset({"request_timeout", "startup_timeout"})
REQUEST_ID_HEADER = "x-fal-request-id"


@dataclass(frozen=True, slots=True)
class FalErrorBody:
    """What an error answer said, whatever its layer.

    Attributes:
        message: one line for admins (list details joined, tags stripped).
        error_type: the infrastructure ``error_type`` (body or ``X-Fal-Error-Type``).
        types: the ``type`` of each model error object (``content_policy_violation`` ...).
        categories: content-policy categories, when given.
    """

    message: str = ""
    error_type: str | None = None
    types: tuple[str, ...] = ()
    categories: tuple[str, ...] = field(default=())

    @property
    def is_moderation(self) -> bool:
        return any(kind in _MODERATION_TYPES for kind in self.types) or (self.error_type or "") in _MODERATION_TYPES


def _shorten(text: str) -> str:
    return _SPACE.sub(" ", _TAGS.sub(" ", text)).strip()[:_MAX_DETAIL]


def _describe(item: dict[str, Any]) -> str:
    msg = item.get("msg") if isinstance(item.get("msg"), str) else ""
    loc = item.get("loc")
    where = ".".join(str(part) for part in loc if part != "body") if isinstance(loc, list) else ""
    return f"{where}: {msg}" if where and msg else msg or where


def parse_error_body(body: bytes, headers: httpx.Headers | None = None) -> FalErrorBody:
    """Reads any of fal's error shapes; never raises (unreadable bodies become their text)."""
    header_type = headers.get("x-fal-error-type") if headers is not None else None
    try:
        data = json.loads(body)
    except ValueError:
        return FalErrorBody(message=_shorten(body[:4096].decode("utf-8", "replace")), error_type=header_type)
    if not isinstance(data, dict):
        return FalErrorBody(message=_shorten(str(data)), error_type=header_type)
    detail = data.get("detail")
    error_type = data.get("error_type") if isinstance(data.get("error_type"), str) else header_type
    if isinstance(detail, list):
        items = [item for item in detail if isinstance(item, dict)]
        types = tuple(str(item["type"]) for item in items if isinstance(item.get("type"), str))
        categories: list[str] = []
        for item in items:
            found = item.get("categories")
            if isinstance(found, list):
                categories.extend(str(c) for c in found if isinstance(c, str) and c not in categories)
        message = "; ".join(filter(None, (_describe(item) for item in items)))
        return FalErrorBody(_shorten(message), error_type, types, tuple(categories))
    if isinstance(detail, str):
        return FalErrorBody(_shorten(detail), error_type)
    for key in ("error", "message"):
        if isinstance(data.get(key), str):
            return FalErrorBody(_shorten(data[key]), error_type)
    return FalErrorBody(_shorten(json.dumps(data)[:_MAX_DETAIL]), error_type)


def _with_ids(text: str, headers: httpx.Headers, status: int) -> str:
    request_id = headers.get(REQUEST_ID_HEADER)
    suffix = f" (HTTP {status}" + (f", fal request {request_id})" if request_id else ")")
    return (text or "(no message)") + suffix


def _moderation_detail(info: FalErrorBody) -> str:
    reason = info.message or "the content was flagged by a content checker"
    return f"{reason} [categories: {', '.join(info.categories)}]" if info.categories else reason


def _is_quota(status: int, info: FalErrorBody) -> bool:
    lowered = info.message.lower()
    return status == 402 or (status in (401, 403) and any(word in lowered for word in _QUOTA_WORDS))


def error_from_status(
    status: int,
    headers: httpx.Headers,
    body: bytes,
    *,
    submit: bool = False,
    model_id: str = "",
    now: Callable[[], float] = time.time,
) -> ProviderError:
    """Maps a non-2xx answer of the queue (submit, status, cancel or result fetch) to a ``ProviderError``.

    Args:
        submit: the answer was to a submit; decides ``ambiguous`` for 5xx (a 5xx that carries
            ``x-fal-request-id`` came from fal's servers, which may have queued the request).
        model_id: named in the detail of a submit refused as unknown (404).
    """
    info = parse_error_body(body, headers)
    detail = _with_ids(info.message, headers, status)
    if _is_quota(status, info):
        return ProviderError(
            ErrorKind.QUOTA,
            f"fal refused for billing: {detail}; top up at fal.ai/dashboard/billing",
            status_code=status,
        )
    if status in (401, 403):
        return ProviderError(
            ErrorKind.AUTH, f"fal rejected the key (FAL_KEY, sent as 'Key id:secret'): {detail}", status_code=status
        )
    if status == 404:
        if submit:
            return ProviderError(
                ErrorKind.MODEL_UNAVAILABLE, f"fal has no endpoint {model_id!r}: {detail}", status_code=status
            )
        return ProviderError(ErrorKind.NOT_FOUND, detail, status_code=status)
    if status == 429:
        return ProviderError(
            ErrorKind.RATE_LIMITED,
            f"over the fal key's concurrent-request limit: {detail}",
            retryable=True,
            retry_after=retry_after_seconds(headers, now=now),
            status_code=status,
        )
    if 400 <= status < 500 and info.is_moderation:
        return ProviderError(ErrorKind.MODERATION, _moderation_detail(info), status_code=status)
    if status == 408:
        return ProviderError(ErrorKind.TIMEOUT, detail, retryable=True, status_code=status)
    if status == 409:
        return ProviderError(ErrorKind.SERVER, detail, retryable=True, status_code=status)
    if status >= 500:
        from_fal = REQUEST_ID_HEADER in headers
        if submit and from_fal:
            return ProviderError(
                ErrorKind.SERVER,
                f"{detail}; fal may have queued the request, so it is not sent again",
                status_code=status,
                ambiguous=True,
            )
        kind = ErrorKind.TIMEOUT if (info.error_type or "") in _TIMEOUT_TYPES else ErrorKind.SERVER
        return ProviderError(
            kind, detail, retryable=True, retry_after=retry_after_seconds(headers, now=now), status_code=status
        )
    if 400 <= status < 500:
        return ProviderError(ErrorKind.BAD_REQUEST, info.message or detail, status_code=status)
    return ProviderError(ErrorKind.BAD_RESPONSE, f"unexpected HTTP {status}: {detail}", status_code=status)


def failed_request_error(status: int, headers: httpx.Headers, body: bytes) -> ProviderError:
    """The error of a request fal reports as COMPLETED with a failure (the result GET's own status).

    422 is the model refusing (moderation with its reason, else the validation message); 5xx are
    runner or infrastructure failures, which fal does not bill, so trying again is safe.
    """
    info = parse_error_body(body, headers)
    if info.is_moderation:
        return ProviderError(ErrorKind.MODERATION, _moderation_detail(info), status_code=status)
    detail = _with_ids(info.message, headers, status)
    if (info.error_type or "") in _TIMEOUT_TYPES or status == 504:
        return ProviderError(ErrorKind.TIMEOUT, detail, retryable=True, status_code=status)
    if status >= 500:
        return ProviderError(ErrorKind.SERVER, detail, retryable=True, status_code=status)
    if 400 <= status < 500:
        return ProviderError(ErrorKind.BAD_REQUEST, info.message or detail, status_code=status)
    return ProviderError(ErrorKind.BAD_RESPONSE, f"unexpected HTTP {status}: {detail}", status_code=status)


def status_error(error: str, error_type: str | None) -> ProviderError:
    """A failure known only from the status answer (``error``/``error_type``), when the result cannot be read."""
    text = f"{error} [{error_type}]" if error_type else error
    lowered = (error_type or "").lower()
    if lowered in _MODERATION_TYPES:
        return ProviderError(ErrorKind.MODERATION, text)
    if lowered in _TIMEOUT_TYPES:
        return ProviderError(ErrorKind.TIMEOUT, text, retryable=True)
    return ProviderError(ErrorKind.SERVER, text, retryable=lowered.startswith("runner_"))
