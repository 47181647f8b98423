"""Provider webhooks: ``POST /webhooks/fal`` and ``POST /webhooks/openrouter``.

A webhook wakes a render's watch at once: the signature is checked on the raw bytes before the
body is parsed, the answer goes out at once, and the injected ``on_webhook(provider,
provider_request_id, job_id)`` runs afterwards (wired to the worker, which finds the job and asks its
render watcher to ``poll_now``). A signed fal delivery that says ``OK`` also hands over its body as
``result=`` (fal's docs: "after verifying, it is fine to use payload"), so the watch learns the clip's
URL without a status and a result call; anything else is only a nudge, and the provider's own status
stays the truth. The URL
reelbot hands providers is ``{REELBOT_PUBLIC_URL}/webhooks/<provider>?job=<job id>``; the ``job``
query is passed through as a hint only (it is not signed, so the worker checks it against the job's
stored provider id).

* A bad, missing or old signature gets 401 and changes nothing; it is logged briefly, without the
  body, at most once a minute however many arrive.
* fal with no JWKS key to check against (JWKS unreachable from the start) gets 503, so fal retries.
* A repeat of a delivery (same request id and status; providers retry for hours) gets 200 and
  nothing happens again. The memory of deliveries is bounded; what the callback does is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from bot.providers.openrouter.webhooks import parse_openrouter_event, verify_openrouter_signature
from bot.web.fal_signature import HEADER_REQUEST_ID, FalWebhookVerifier, Verdict
from bot.web.ratelimited_log import RateLimitedLog

log = logging.getLogger(__name__)

FAL_PATH = "/webhooks/fal"
OPENROUTER_PATH = "/webhooks/openrouter"


class OnWebhook(Protocol):
    """Called after the answer: (provider, provider request id, job id hint or None).

    ``result`` is given only for a signed fal delivery whose status is ``OK``: its whole JSON body.
    """

    def __call__(
        self, provider: str, provider_request_id: str, job_id: str | None, /, *, result: dict[str, Any] | None = ...
    ) -> Awaitable[object]: ...


_JOB_HINT = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


def webhook_url(public_url: str, provider: str, job_id: str) -> str:
    """The URL to hand ``provider`` for ``job_id``'s webhook."""
    return f"{public_url.rstrip('/')}/webhooks/{provider}?job={job_id}"


class _Seen:
    """The last ``size`` deliveries, oldest forgotten first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: OrderedDict[tuple[str, ...], None] = OrderedDict()

    def add(self, key: tuple[str, ...]) -> bool:
        """True the first time ``key`` is seen."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return True

    def forget(self, key: tuple[str, ...]) -> None:
        self._keys.pop(key, None)


