"""``FalProvider``: fal.ai's queue (submit, status, result, cancel) over ``httpx``.

Resend rules:

- A submit is sent once. fal has no idempotency key and cannot list requests, so a lost answer can
  neither be resent (a second bill) nor found again; the error says whether anything can have
  been queued (``ambiguous``), and the worker decides between retrying, failing over to the model's
  next provider, and failing the job unbilled.
- Status, result, cancel and the CDN download are idempotent: they are retried after transport
  failures and 408/409/429/5xx answers (a ``Retry-After`` is honoured up to 30 s; a longer one is
  handed to the caller as ``retry_after``).

A request that fal reports ``COMPLETED`` is only a success when its result GET answers 2xx with a
``video.url`` (trap 2); anything else becomes a ``FAILED`` video carrying the reason. The result is
kept in memory so ``download`` does not fetch it again, and fetched again after a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from bot.clip_stream import ClipStream
from bot.providers._http import (
    UNSENT_ERRORS,
    StatusFailure,
    error_from_transport,
    retry_after_seconds,
    tls_context,
)
from bot.providers._secret import Secret
from bot.providers.base import ErrorKind, ProviderError, ProviderVideo, RenderSpec, VideoStatus
from bot.providers.fal._download import stream_to_file
from bot.providers.fal._errors import (
    REQUEST_ID_HEADER,
    error_from_status,
    failed_request_error,
    status_error,
)
from bot.providers.fal._handle import FalHandle, app_path, safe_path
from bot.providers.fal._inputs import build_input, choose_model_id, typical_render_seconds

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_QUEUE_URL = "https://queue.fal.run"
DEFAULT_MAX_DOWNLOAD_BYTES = 512 << 20
USER_AGENT = "reelbot/0.1 (+httpx)"
#: A request id no one has: the doctor's probe asks for its status (see ``check``).
PROBE_REQUEST_ID = "00000000-0000-4000-8000-000000000000"
_PROBE_APP = "fal-ai/veo3.1"
_MAX_ERROR_BODY = 64 << 10
_MAX_RETRY_AFTER = 30.0
_REMEMBERED = 1024
_MAX_PROGRESS = 95
# Raised before the server could have acted on the request; an unsupported URL scheme never connects either.
_UNSENT_ERRORS: tuple[type[httpx.HTTPError], ...] = (*UNSENT_ERRORS, httpx.UnsupportedProtocol)


class _Lru(OrderedDict[str, Any]):
    """A small bounded map (results and progress starts of renders this process has seen)."""

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _REMEMBERED:
            self.popitem(last=False)


def _parse_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        snippet = body[:120].decode("utf-8", "replace")
        raise ProviderError(ErrorKind.BAD_RESPONSE, f"fal's {what} is not JSON: {snippet!r}", retryable=True) from None


def _retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _from_fal(headers: httpx.Headers) -> bool:
    """Whether an answer came from fal's own servers rather than an ingress proxy in front of them."""
    return REQUEST_ID_HEADER in headers or "x-fal-error-type" in headers


