"""fal webhook signatures: ED25519 over ``request_id\\nuser_id\\ntimestamp\\nsha256hex(raw body)``, checked
against every OKP/Ed25519 key of fal's JWKS (fal-queue-api.md section 8).

The JWKS is fetched with httpx and cached (``max_age_s``, 24 h). When no cached key verifies a
signature the JWKS is fetched again, at most once per ``refresh_interval_s`` (keys rotate; a flood
of forged webhooks must not become a flood of JWKS fetches). An unreachable or malformed JWKS is
never an exception: with no key at all the answer is ``UNAVAILABLE`` (the route says 503 and fal
retries later); with old keys that do not verify it is ``BAD``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import hashlib
import logging
import time
from collections.abc import Callable, Mapping

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bot.providers._http import tls_context
from bot.web.ratelimited_log import RateLimitedLog

log = logging.getLogger(__name__)

HEADER_REQUEST_ID = "X-Fal-Webhook-Request-Id"
HEADER_USER_ID = "X-Fal-Webhook-User-Id"
HEADER_TIMESTAMP = "X-Fal-Webhook-Timestamp"
HEADER_SIGNATURE = "X-Fal-Webhook-Signature"
HEADERS = (HEADER_REQUEST_ID, HEADER_USER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE)
TOLERANCE_S = 300


class Verdict(enum.Enum):
    OK = "ok"
    BAD = "bad"  # missing headers, old, for someone else, or no key verifies: 401
    UNAVAILABLE = "unavailable"  # no key could be loaded to check it: 503


def signed_message(*, request_id: str, user_id: str, timestamp: str, body: bytes) -> bytes:
    """The bytes fal signs."""
    return f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()


def keys_from_jwks(document: object) -> tuple[Ed25519PublicKey, ...]:
    """Every usable OKP/Ed25519 key of a JWKS document; anything else in it is skipped."""
    keys: list[Ed25519PublicKey] = []
    entries = document.get("keys") if isinstance(document, dict) else None
    for jwk in entries if isinstance(entries, list) else []:
        if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
            continue
        x = jwk.get("x")
        if not isinstance(x, str):
            continue
        try:
            raw = base64.urlsafe_b64decode(x + "=" * (-len(x) % 4))
            keys.append(Ed25519PublicKey.from_public_bytes(raw))
        except (ValueError, binascii.Error):
            continue
    return tuple(keys)


class FalWebhookVerifier:
    """Checks fal webhook headers and signatures; owns the JWKS cache.

    Args:
        jwks_url: ``FAL_JWKS_URL``.
        user_id: ``FAL_USER_ID``; when set, a webhook for another fal user is refused.
        client: an httpx client to fetch the JWKS with (one is made, and closed by ``aclose``, if not given).
        refresh_interval_s: the least time between two fetches.
        max_age_s: how long a fetched JWKS is used before it is fetched again.
        now / clock: wall-clock seconds (for the 300 s window) and monotonic seconds (for the cache).
    """

    def __init__(
        self,
        *,
        jwks_url: str,
        user_id: str | None = None,
        client: httpx.AsyncClient | None = None,
        refresh_interval_s: float = 60.0,
        max_age_s: float = 24 * 3600.0,
        tolerance_s: float = TOLERANCE_S,
        now: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = jwks_url
        self._user_id = user_id
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(5.0), follow_redirects=False, verify=tls_context()
        )
        self._refresh_interval_s = refresh_interval_s
        self._max_age_s = max_age_s
        self._tolerance_s = tolerance_s
        self._now = now
        self._clock = clock
        self._keys: tuple[Ed25519PublicKey, ...] = ()
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self._fetch_log = RateLimitedLog(logger=log, interval_s=60.0)
        self.fetches = 0

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def verify(self, headers: Mapping[str, str], body: bytes) -> Verdict:
        """The verdict on one delivery (headers as received, the raw body bytes)."""
        values = [headers.get(name) for name in HEADERS]
        if any(not value for value in values):
            return Verdict.BAD
        request_id, user_id, timestamp, signature_hex = (str(v) for v in values)
        if not timestamp.isascii() or not timestamp.isdigit():
            return Verdict.BAD
        if abs(self._now() - int(timestamp)) > self._tolerance_s:
            return Verdict.BAD
        if self._user_id is not None and user_id != self._user_id:
            return Verdict.BAD
        try:
            signature = bytes.fromhex(signature_hex)
            message = signed_message(request_id=request_id, user_id=user_id, timestamp=timestamp, body=body)
        except (ValueError, UnicodeEncodeError):
            return Verdict.BAD
        if len(signature) != 64:
            return Verdict.BAD
        keys = await self._current_keys()
        if self._any_verifies(keys, signature, message):
            return Verdict.OK
        refreshed = await self._refresh(force=True)  # a rotated key, at most once per refresh interval
        if refreshed is not None and self._any_verifies(refreshed, signature, message):
            return Verdict.OK
        return Verdict.BAD if self._keys else Verdict.UNAVAILABLE

    @staticmethod
    def _any_verifies(keys: tuple[Ed25519PublicKey, ...], signature: bytes, message: bytes) -> bool:
        for key in keys:
            try:
                key.verify(signature, message)
                return True
            except InvalidSignature:
                continue
        return False

    async def _current_keys(self) -> tuple[Ed25519PublicKey, ...]:
        fresh = self._fetched_at is not None and self._clock() - self._fetched_at < self._max_age_s
        if fresh and self._keys:
            return self._keys
        await self._refresh(force=False)
        return self._keys

    async def _refresh(self, *, force: bool) -> tuple[Ed25519PublicKey, ...] | None:
        """Fetches the JWKS unless one was tried less than ``refresh_interval_s`` ago; the new keys, or None."""
        async with self._lock:
            now = self._clock()
            if self._attempted_at is not None and now - self._attempted_at < self._refresh_interval_s:
                return None if force else self._keys
            self._attempted_at = now
            self.fetches += 1
            try:
                response = await self._client.get(self._url, headers={"Accept": "application/json"})
                response.raise_for_status()
                keys = keys_from_jwks(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                self._fetch_log.note("fal's JWKS could not be fetched (%s); keeping the keys I had", type(exc).__name__)
                return None
            if not keys:
                self._fetch_log.note("fal's JWKS has no Ed25519 key; keeping the keys I had")
                return None
            self._keys, self._fetched_at = keys, now
            return keys


__all__ = ["HEADERS", "FalWebhookVerifier", "Verdict", "keys_from_jwks", "signed_message"]