class Webhooks:
    """The webhook routes; mount ``routes()`` on the ``WebServer`` and close with ``aclose()``.

    Args:
        on_webhook: called after the answer (see ``OnWebhook``).
        fal: the fal verifier (JWKS and user id); None: the fal route is not mounted.
        openrouter_secret: ``OPENROUTER_WEBHOOK_SECRET``; None: every OpenRouter delivery is refused.
        openrouter: mount the OpenRouter route at all.
        dedupe_size: how many deliveries are remembered for dedupe.
        now: wall-clock seconds (OpenRouter's 300 s window).
    """

    def __init__(
        self,
        *,
        on_webhook: OnWebhook,
        fal: FalWebhookVerifier | None = None,
        openrouter: bool = True,
        openrouter_secret: str | None = None,
        dedupe_size: int = 10_000,
        now: Callable[[], float] = time.time,
        log_interval_s: float = 60.0,
    ) -> None:
        self._on_webhook = on_webhook
        self._fal = fal
        self._openrouter = openrouter
        self._openrouter_secret = openrouter_secret
        self._seen = _Seen(dedupe_size)
        self._now = now
        self._refused = {name: RateLimitedLog(logger=log, interval_s=log_interval_s) for name in ("fal", "openrouter")}
        self._tasks: set[asyncio.Task[None]] = set()

    def routes(self) -> list[web.RouteDef]:
        routes = []
        if self._fal is not None:
            routes.append(web.post(FAL_PATH, self._fal_webhook))
        if self._openrouter:
            routes.append(web.post(OPENROUTER_PATH, self._openrouter_webhook))
        return routes

    async def idle(self) -> None:
        """Waits until every accepted delivery's callback has run."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    async def aclose(self) -> None:
        """Lets running callbacks finish (briefly), then closes the JWKS client."""
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=5.0)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._fal is not None:
            await self._fal.aclose()

    # --- fal ------------------------------------------------------------------------------------

    async def _fal_webhook(self, request: web.Request) -> web.Response:
        assert self._fal is not None
        raw = await request.read()
        verdict = await self._fal.verify(request.headers, raw)
        if verdict is Verdict.UNAVAILABLE:
            self._refused["fal"].note("a fal webhook could not be checked: no key from fal's JWKS; answered 503")
            return web.json_response({"error": "signature keys unavailable, retry later"}, status=503)
        if verdict is not Verdict.OK:
            return self._refuse("fal")
        request_id = request.headers[HEADER_REQUEST_ID]
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return self._malformed("fal", "the body is not JSON")
        if not isinstance(body, dict):
            return self._malformed("fal", "the body is not a JSON object")
        if body.get("request_id") not in (None, request_id):
            return self._malformed("fal", "the body names another request than its signed header")
        status = body.get("status")
        result = body if status == "OK" else None
        return self._accept("fal", request_id, str(status) if isinstance(status, str) else "", request, result=result)

    # --- OpenRouter -----------------------------------------------------------------------------

    async def _openrouter_webhook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not self._openrouter_secret:
            self._refused["openrouter"].note(
                "refused an OpenRouter webhook: OPENROUTER_WEBHOOK_SECRET is not set, so it cannot be checked"
            )
            return web.json_response({"error": "invalid signature"}, status=401)
        signed = verify_openrouter_signature(
            secret=self._openrouter_secret, headers=request.headers, body=raw, now=self._now()
        )
        if not signed:
            return self._refuse("openrouter")
        try:
            event = parse_openrouter_event(raw)
        except (ValueError, RecursionError) as exc:
            return self._malformed("openrouter", str(exc) if isinstance(exc, ValueError) else "nested too deeply")
        return self._accept("openrouter", event.job_id, event.status, request)

    # --- shared ---------------------------------------------------------------------------------

    def _refuse(self, provider: str) -> web.Response:
        self._refused[provider].note("refused a %s webhook: missing, old or invalid signature", provider)
        return web.json_response({"error": "invalid signature"}, status=401)

    def _malformed(self, provider: str, why: str) -> web.Response:
        self._refused[provider].note("refused a signed %s webhook: %s", provider, why)
        return web.json_response({"error": why}, status=400)

    def _accept(
        self,
        provider: str,
        request_id: str,
        status: str,
        request: web.Request,
        *,
        result: dict[str, Any] | None = None,
    ) -> web.Response:
        hint = request.query.get("job")
        job_id = hint if hint is not None and _JOB_HINT.fullmatch(hint) else None
        key = (provider, request_id, status)
        if self._seen.add(key):
            task = asyncio.create_task(self._deliver(key, job_id, result), name=f"reelbot-webhook-{provider}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response({"ok": True})

    async def _deliver(self, key: tuple[str, ...], job_id: str | None, result: dict[str, Any] | None) -> None:
        provider, request_id = key[0], key[1]
        try:
            if result is None:
                await self._on_webhook(provider, request_id, job_id)
            else:
                await self._on_webhook(provider, request_id, job_id, result=result)
        except asyncio.CancelledError:
            self._seen.forget(key)
            raise
        except Exception:
            self._seen.forget(key)  # a repeat of this delivery may try again
            log.exception("handling a %s webhook failed", provider)


__all__ = ["FAL_PATH", "OPENROUTER_PATH", "OnWebhook", "Webhooks", "webhook_url"]
