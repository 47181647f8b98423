"""When to retry a call, and how long to wait first.

This follows the OpenAI SDKs' rules (``_should_retry`` / ``_calculate_retry_timeout``) so the
service sees the client behaviour it was designed for:

- 408, 409, 429 and 5xx are retried; ``x-should-retry: true`` forces a retry and
  ``x-should-retry: false`` forbids one.
- The wait is ``retry-after-ms``, else ``Retry-After`` (seconds or an HTTP date), when
  0 < value <= 120 s; otherwise exponential backoff 0.5 s * 2^n, capped at 8 s, times a jitter
  of 0.75..1.
- A server asking for more than 120 s is not waited on inside the call: the caller gets a
  retryable error carrying ``retry_after`` and can reschedule the job instead of holding a
  worker slot.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from bot.providers._http import retry_after_ms
from bot.providers._http import retry_after_seconds as retry_after_header

RETRYABLE_STATUSES = frozenset({408, 409, 429})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter.

    Attributes:
        max_retries: retries after the first attempt (so at most ``max_retries + 1`` sends).
        base_delay: the first backoff, doubled per retry.
        max_delay: the cap of one backoff.
        max_retry_after: the longest server-requested wait honoured inside a call.
    """

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 120.0

    def backoff(self, retry_index: int, rng: random.Random) -> float:
        """The wait before retry number ``retry_index`` (0-based) when the server gave none."""
        delay = min(self.base_delay * 2.0**retry_index, self.max_delay)
        return delay * rng.uniform(0.75, 1.0)


def should_retry_status(status: int, headers: httpx.Headers) -> bool:
    """Whether an HTTP answer is worth sending again (the server explicitly may decide)."""
    forced = headers.get("x-should-retry", "").strip().lower()
    if forced == "true":
        return True
    if forced == "false":
        return False
    return status in RETRYABLE_STATUSES or status >= 500


def retry_after_seconds(headers: httpx.Headers, *, now: Callable[[], float] = time.time) -> float | None:
    """The wait the server asked for, in seconds, or None when it asked for none (or nonsense).

    ``retry-after-ms`` wins over ``Retry-After``; ``Retry-After`` may be delta-seconds (possibly
    fractional, as some relays send) or an HTTP date.
    """
    from_ms = retry_after_ms(headers)
    return from_ms if from_ms is not None else retry_after_header(headers, now=now)
