"""``OpenAIVideosProvider``: the ``/v1/videos`` protocol over one ``httpx.AsyncClient``.

Retry and resend rules (see ``_retry`` for the waits):

- Reads (retrieve, download) and delete are idempotent and are retried after any transport
  failure and after 408/409/429/5xx answers.
- create and remix start a paid render, so they are only resent when the server cannot have
  acted on the first attempt: when it *answered* with a retryable status (it told us it did not
  take the job), or when the request provably never left (connect errors, pool timeouts, write
  failures: a server cannot act on a request body it did not fully receive). After a read
  timeout or a connection reset the first attempt may have started a render; resending could pay
  twice, so the call raises a retryable ``ProviderError`` (TIMEOUT or UNAVAILABLE) whose detail
  says the request may have reached the server, and the worker decides.
- The API key never appears in logs, errors or ``repr``; it is only sent to the configured
  origin (a relay's download URL on another host gets no ``Authorization`` header).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bot.clip_stream import ClipStream
from bot.providers._download import write_video
from bot.providers._http import (
    UNSENT_ERRORS,
    StatusFailure,
    error_from_transport,
    milliseconds_header,
    parse_json,
    read_capped,
    request_headers,
    tls_context,
    video_path,
)
from bot.providers._secret import Secret
from bot.providers.base import ErrorKind, ProviderError, ProviderVideo, RenderSpec
from bot.providers.openai_videos._errors import error_from_status
from bot.providers.openai_videos._normalise import normalise_video
from bot.providers.openai_videos._retry import RetryPolicy, retry_after_seconds, should_retry_status

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
USER_AGENT = "reelbot/0.1 (+httpx)"
_MAX_ERROR_BODY = 64 << 10
_REMEMBERED_URLS = 1024
_LIST_PAGE = 100  # the most the list takes
_LIST_CLOCK_MARGIN_S = 600.0  # our clock and the service's may differ


def _poll_after(headers: httpx.Headers) -> float | None:
    return milliseconds_header(headers, "openai-poll-after-ms")


class OpenAIVideosProvider:
    """A ``VideoProvider`` for OpenAI's ``/v1/videos`` and relays that copy it.

    Args:
        api_key: sent as ``Authorization: Bearer``; never logged or shown in ``repr``.
        base_url: the API root including ``/v1``.
        transport: an httpx transport, for tests (e.g. ``httpx.MockTransport``).
        max_retries: retries per call after the first attempt.
        request_timeout: seconds for each read/write/pool wait (connect is capped at 10 s).
        sleep: how retry waits are slept; tests inject a recorder so they run instantly.
        rng: the jitter source, for reproducible waits.
    """

    name = "openai"
    accepts_likeness = False  # the service rejects input images that show human faces

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        max_retries: int = 4,
        request_timeout: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._api_key = Secret(api_key)
        self._base_url = httpx.URL(base_url.rstrip("/") + "/")
        self._policy = RetryPolicy(max_retries=max_retries)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            transport=transport,
            verify=tls_context(),
            timeout=httpx.Timeout(request_timeout, connect=min(request_timeout, 10.0)),
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,
        )
        self._download_urls: OrderedDict[str, str] = OrderedDict()
        self._can_list = True

    def __repr__(self) -> str:
        return f"OpenAIVideosProvider(base_url={str(self._base_url)!r})"

    async def __aenter__(self) -> OpenAIVideosProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- VideoProvider -----------------------------------------------------------------------

    async def create(self, spec: RenderSpec) -> ProviderVideo:
        """Starts a render: JSON without a reference, multipart with ``input_reference`` as a file.

        ``seconds`` is sent as a string ("8"): the API rejects an integer with a 400.
        """
        reference = spec.reference
        if reference is not None and reference.is_likeness:
            raise ProviderError(ErrorKind.BAD_REQUEST, "this service does not accept images of real people")
        fields = {"prompt": spec.prompt, "model": _model_id(spec), "seconds": str(spec.seconds), "size": spec.size}
        kwargs: dict[str, Any]
        if reference is None:
            kwargs = {"json": fields}
        else:
            files = {"input_reference": (reference.filename, reference.data, reference.content_type)}
            kwargs = {"data": fields, "files": files}
        response = await self._json_call("create", "POST", "videos", resend_after_send=False, **kwargs)
        return self._video(response, after_create=True)

    async def retrieve(self, video_id: str) -> ProviderVideo:
        response = await self._json_call("retrieve", "GET", self._path(video_id), resend_after_send=True)
        return self._video(response)

    async def remix(self, video_id: str, prompt: str) -> ProviderVideo:
        path = self._path(video_id, "remix")
        response = await self._json_call("remix", "POST", path, resend_after_send=False, json={"prompt": prompt})
        return self._video(response, after_create=True)

    async def delete(self, video_id: str) -> None:
        """Deletes the video; one that is already gone (404) counts as deleted."""
        self._download_urls.pop(video_id, None)
        try:
            await self._json_call("delete", "DELETE", self._path(video_id), resend_after_send=True)
        except ProviderError as error:
            if error.status_code == 404:
                return
            raise

    async def download(self, video_id: str, dest: Path, *, stream: ClipStream | None = None) -> int:
        """Streams ``/videos/{id}/content`` to ``dest`` and returns the byte count (``stream`` reads along).

        The body goes to a temporary file next to ``dest`` in 1 MiB chunks and is renamed over
        ``dest`` only when complete, so a crash never leaves a truncated clip under the final
        name. When ``/content`` answers 404 and the video object carried a download URL (relay
        variants), that URL is used instead.

        Raises:
            ProviderError: BAD_RESPONSE when the body is JSON/HTML/an image or lacks the MP4
                ``ftyp`` box; the mapped kind for HTTP and transport failures.
        """
        path = self._path(video_id, "content")
        try:
            return await self._download(path, dest, send_key=True, stream=stream)
        except ProviderError as error:
            if error.status_code != 404:
                raise
            url = self._download_urls.get(video_id)
            if url is None:
                url = (await self.retrieve(video_id)).download_url
            if url is None:
                raise
            log.info("openai download: /content answered 404, using the video's download URL")
            return await self._download(url, dest, send_key=self._same_origin(url), stream=stream)

    async def retrieve_many(self, video_ids: Collection[str], *, since: float) -> dict[str, ProviderVideo]:
        """Pages through ``GET /videos`` newest first (100 a page) until every id is found.

        Stops early when a page reaches renders older than ``since`` (less a margin for clock
        differences), when the list ends, or after a few pages more than the ids could fill. A
        host that does not offer the list (404, 405, 400 or not a list) is not asked again: the
        caller then retrieves one by one, as it would anyway for ids not found.
        """
        wanted = set(video_ids)
        found: dict[str, ProviderVideo] = {}
        if not wanted or not self._can_list:
            return found
        max_pages = math.ceil(len(wanted) / _LIST_PAGE) + 2
        after: str | None = None
        for _ in range(max_pages):
            params = {"limit": str(_LIST_PAGE), "order": "desc"} | ({"after": after} if after else {})
            try:
                response = await self._json_call("list", "GET", "videos", resend_after_send=True, params=params)
            except ProviderError as error:
                if error.status_code in (400, 404, 405, 501):
                    self._can_list = False
                    log.info("openai: this host does not list videos (HTTP %s); polling one by one", error.status_code)
                    return found
                raise
            body = parse_json(response.content)
            items = body.get("data") if isinstance(body, dict) else None
            if not isinstance(items, list):
                self._can_list = False
                return found
            hint = _poll_after(response.headers)
            oldest = math.inf
            for item in items:
                if not isinstance(item, dict):
                    continue
                created = item.get("created_at")
                if isinstance(created, int | float):
                    oldest = min(oldest, created)
                try:
                    video = normalise_video(item, poll_after=hint)
                except ProviderError:
                    continue
                if video.id in wanted:
                    found[video.id] = video
            last_id = body.get("last_id") or (items[-1].get("id") if items and isinstance(items[-1], dict) else None)
            if len(found) == len(wanted) or not body.get("has_more") or not last_id:
                break
            if oldest < since - _LIST_CLOCK_MARGIN_S:
                break
            after = str(last_id)
        return found

    async def find_recent(self, spec: RenderSpec, since: float) -> ProviderVideo | None:
        """Looks through ``GET /videos`` (newest first) for a render of this spec made since ``since``."""
        response = await self._json_call(
            "list", "GET", "videos", resend_after_send=True, params={"limit": "50", "order": "desc"}
        )
        body = parse_json(response.content)
        items = body.get("data") if isinstance(body, dict) else None
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            created = item.get("created_at")
            if isinstance(created, int | float) and created < since - 5:
                continue
            if (item.get("prompt"), item.get("model"), str(item.get("seconds")), item.get("size")) == (
                spec.prompt,
                _model_id(spec),
                str(spec.seconds),
                spec.size,
            ):
                return normalise_video(item)
        return None

    async def check(self) -> str | None:
        """Whether the host accepts the key, without starting a render: None when it does.

        Lists one video (free). A host that does not offer the list (a LiteLLM proxy may not) is
        asked for its models instead; if it offers neither, the key cannot be checked for free and
        that is said.
        """
        for path, params in (("videos", {"limit": "1"}), ("models", {})):
            try:
                await self._json_call("check", "GET", path, resend_after_send=True, params=params)
                return None
            except ProviderError as error:
                if error.kind is ErrorKind.AUTH:
                    return f"the host at {self._base_url} rejected OPENAI_API_KEY (HTTP {error.status_code})"
                if error.status_code in (400, 404, 405, 501):
                    continue
                return f"the host at {self._base_url} could not be asked: {error.user_message}"
        return f"the host at {self._base_url} offers no free endpoint to check the key with"

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _path(video_id: str, *rest: str) -> str:
        return video_path(video_id, *rest)

    def _headers(self, *, send_key: bool = True, accept: str = "application/json") -> dict[str, str]:
        return request_headers(key=self._api_key if send_key else None, accept=accept)

    def _same_origin(self, url: str) -> bool:
        target = httpx.URL(url)
        return (target.scheme, target.host, target.port) == (
            self._base_url.scheme,
            self._base_url.host,
            self._base_url.port,
        )

    def _video(self, response: httpx.Response, *, after_create: bool = False) -> ProviderVideo:
        try:
            video = normalise_video(parse_json(response.content), poll_after=_poll_after(response.headers))
        except ProviderError as error:
            if not after_create:
                raise
            raise ProviderError(
                error.kind,
                f"{error.detail}; the render may have been started",
                retryable=error.retryable,
                ambiguous=True,
            ) from error
        if video.download_url:
            self._download_urls[video.id] = video.download_url
            self._download_urls.move_to_end(video.id)
            while len(self._download_urls) > _REMEMBERED_URLS:
                self._download_urls.popitem(last=False)
        return video

    async def _json_call(
        self, op: str, method: str, url: str, *, resend_after_send: bool, **kwargs: Any
    ) -> httpx.Response:
        async def attempt() -> httpx.Response:
            response = await self._client.request(method, url, headers=self._headers(), **kwargs)
            if not response.is_success:
                raise StatusFailure(status=response.status_code, headers=response.headers, body=response.content)
            return response

        return await self._with_retries(op, attempt, resend_after_send=resend_after_send)

    async def _with_retries(self, op: str, attempt: Callable[[], Awaitable[T]], *, resend_after_send: bool) -> T:
        """Runs ``attempt`` until it succeeds or the policy says stop.

        Args:
            op: the operation name, for logs.
            attempt: one try; raises ``StatusFailure`` for non-2xx answers.
            resend_after_send: whether a transport failure after the request may have reached
                the server allows sending it again (False for calls that start paid renders).
        """
        policy = self._policy
        retries = 0
        while True:
            try:
                return await attempt()
            except StatusFailure as failure:
                retry_after = retry_after_seconds(failure.headers)
                error = error_from_status(failure.status, failure.headers, failure.body, retry_after=retry_after)
                if not should_retry_status(failure.status, failure.headers) or retries >= policy.max_retries:
                    raise error from None
                if retry_after is not None and retry_after > policy.max_retry_after:
                    # Too long to hold a worker slot: hand the wait to the caller.
                    error.retryable = True
                    raise error from None
                if retry_after is not None and retry_after > 0:
                    delay = retry_after
                else:
                    delay = policy.backoff(retries, self._rng)
                reason = f"HTTP {failure.status}"
            except httpx.HTTPError as exc:
                unsent = isinstance(exc, UNSENT_ERRORS)
                error = error_from_transport(exc, sent=not unsent)
                if not error.retryable or retries >= policy.max_retries:
                    raise error from exc
                if not unsent and not resend_after_send:
                    raise error from exc
                delay = policy.backoff(retries, self._rng)
                reason = type(exc).__name__
            retries += 1
            log.info("openai %s: %s; retry %d/%d in %.2fs", op, reason, retries, policy.max_retries, delay)
            await self._sleep(delay)

    async def _download(self, url: str, dest: Path, *, send_key: bool, stream: ClipStream | None) -> int:
        async def attempt() -> int:
            headers = self._headers(send_key=send_key, accept="application/binary")
            async with self._client.stream("GET", url, headers=headers, follow_redirects=True) as response:
                if not response.is_success:
                    body = await read_capped(response, limit=_MAX_ERROR_BODY)
                    raise StatusFailure(status=response.status_code, headers=response.headers, body=body)
                return await write_video(response, dest, max_bytes=None, bad_body_retryable=True, stream=stream)

        return await self._with_retries("download", attempt, resend_after_send=True)


def _model_id(spec: RenderSpec) -> str:
    """The host's name for the model: the catalog route's id, else the catalog name (sora-2)."""
    return spec.route.model_id if spec.route is not None and spec.route.model_id else spec.model
