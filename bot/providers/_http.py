"""HTTP pieces the provider clients share: server-requested waits, error bodies, transport failures.

Why these live together: each provider maps HTTP answers and httpx failures to ``ProviderError``
in its own ``_errors`` module (their bodies and failover rules differ), but the parts that follow
from HTTP itself, not from a provider, are the same everywhere and are kept once here:

- ``Retry-After`` (delta-seconds, possibly fractional, or an HTTP date) and OpenAI's
  ``retry-after-ms``; nonsense (negative, NaN, unparseable) counts as no wait asked for.
- which httpx errors prove the request never reached the server (``UNSENT_ERRORS``): a server
  cannot act on a body it did not fully receive, so only these make resending a paid create safe.
- reading at most a capped prefix of a streamed error body (error bodies are for messages, not
  for memory), and a 2xx body that is not JSON (a proxy's page) as a retryable BAD_RESPONSE.
- ``videos/{id}`` paths with the id percent-encoded, and request headers that carry the key only
  when asked to (a download URL on another host must never receive it).
"""

from __future__ import annotations

import email.utils
import functools
import json
import math
import os
import ssl
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import certifi
import httpx

from bot.providers._secret import Secret
from bot.providers.base import ErrorKind, ProviderError

__all__ = [
    "UNSENT_ERRORS",
    "StatusFailure",
    "bad_response",
    "error_from_transport",
    "media_type",
    "milliseconds_header",
    "parse_json",
    "read_capped",
    "request_headers",
    "retry_after_ms",
    "retry_after_seconds",
    "video_path",
]

#: Raised before a single byte of the request could have been acted on by the server.
UNSENT_ERRORS: tuple[type[httpx.HTTPError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
)


class StatusFailure(Exception):
    """A non-2xx answer, carried out of one attempt to a retry loop (which maps it to a ``ProviderError``)."""

    def __init__(self, *, status: int, headers: httpx.Headers, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers
        self.body = body

    @classmethod
    def of(cls, response: httpx.Response, *, limit: int) -> StatusFailure:
        """From a read (not streamed) response, keeping at most ``limit`` bytes of its body."""
        return cls(status=response.status_code, headers=response.headers, body=response.content[:limit])


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every HTTP client in the process, as httpx builds each one by default: certifi's CA
    bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` where an operator set them (a company's own CA).

    Building one loads the CA bundle: ~35 ms of CPU per client, paid again by every client made.
    """
    cafile, capath = os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")
    return ssl.create_default_context(cafile=cafile or (None if capath else certifi.where()), capath=capath)


def milliseconds_header(headers: httpx.Headers, name: str) -> float | None:
    """A header that carries milliseconds (``retry-after-ms``, ``openai-poll-after-ms``) as seconds, or None.

    None when absent or nonsense (not a number, negative, infinite).
    """
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw) / 1000.0
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def retry_after_ms(headers: httpx.Headers) -> float | None:
    """OpenAI's ``retry-after-ms`` as seconds, or None when absent or nonsense."""
    return milliseconds_header(headers, "retry-after-ms")


def retry_after_seconds(headers: httpx.Headers, *, now: Callable[[], float] = time.time) -> float | None:
    """``Retry-After`` as seconds (delta-seconds, possibly fractional, or an HTTP date), or None.

    None when the header is absent or nonsense; a date in the past is a wait of 0.
    """
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        return None if when is None else max(0.0, when.timestamp() - now())
    return value if math.isfinite(value) and value >= 0 else None


def video_path(video_id: str, *rest: str) -> str:
    """``videos/{id}[/rest...]`` with the id fully percent-encoded (an id is never a path of its own)."""
    if not video_id:
        raise ProviderError(ErrorKind.BAD_REQUEST, "empty video id")
    return "/".join(("videos", quote(video_id, safe=""), *rest))


def request_headers(*, key: Secret | None, accept: str = "application/json") -> dict[str, str]:
    """``Accept``, plus ``Authorization: Bearer`` when ``key`` is given (None: a host that must not see it)."""
    headers = {"Accept": accept}
    if key is not None:
        headers["Authorization"] = f"Bearer {key.reveal()}"
    return headers


def bad_response(detail: str) -> ProviderError:
    """A 2xx answer that cannot be used. Retryable: a later call may get a sane answer."""
    return ProviderError(ErrorKind.BAD_RESPONSE, detail, retryable=True)


def parse_json(body: bytes) -> Any:
    """The JSON of a 2xx answer; a body that is not JSON (a proxy's HTML page) is a retryable BAD_RESPONSE."""
    try:
        return json.loads(body)
    except ValueError:
        snippet = body[:120].decode("utf-8", "replace")
        raise bad_response(f"the answer is not JSON: {snippet!r}") from None


def media_type(headers: httpx.Headers) -> str:
    """The ``Content-Type`` without parameters, lower-cased ('' when absent)."""
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_capped(response: httpx.Response, *, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body; the rest is never read into memory."""
    buffer = bytearray()
    async for chunk in response.aiter_bytes():
        buffer += chunk
        if len(buffer) >= limit:
            break
    return bytes(buffer[:limit])


def error_from_transport(exc: httpx.HTTPError, *, sent: bool, reached: str = "the server") -> ProviderError:
    """Maps an httpx transport failure to a ``ProviderError``.

    Args:
        exc: what httpx raised.
        sent: whether the request may have reached the server: then the error is ``ambiguous``
            and says so (the caller decides whether resending is safe).
        reached: who the request may have reached, for the wording ("the server", "fal").
    """
    suffix = f"; the request may have reached {reached}" if sent else ""
    text = str(exc).strip()
    name = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(ErrorKind.TIMEOUT, f"{name}{suffix}", retryable=True, ambiguous=sent)
    if isinstance(exc, httpx.DecodingError):
        return ProviderError(ErrorKind.BAD_RESPONSE, name, retryable=True)
    if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol):
        return ProviderError(ErrorKind.UNAVAILABLE, f"{name}{suffix}", retryable=True, ambiguous=sent)
    return ProviderError(ErrorKind.UNAVAILABLE, name)
