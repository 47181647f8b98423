"""OpenRouter's video webhooks: checking the signature and reading the event.

OpenRouter POSTs one event when a job reaches a terminal state, to the job's ``callback_url`` or
the workspace default. With a workspace signing secret, each delivery carries
``X-OpenRouter-Signature: t=<unix seconds>,v1=<hex>`` where ``v1`` is the hex HMAC-SHA256, keyed
by the secret as plain UTF-8, of ``"<t>," + <raw body bytes>``; ``X-OpenRouter-Idempotency-Key``
is ``<job id>-<status>`` (deliveries are retried and may repeat).

The endpoint that uses this must: verify on the *raw* bytes before parsing (a re-serialised body
fails), refuse unsigned deliveries when a secret is configured, answer 2xx fast, dedupe on the
idempotency key, and treat the event as a nudge: re-poll ``GET /videos/{id}`` before acting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass

from bot.providers.base import VideoStatus
from bot.providers.openrouter._normalise import parse_status

SIGNATURE_HEADER = "X-OpenRouter-Signature"
IDEMPOTENCY_HEADER = "X-OpenRouter-Idempotency-Key"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def verify_openrouter_signature(
    *, secret: str, headers: Mapping[str, str], body: bytes, now: float, tolerance_s: float = 300
) -> bool:
    """Whether ``body`` was signed by OpenRouter with ``secret`` within ``tolerance_s`` of ``now``.

    The timestamp window is two-sided (``|now - t| <= tolerance_s``), so a delivery from a clock
    far ahead is refused as well as a replayed old one. Several ``v1=`` entries (a rotation) are
    accepted if any matches. An empty secret, a missing or malformed header, or a non-integer
    timestamp all give False. The comparison is constant-time.
    """
    if not secret:
        return False
    header = _header(headers, SIGNATURE_HEADER)
    if not header:
        return False
    timestamp = ""
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            timestamp = value.strip()
        elif key == "v1":
            candidates.append(value.strip().lower())
    if not timestamp.isdigit() or not candidates or not math.isfinite(now):
        return False
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    expected = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"," + body, hashlib.sha256).hexdigest()
    matched = False
    for candidate in candidates:
        # compare_digest is constant-time for equal lengths; the length check comes first.
        if len(candidate) == len(expected) and hmac.compare_digest(candidate.encode(), expected.encode()):
            matched = True
    return matched


@dataclass(frozen=True, slots=True)
class OpenRouterEvent:
    """A verified webhook delivery, reduced to what the bot acts on.

    Attributes:
        job_id: OpenRouter's job id (``data.id``), as ``create`` returned it.
        status: the raw status (``completed``, ``failed``, ``cancelled``, ``expired`` or newer).
        video_status: the status in reelbot's terms (unknown statuses count as in progress).
        error: the failure text, for failed events.
        event_type: ``video.generation.<status>``.
    """

    job_id: str
    status: str
    video_status: VideoStatus
    error: str | None = None
    event_type: str = ""

    @property
    def dedupe_key(self) -> str:
        """What ``X-OpenRouter-Idempotency-Key`` carries: ``<job id>-<status>``."""
        return f"{self.job_id}-{self.status}"


def parse_openrouter_event(body: bytes) -> OpenRouterEvent:
    """(job id, status) and the rest from a verified delivery's raw body.

    Raises:
        ValueError: with one sentence when the body is not an OpenRouter video event.
    """
    try:
        payload = json.loads(body)
    except ValueError:
        raise ValueError("The webhook body is not JSON.") from None
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        raise ValueError("The webhook body has no data object.")
    job_id = data.get("id")
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("The webhook event does not name a job.")
    event_type = payload.get("type") if isinstance(payload.get("type"), str) else ""
    status = data.get("status")
    if not isinstance(status, str) or not status:
        prefix = "video.generation."
        if not event_type.startswith(prefix):
            raise ValueError("The webhook event has no status.")
        status = event_type[len(prefix) :]
    status = status.strip().lower()
    error = data.get("error")
    return OpenRouterEvent(
        job_id=job_id,
        status=status,
        video_status=parse_status(status),
        error=error if isinstance(error, str) else None,
        event_type=event_type,
    )
