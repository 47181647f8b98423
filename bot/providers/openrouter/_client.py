"""``OpenRouterProvider``: OpenRouter's video API (``/api/v1/videos``) over one ``httpx.AsyncClient``.

Why httpx and not the official ``openrouter`` SDK (1.3.x): the SDK has async methods and its
``server_url`` can point at a plain-http 127.0.0.1 server, but it fights reelbot's failover rules.
By default it resends ``POST /videos`` on every 5xx and connection error for up to an hour (a
second job and a second bill), and its retry loop hides whether a failure came before or after
the request was sent, which is exactly what decides between "move to the next provider" and
"may have been queued". It accepts only a 202 for create and only ``video/mp4`` for content and
validates bodies with pydantic, so variants become opaque exceptions that would have to be
re-parsed from the raw response anyway; it silently takes ``OPENROUTER_API_KEY`` from the
environment; it hops every request through thread hooks; and the signed-URL download, the key
check and webhook signatures are outside it. Four JSON endpoints do not need a beta,
monthly-released dependency, so this uses httpx (already a dependency) with an injectable
transport.

Rules:

- create is sent once and never resent here. A refused connection (nothing reached OpenRouter)
  is UNAVAILABLE, not ambiguous; a read timeout, a reset or a 5xx answer after the body was sent is
  ambiguous (OpenRouter has no list endpoint to look the job up, so the worker must not resend).
- Reads (retrieve, download, check, live_models) are not retried here either: the errors carry
  ``retryable``/``retry_after`` and the render watcher and worker own the backoff.
- The job is always polled at ``<base>/videos/{id}`` and downloaded from
  ``<base>/videos/{id}/content?index=0`` with the key; ``polling_url``/``unsigned_urls`` from the
  answer are not followed, so the key never goes to a host other than the configured one.
- OpenRouter has no delete, cancel, list or remix route: ``delete`` is a no-op, ``retrieve_many``
  returns ``{}``, ``find_recent`` returns None and ``remix`` is a BAD_REQUEST.
- The key never appears in logs, errors or ``repr``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import httpx

from bot.clip_stream import ClipStream
from bot.providers._download import write_video
from bot.providers._http import parse_json, read_capped, request_headers, tls_context, video_path
from bot.providers._secret import Secret
from bot.providers.base import ErrorKind, ProviderError, ProviderVideo, RenderSpec, VideoStatus
from bot.providers.openrouter._errors import error_from_status, error_from_transport, shorten
from bot.providers.openrouter._normalise import job_id, normalise_job
from bot.providers.openrouter._request import create_body

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://openrouter.ai/api/v1"
USER_AGENT = "reelbot/0.1 (+httpx)"
DEFAULT_MAX_DOWNLOAD_BYTES = 512 << 20
_MAX_ERROR_BODY = 64 << 10
_REMEMBERED = 4096
_VIDEO_FLOOR_USD = 1.0  # OpenRouter refuses video output below this balance


class OpenRouterProvider:
    """A ``VideoProvider`` for OpenRouter's video generation API.

    Args:
        api_key: sent as ``Authorization: Bearer``; never logged or shown in ``repr``.
        base_url: the API root including ``/api/v1``.
        transport: an httpx transport, for tests.
        max_download_bytes: a clip over this is refused (BAD_RESPONSE) and its ``.part`` removed.
        request_timeout: seconds for each read/write/pool wait (connect is capped at 10 s).
        expected_render_s: how long a render usually takes, for the time-based progress estimate.
        app_url / app_title: the optional attribution headers ``HTTP-Referer`` and
            ``X-OpenRouter-Title``.
        allow_http_callbacks: send a non-HTTPS ``callback_url`` too (local tests). OpenRouter
            wants HTTPS, so by default a plain-http webhook URL is left out (with a warning) and the
            render is polled instead of failing at create with a 400.
        clock: monotonic seconds, for the progress estimate.
    """

    name = "openrouter"
    accepts_likeness = True

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        request_timeout: float = 60.0,
        expected_render_s: float = 60.0,
        app_url: str | None = None,
        app_title: str | None = "reelbot",
        allow_http_callbacks: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty")
        if max_download_bytes <= 0:
            raise ValueError("max_download_bytes must be positive")
        self._api_key = Secret(api_key)
        self._base_url = httpx.URL(base_url.rstrip("/") + "/")
        self._max_download_bytes = max_download_bytes
        self._expected = expected_render_s
        self._clock = clock
        self._allow_http_callbacks = allow_http_callbacks
        headers = {"User-Agent": USER_AGENT}
        if app_url:
            headers["HTTP-Referer"] = app_url
        if app_title:
            headers["X-OpenRouter-Title"] = app_title
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            transport=transport,
            verify=tls_context(),
            timeout=httpx.Timeout(request_timeout, connect=min(request_timeout, 10.0)),
            headers=headers,
            follow_redirects=False,
        )
        self._first_seen: OrderedDict[str, float] = OrderedDict()

    def __repr__(self) -> str:
        return f"OpenRouterProvider(base_url={str(self._base_url)!r})"

    async def __aenter__(self) -> OpenRouterProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- VideoProvider -----------------------------------------------------------------------

    async def create(self, spec: RenderSpec) -> ProviderVideo:
        """Submits the render (``POST /videos``, answered 202 ``{id, polling_url, status}``)."""
        body = create_body(spec)
        callback = body.get("callback_url")
        if callback and not callback.startswith("https://") and not self._allow_http_callbacks:
            log.warning("openrouter: the webhook URL is not HTTPS, which OpenRouter refuses; polling instead")
            del body["callback_url"]
        response = await self._call("create", "POST", "videos", json=body)
        try:
            payload = parse_json(response.content)
            video_id = job_id(payload)
        except ProviderError as error:
            # A 2xx we cannot read: the job probably exists, but we do not know its id.
            raise ProviderError(
                error.kind, f"{error.detail}; OpenRouter may have accepted the job", retryable=True, ambiguous=True
            ) from error
        self._remember(video_id)
        return normalise_job(payload, elapsed=0.0, expected=self._expected)

    async def retrieve(self, video_id: str) -> ProviderVideo:
        response = await self._call("retrieve", "GET", self._path(video_id))
        payload = parse_json(response.content)
        video = normalise_job(payload, elapsed=self._elapsed(video_id), expected=self._expected)
        if video.status in (VideoStatus.COMPLETED, VideoStatus.FAILED):
            self._first_seen.pop(video_id, None)
        return video

    async def download(self, video_id: str, dest: Path, *, stream: ClipStream | None = None) -> int:
        """Streams ``/videos/{id}/content?index=0`` (Bearer key) to ``dest``; returns the byte count.

        The endpoint is chunked with no Content-Length, so the cap is enforced while streaming (and a
        ``stream`` reading along is aborted: without a length it cannot be staged).
        """
        path = self._path(video_id, "content")
        headers = self._headers(accept="video/mp4")
        try:
            async with self._client.stream("GET", path, params={"index": "0"}, headers=headers) as response:
                if not response.is_success:
                    body = await read_capped(response, limit=_MAX_ERROR_BODY)
                    raise error_from_status(response.status_code, response.headers, body, op="download")
                return await write_video(
                    response, dest, max_bytes=self._max_download_bytes, bad_body_retryable=True, stream=stream
                )
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, op="download") from exc

    async def delete(self, video_id: str) -> None:
        """A no-op at OpenRouter, which has no delete or cancel route (outputs expire on their own)."""
        self._first_seen.pop(video_id, None)

    async def remix(self, video_id: str, prompt: str) -> ProviderVideo:
        raise ProviderError(ErrorKind.BAD_REQUEST, "OpenRouter cannot remix a finished video")

    async def retrieve_many(self, video_ids: Collection[str], *, since: float) -> dict[str, ProviderVideo]:
        """Always ``{}``: OpenRouter has no list endpoint, so the caller polls one by one."""
        return {}

    async def find_recent(self, spec: RenderSpec, since: float) -> ProviderVideo | None:
        """Always None: without a list endpoint a lost create cannot be adopted."""
        return None

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- for `reelbot doctor` ---------------------------------------------------------------

    async def check(self) -> str | None:
        """None when OpenRouter accepts the key (``GET /key``, free), else one line saying what is wrong.

        A key whose credit limit has less than the $1.00 OpenRouter requires for video output left
        is reported too: every create would be refused with a 402.
        """
        try:
            response = await self._call("check", "GET", "key")
        except ProviderError as error:
            if error.kind is ErrorKind.AUTH:
                return error.detail  # "OpenRouter rejected the API key (HTTP 401: ...)"
            return f"OpenRouter could not check the key ({error.kind}): {error.detail}"
        try:
            payload = parse_json(response.content)
        except ProviderError as error:
            return f"OpenRouter answered the key check with something unreadable: {error.detail}"
        data = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict):
            return "OpenRouter answered the key check without a data object"
        remaining = data.get("limit_remaining")
        if isinstance(remaining, int | float) and not isinstance(remaining, bool) and remaining < _VIDEO_FLOOR_USD:
            return (
                f"the OpenRouter key has ${remaining:.2f} left of its credit limit; "
                f"video output needs at least ${_VIDEO_FLOOR_USD:.2f}"
            )
        return None

    async def live_models(self) -> set[str] | None:
        """The video model ids ``GET /videos/models`` lists now (no key needed).

        Returns None when the host does not offer the list (404/405) or answers without one.

        Raises:
            ProviderError: when OpenRouter cannot be asked right now.
        """
        try:
            response = await self._call("models", "GET", "videos/models", send_key=False)
        except ProviderError as error:
            if error.status_code in (404, 405):
                return None
            raise
        payload = parse_json(response.content)
        rows = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(rows, list):
            return None
        return {row["id"] for row in rows if isinstance(row, dict) and isinstance(row.get("id"), str)}

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _path(video_id: str, *rest: str) -> str:
        return video_path(video_id, *rest)

    def _headers(self, *, send_key: bool = True, accept: str = "application/json") -> dict[str, str]:
        return request_headers(key=self._api_key if send_key else None, accept=accept)

    def _remember(self, video_id: str) -> None:
        self._first_seen[video_id] = self._clock()
        self._first_seen.move_to_end(video_id)
        while len(self._first_seen) > _REMEMBERED:
            self._first_seen.popitem(last=False)

    def _elapsed(self, video_id: str) -> float:
        if video_id not in self._first_seen:  # created by an earlier process: count from now
            self._remember(video_id)
        return self._clock() - self._first_seen[video_id]

    async def _call(self, op: str, method: str, url: str, *, send_key: bool = True, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, url, headers=self._headers(send_key=send_key), **kwargs)
        except httpx.HTTPError as exc:
            error = error_from_transport(exc, op=op)
            log.info("openrouter %s: %s", op, shorten(error.detail))
            raise error from exc
        if not response.is_success:  # 2xx is success: create answers 202
            error = error_from_status(response.status_code, response.headers, response.content, op=op)
            log.info("openrouter %s: %s %s", op, error.kind, shorten(error.detail))
            raise error
        return response