class FalProvider:
    """A ``VideoProvider`` for fal.ai's queue API (Veo, Kling, Seedance, LTX, Wan behind one key).

    Args:
        api_key: ``FAL_KEY`` (``id:secret``, sent whole as ``Authorization: Key …``); never logged,
            never shown in ``repr``, never sent anywhere but ``queue_url``.
        queue_url: the queue root (``https://queue.fal.run``; a fake's ``http://127.0.0.1:PORT`` in tests).
        transport: an httpx transport for both the queue and the CDN client (tests).
        max_download_bytes: clips over this are refused (BAD_RESPONSE) and never written whole.
        max_retries: retries of an idempotent call after the first attempt.
        request_timeout: seconds per read/write/pool wait (connect is capped at 10 s).
        sleep: how retry waits are slept; tests pass a recorder.
        clock: unix seconds, for the submit time and the progress estimate.
        rng: the backoff jitter source.
    """

    name = "fal"
    accepts_likeness = True

    def __init__(
        self,
        *,
        api_key: str,
        queue_url: str = DEFAULT_QUEUE_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        max_retries: int = 3,
        request_timeout: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is empty")
        if max_download_bytes <= 0 or max_retries < 0:
            raise ValueError("max_download_bytes must be > 0 and max_retries >= 0")
        self._api_key = Secret(api_key)
        self._root = httpx.URL(queue_url.rstrip("/") + "/")
        if self._root.scheme not in ("http", "https"):
            raise ValueError(f"queue_url must be http(s), not {queue_url!r}")
        self._max_download = max_download_bytes
        self._max_retries = max_retries
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        timeout = httpx.Timeout(request_timeout, connect=min(request_timeout, 10.0))
        self._queue = httpx.AsyncClient(
            base_url=self._root,
            transport=transport,
            verify=tls_context(),
            timeout=timeout,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            follow_redirects=False,
        )
        # A separate client for output files: it has no key to leak, whatever a URL or redirect says.
        self._cdn = httpx.AsyncClient(
            transport=transport, verify=tls_context(), timeout=timeout, headers={"User-Agent": USER_AGENT}
        )
        self._results: _Lru = _Lru()  # video id -> video.url
        self._started: _Lru = _Lru()  # video id -> when it was first seen (or assumed) running
        self._queued_seen: _Lru = _Lru()  # video ids this process saw IN_QUEUE

    def __repr__(self) -> str:
        return f"FalProvider(queue_url={str(self._root)!r})"

    async def __aenter__(self) -> FalProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- VideoProvider -----------------------------------------------------------------------

    async def create(self, spec: RenderSpec) -> ProviderVideo:
        """Submits the render to the family's endpoint; returns it queued, with its queue position.

        Raises:
            ProviderError: BAD_REQUEST before sending for a spec fal cannot take here; the mapped
                kind after (see ``_errors``), with ``ambiguous`` when a request may exist.
        """
        model_id = choose_model_id(spec)
        if not safe_path(model_id):
            raise ProviderError(ErrorKind.BAD_REQUEST, f"not a fal model id: {model_id!r}")
        body = build_input(spec, model_id)
        # Fully percent-encoded, as fal documents it: httpx's params would leave ':', '/' and '?' as they are.
        target = f"{model_id}?fal_webhook={quote(spec.webhook_url, safe='')}" if spec.webhook_url else model_id
        try:
            response = await self._queue.post(target, json=body, headers=self._auth())
        except httpx.HTTPError as exc:
            raise error_from_transport(exc, sent=not isinstance(exc, _UNSENT_ERRORS), reached="fal") from exc
        if not response.is_success:
            raise error_from_status(
                response.status_code, response.headers, response.content, submit=True, model_id=model_id
            )
        try:
            handle, position = self._handle_from_submit(response, spec, model_id)
        except ProviderError as error:
            raise ProviderError(
                error.kind, f"{error.detail}; fal may have queued the request", ambiguous=True
            ) from error
        video_id = handle.encode()
        log.info("fal: submitted %s as request %s", model_id, handle.request_id)
        return ProviderVideo(id=video_id, status=VideoStatus.QUEUED, queue_position=position)

    async def retrieve(self, video_id: str) -> ProviderVideo:
        """The request's status; for a COMPLETED one, the result decides between success and failure."""
        handle = FalHandle.decode(video_id)
        cached = self._results.get(video_id)
        if cached is not None:
            return ProviderVideo(id=video_id, status=VideoStatus.COMPLETED, progress=100, download_url=cached)
        response = await self._call("status", "GET", handle.status_path, params={"logs": "1"})
        data = _parse_json(response.content, "status")
        status = data.get("status") if isinstance(data, dict) else None
        if status == "IN_QUEUE":
            self._queued_seen.put(video_id, True)
            position = data.get("queue_position")
            valid = isinstance(position, int) and not isinstance(position, bool) and position >= 0
            return ProviderVideo(id=video_id, status=VideoStatus.QUEUED, queue_position=position if valid else None)
        if status == "IN_PROGRESS":
            return ProviderVideo(id=video_id, status=VideoStatus.IN_PROGRESS, progress=self._progress(video_id, handle))
        if status == "COMPLETED":
            error = data.get("error")
            error_type = data.get("error_type")
            failure = (
                status_error(str(error), error_type if isinstance(error_type, str) else None)
                if isinstance(error, str) and error
                else None
            )
            return await self._result(video_id, handle, failure)
        raise ProviderError(ErrorKind.BAD_RESPONSE, f"fal answered an unknown status {status!r}", retryable=True)

    async def download(self, video_id: str, dest: Path, *, stream: ClipStream | None = None) -> int:
        """Streams ``video.url`` to ``dest`` without the fal key; returns the byte count.

        ``stream`` reads along (see ``bot.clip_stream``); a retried attempt aborts it.

        Raises:
            ProviderError: the render's own error when it failed; BAD_REQUEST when it is not
                finished; BAD_RESPONSE over ``max_download_bytes`` or for a body that is not an
                MP4; NOT_FOUND when the CDN no longer has it; the mapped kind otherwise.
        """
        url = self._results.get(video_id)
        if url is None:
            video = await self.retrieve(video_id)
            if video.status is VideoStatus.FAILED:
                raise video.error or ProviderError(ErrorKind.SERVER, "the render failed")
            if video.status is not VideoStatus.COMPLETED or not video.download_url:
                raise ProviderError(ErrorKind.BAD_REQUEST, f"the render is not finished ({video.status})")
            url = video.download_url
        if httpx.URL(url).scheme not in ("http", "https"):
            raise ProviderError(ErrorKind.BAD_RESPONSE, f"fal's video.url is not http(s): {url[:80]!r}")

        async def attempt() -> int:
            return await stream_to_file(self._cdn, url, dest, max_bytes=self._max_download, stream=stream)

        return await self._with_retries("download", attempt, cdn=True)

    def take_webhook_result(self, video_id: str, body: Mapping[str, Any]) -> bool:
        """Keeps the clip's URL from a signed webhook whose status is ``OK``; True when it had one.

        fal's docs allow using a verified webhook's ``payload``; with its ``video.url`` known, the
        next ``retrieve`` answers COMPLETED without a status and a result call (a webhook without a
        usable URL, say a truncated payload, changes nothing: the calls are made as before).
        """
        payload = body.get("payload")
        video = payload.get("video") if isinstance(payload, dict) else None
        url = video.get("url") if isinstance(video, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            return False
        self._results.put(video_id, url)
        self._finished(video_id, ProviderVideo(id=video_id, status=VideoStatus.COMPLETED))
        return True

    async def delete(self, video_id: str) -> None:
        """Cancels the request (best effort): already completed (400) and unknown (404) count as done.

        fal keeps no deletable video object: finished outputs expire on the CDN by themselves.
        """
        handle = FalHandle.decode(video_id)
        for remembered in (self._results, self._started, self._queued_seen):
            remembered.pop(video_id, None)
        try:
            await self._call("cancel", "PUT", handle.cancel_path)
        except ProviderError as error:
            if error.status_code in (400, 404):
                return
            raise

    async def remix(self, video_id: str, prompt: str) -> ProviderVideo:
        raise ProviderError(ErrorKind.BAD_REQUEST, "remix is not offered for this model")

    async def retrieve_many(self, video_ids: Collection[str], *, since: float) -> dict[str, ProviderVideo]:
        """fal cannot list requests: the caller asks one by one."""
        return {}

    async def find_recent(self, spec: RenderSpec, since: float) -> ProviderVideo | None:
        """fal cannot list requests, so a submit whose answer was lost cannot be adopted."""
        return None

    async def check(self) -> str | None:
        """A free key check for ``reelbot doctor``: None when fal accepts the key, else one line.

        fal has no documented "who am I" endpoint on the queue host, so this asks the status of a
        request id nobody has (``PROBE_REQUEST_ID``), which starts nothing and costs nothing: 404
        means the key was accepted and the request is unknown; 401/403 mean the key is not.
        UNVERIFIED: that fal checks the key before looking the request up (the fake does).
        """
        path = f"{_PROBE_APP}/requests/{PROBE_REQUEST_ID}/status"
        try:
            await self._call("check", "GET", path, retries=0)
        except ProviderError as error:
            if error.kind is ErrorKind.NOT_FOUND:
                return None
            if error.kind in (ErrorKind.AUTH, ErrorKind.QUOTA):
                return error.detail
            return f"fal could not be asked ({error.kind}): {error.detail}"
        return None

    async def aclose(self) -> None:
        await self._queue.aclose()
        await self._cdn.aclose()

    # -- internals ---------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Key {self._api_key.reveal()}"}

    def _relative(self, url: Any) -> str | None:
        """``url`` as a path under the queue root, or None when it points elsewhere."""
        if not isinstance(url, str) or not url:
            return None
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            return None
        root = self._root
        if (parsed.scheme, parsed.host, parsed.port) != (root.scheme, root.host, root.port) or parsed.query:
            return None
        if not parsed.path.startswith(root.path):
            return None
        relative = parsed.path[len(root.path) :]
        return relative if safe_path(relative) else None

    def _handle_from_submit(
        self, response: httpx.Response, spec: RenderSpec, model_id: str
    ) -> tuple[FalHandle, int | None]:
        data = _parse_json(response.content, "submit answer")
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if not isinstance(request_id, str) or not safe_path(request_id) or "/" in request_id:
            raise ProviderError(ErrorKind.BAD_RESPONSE, f"fal's submit answer has no usable request_id: {data!r:.200}")
        derived = f"{app_path(model_id)}/requests/{request_id}"
        response_path = self._relative(data.get("response_url")) or derived
        if response_path == derived and data.get("response_url") and self._relative(data["response_url"]) is None:
            log.warning("fal: the submit answer's URLs are not under %s; using the derived paths", self._root)
        handle = FalHandle(
            request_id=request_id,
            response_path=response_path,
            status_path=self._relative(data.get("status_url")) or f"{response_path}/status",
            cancel_path=self._relative(data.get("cancel_url")) or f"{response_path}/cancel",
            submitted_at=self._clock(),
            typical_s=typical_render_seconds(spec, model_id),
        )
        position = data.get("queue_position")
        valid = isinstance(position, int) and not isinstance(position, bool) and position >= 0
        return handle, position if valid else None

    def _progress(self, video_id: str, handle: FalHandle) -> int:
        """A time-based estimate (fal gives no percentage): elapsed running time over the family's typical time.

        Counted from when this process first saw the render running after seeing it queued; after a
        restart, from the submit (which only makes the estimate run ahead, never back).
        """
        now = self._clock()
        started = self._started.get(video_id)
        if started is None:
            started = now if video_id in self._queued_seen else handle.submitted_at
            self._started.put(video_id, started)
        elapsed = max(0.0, now - started)
        return max(1, min(_MAX_PROGRESS, int(100 * elapsed / max(1.0, handle.typical_s))))

    async def _result(self, video_id: str, handle: FalHandle, failure: ProviderError | None) -> ProviderVideo:
        """Fetches the result of a COMPLETED request and tells success from failure (trap 2)."""
        try:
            response = await self._fetch_result(handle)
        except ProviderError:
            if failure is not None:  # the status already said it failed; the details are a bonus
                return ProviderVideo(id=video_id, status=VideoStatus.FAILED, error=failure)
            raise
        if response.status_code in (401, 403, 404, 429):
            raise error_from_status(response.status_code, response.headers, response.content)
        if not response.is_success:
            error = failed_request_error(response.status_code, response.headers, response.content)
            return self._finished(video_id, ProviderVideo(id=video_id, status=VideoStatus.FAILED, error=error))
        data = _parse_json(response.content, "result")
        video = data.get("video") if isinstance(data, dict) else None
        url = video.get("url") if isinstance(video, dict) else None
        if isinstance(url, str) and url.startswith(("https://", "http://")):
            self._results.put(video_id, url)
            return self._finished(
                video_id, ProviderVideo(id=video_id, status=VideoStatus.COMPLETED, progress=100, download_url=url)
            )
        error = failure or ProviderError(ErrorKind.BAD_RESPONSE, f"fal's result has no video.url: {data!r:.200}")
        return self._finished(video_id, ProviderVideo(id=video_id, status=VideoStatus.FAILED, error=error))

    def _finished(self, video_id: str, video: ProviderVideo) -> ProviderVideo:
        self._started.pop(video_id, None)
        self._queued_seen.pop(video_id, None)
        return video

    async def _fetch_result(self, handle: FalHandle) -> httpx.Response:
        """The result GET; an answer from fal's servers is returned whatever its status (it is the outcome)."""

        async def attempt() -> httpx.Response:
            response = await self._queue.get(handle.response_path, headers=self._auth())
            if response.is_success or not _retryable_status(response.status_code):
                return response
            if response.status_code >= 500 and _from_fal(response.headers):
                return response  # the request's own failure (runner, timeout), not a hiccup
            raise StatusFailure.of(response, limit=_MAX_ERROR_BODY)

        return await self._with_retries("result", attempt)

    async def _call(
        self, op: str, method: str, path: str, *, params: dict[str, str] | None = None, retries: int | None = None
    ) -> httpx.Response:
        """An idempotent queue call with the key; non-2xx answers become ``ProviderError`` after retries."""

        async def attempt() -> httpx.Response:
            response = await self._queue.request(method, path, params=params, headers=self._auth())
            if not response.is_success:
                raise StatusFailure.of(response, limit=_MAX_ERROR_BODY)
            return response

        return await self._with_retries(op, attempt, retries=retries)

    async def _with_retries(
        self, op: str, attempt: Callable[[], Awaitable[T]], *, retries: int | None = None, cdn: bool = False
    ) -> T:
        limit = self._max_retries if retries is None else retries
        tries = 0
        while True:
            try:
                return await attempt()
            except StatusFailure as failure:
                error = self._status_error(failure, cdn=cdn)
                if not _retryable_status(failure.status) or tries >= limit:
                    raise error from None
                if error.retry_after is not None and error.retry_after > _MAX_RETRY_AFTER:
                    error.retryable = True
                    raise error from None
                delay = error.retry_after if error.retry_after else self._backoff(tries)
                reason = f"HTTP {failure.status}"
            except httpx.HTTPError as exc:
                error = error_from_transport(exc, sent=False, reached="fal")  # idempotent: being sent changes nothing
                if not error.retryable or tries >= limit:
                    raise error from exc
                delay = self._backoff(tries)
                reason = type(exc).__name__
            tries += 1
            log.info("fal %s: %s; retry %d/%d in %.2fs", op, reason, tries, limit, delay)
            await self._sleep(delay)

    @staticmethod
    def _status_error(failure: StatusFailure, *, cdn: bool) -> ProviderError:
        if not cdn:
            return error_from_status(failure.status, failure.headers, failure.body)
        if failure.status in (403, 404, 410):
            return ProviderError(
                ErrorKind.NOT_FOUND,
                f"the clip is gone from fal's CDN (HTTP {failure.status})",
                status_code=failure.status,
            )
        retry_after = retry_after_seconds(failure.headers)
        if _retryable_status(failure.status):
            return ProviderError(
                ErrorKind.SERVER,
                f"fal's CDN answered HTTP {failure.status}",
                retryable=True,
                retry_after=retry_after,
                status_code=failure.status,
            )
        return ProviderError(
            ErrorKind.BAD_RESPONSE, f"fal's CDN answered HTTP {failure.status}", status_code=failure.status
        )

    def _backoff(self, tries: int) -> float:
        return min(0.25 * 2.0**tries, 4.0) * self._rng.uniform(0.75, 1.0)
