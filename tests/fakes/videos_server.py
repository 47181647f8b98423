"""A fake OpenAI ``/v1/videos`` server on 127.0.0.1, for tests and benchmarks.

It follows §7 of ``/work/shared/reference/videos-api.md``: JSON and multipart create with the
API's validation errors, a render timeline (queued -> in_progress with rising integer progress ->
completed or failed), retrieve, cursor-paginated list, delete, content variants, remix, the
``openai-poll-after-ms`` and ``x-ratelimit-*-requests`` headers, bearer auth, and error
injection. Every request is recorded for assertions.

Quick start::

    clock = FakeClock()                      # or leave out for real time
    async with FakeVideosServer(clock=clock, render_seconds=30) as fake:
        provider = OpenAIVideosProvider(api_key=fake.api_key, base_url=fake.base_url)
        video = await provider.create(spec)  # queued
        clock.advance(31)                    # the render is now complete
        fake.inject("retrieve", status=503, times=2)   # the next two retrieves fail
        fake.plan(fail_code="moderation_blocked")       # the next created job will fail
        assert fake.count("create") == 1

Operations (the names ``inject``, ``calls`` and ``count`` take): ``create``, ``list``,
``retrieve``, ``delete``, ``content``, ``remix``, ``file`` (the relay download URL), or ``*``.

Timeline: a video is ``queued`` for ``queue_seconds``, then ``in_progress`` for
``render_seconds`` with ``progress = floor(100 * elapsed / render_seconds)`` (at most 99), then
``completed`` (``completed_at``; ``expires_at = completed_at + 3600``). A failing plan turns it
``failed`` when progress reaches ``fail_at_progress``. Times come from ``clock()``, so a
``FakeClock`` makes the whole timeline deterministic and instant.

Content: a real H.264 + AAC MP4 of the video's exact size and seconds (8 fps, ultrafast; one
encode per (size, seconds), cached for the process), unless ``video_bytes`` is given to the
server or a plan sets ``content`` / ``content_size`` (a streamed MP4-looking body of that many
bytes, for download benchmarks).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from aiohttp import web

from tests.fakes._server import FakeServer, reset_connection, synthetic_mp4_head

DEFAULT_API_KEY = "sk-test-reelbot-fake"
MODEL_SIZES: dict[str, tuple[str, ...]] = {
    "sora-2": ("720x1280", "1280x720"),
    "sora-2-pro": ("720x1280", "1280x720", "1024x1792", "1792x1024", "1080x1920", "1920x1080"),
}
ALLOWED_SECONDS: tuple[str, ...] = ("4", "8", "12", "16", "20")
REFERENCE_TYPES = ("image/jpeg", "image/png", "image/webp")
MAX_PROMPT_CHARS = 32_000
EXPIRY_SECONDS = 3600
OPS = ("create", "list", "retrieve", "delete", "content", "remix", "file")

MODERATION_MESSAGE = "Your request was blocked by our moderation system."
_CREATE_FIELDS = frozenset({"prompt", "model", "seconds", "size", "input_reference"})
_RELAY_STATUS = {"queued": "NOT_START", "in_progress": "IN_PROGRESS", "completed": "SUCCESS", "failed": "FAILURE"}
_DEFAULT_MESSAGES = {
    400: "Invalid request.",
    401: "Incorrect API key provided.",
    403: "You are not allowed to access this resource.",
    404: "Not found.",
    408: "Request timed out.",
    409: "The request conflicted with another request.",
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
}
_DEFAULT_TYPES = {429: "requests", 500: "server_error", 502: "server_error", 503: "server_error"}
_STREAM_CHUNK = 256 << 10
_OP_KEY = web.RequestKey("reelbot_fake_op", str)
_RECORD_KEY = web.RequestKey("reelbot_fake_record", "RecordedRequest")
_INJECTION_KEY = web.RequestKey("reelbot_fake_injection", "Injection")


# -- clock ------------------------------------------------------------------------------------


class FakeClock:
    """A manual clock: ``clock()`` reads it, ``advance()`` moves it, ``sleep()`` advances it.

    Pass ``clock.sleep`` as a provider's or worker's sleep function to run a whole render
    timeline without real waiting.
    """

    def __init__(self, start: float = 1_760_000_000.0) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)


# -- data -------------------------------------------------------------------------------------


@dataclass
class VideoPlan:
    """How one video will behave; ``None`` fields fall back to the server's defaults.

    Attributes:
        render_seconds: time in ``in_progress``.
        queue_seconds: time in ``queued`` before that.
        fail_code / fail_message: make the job fail (``error: {code, message}``).
        fail_at_progress: the progress at which a failing job fails.
        never_finish: stays ``in_progress`` at 99 % forever.
        content: the exact bytes ``/content`` serves for this video.
        content_type: the Content-Type served with ``content`` / ``content_size``.
        content_size: serve a streamed MP4-looking body (``ftyp`` + ``mdat``) of this many bytes.
    """

    render_seconds: float | None = None
    queue_seconds: float | None = None
    fail_code: str | None = None
    fail_message: str | None = None
    fail_at_progress: int = 50
    never_finish: bool = False
    content: bytes | None = None
    content_type: str = "video/mp4"
    content_size: int | None = None


@dataclass(frozen=True)
class UploadedFile:
    filename: str | None
    content_type: str
    data: bytes


@dataclass
class RecordedRequest:
    """One request as the server saw it.

    Attributes:
        body_kind: ``"none"``, ``"json"``, ``"multipart"`` or ``"other"``.
        json: the decoded JSON body (JSON requests that parsed).
        form: text fields of a multipart body.
        files: file parts of a multipart body, by field name.
        at: ``clock()`` when it arrived.
    """

    op: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_kind: str
    at: float
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)


@dataclass
class Injection:
    """A scripted misbehaviour for the next ``times`` matching requests (``None``: forever).

    Order of events for a matching request: if ``process``, the real handler runs first (its
    side effects happen, e.g. a video is created); then ``delay`` seconds pass; then ``reset``
    drops the connection, or the injected answer (``status``/``json``/``body``/``garbage``) is
    sent, or else the real answer is sent (handled now if it was not already). ``truncate_after``
    (content only) streams the real body and drops the connection after that many bytes.
    """

    op: str
    status: int | None = None
    json: Any = None
    body: bytes | None = None
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    garbage: bool = False
    truncate_after: int | None = None
    process: bool = False
    times: int | None = 1
    hits: int = 0

    @property
    def spent(self) -> bool:
        return self.times is not None and self.hits >= self.times


@dataclass
class FakeVideo:
    """A video the fake knows about; its status is computed from the clock."""

    id: str
    model: str
    prompt: str
    size: str
    seconds: str
    created: float
    queue_seconds: float
    render_seconds: float
    plan: VideoPlan
    seq: int
    remixed_from_video_id: str | None = None
    reference: UploadedFile | dict[str, Any] | None = None
    forced: tuple[str, float, dict[str, str] | None] | None = None

    def state(self, now: float) -> tuple[str, int, float | None, dict[str, str] | None]:
        """``(status, progress, completed_at, error)`` at clock time ``now``."""
        if self.forced is not None:
            status, at, error = self.forced
            if now >= at:
                progress = 100 if status == "completed" else self._progress(at)
                return status, progress, (at if status == "completed" else None), error
        started = self.created + self.queue_seconds
        if now <= started:  # a new video is always "queued" in the create answer
            return "queued", 0, None, None
        plan = self.plan
        if plan.fail_code is not None or plan.fail_message is not None:
            fail_at = started + self.render_seconds * max(0, min(99, plan.fail_at_progress)) / 100
            if now >= fail_at and not plan.never_finish:
                error = {"code": plan.fail_code or "internal_error", "message": plan.fail_message or ""}
                return "failed", self._progress(fail_at), None, error
        done = started + self.render_seconds
        if now < done or plan.never_finish:
            return "in_progress", self._progress(now), None, None
        return "completed", 100, done, None

    def _progress(self, now: float) -> int:
        started = self.created + self.queue_seconds
        if self.render_seconds <= 0:
            return 99
        return max(0, min(99, math.floor(100 * (now - started) / self.render_seconds)))

    def to_json(self, now: float) -> dict[str, Any]:
        status, progress, completed_at, error = self.state(now)
        done = None if completed_at is None else int(completed_at)
        return {
            "id": self.id,
            "object": "video",
            "model": self.model,
            "status": status,
            "progress": progress,
            "created_at": int(self.created),
            "completed_at": done,
            "expires_at": None if done is None else done + EXPIRY_SECONDS,
            "prompt": self.prompt,
            "size": self.size,
            "seconds": self.seconds,
            "remixed_from_video_id": self.remixed_from_video_id,
            "error": error,
        }


class _Invalid(Exception):
    """A 4xx answer raised from deep inside validation."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type
        self.headers = dict(headers or {})


def error_body(
    message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The OpenAI error envelope."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# -- media ------------------------------------------------------------------------------------

_MEDIA_LOCK = threading.Lock()
_MP4_CACHE: dict[tuple[int, int, int, int], bytes] = {}
_IMAGE_CACHE: dict[tuple[str, int, int], bytes] = {}


def _dims(size: str) -> tuple[int, int]:
    width, height = size.lower().split("x")
    return int(width), int(height)


def encode_mp4(width: int, height: int, seconds: int, fps: int = 8) -> bytes:
    """A real H.264 + AAC MP4 of exactly ``width`` x ``height`` and ``seconds`` (cached).

    A moving bar over a flat background, and a quiet 440 Hz tone, so probes see real streams.
    """
    key = (width, height, seconds, fps)
    with _MEDIA_LOCK:
        cached = _MP4_CACHE.get(key)
    if cached is not None:
        return cached
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "40", "g": str(fps * 2)}
        audio = container.add_stream("aac", rate=48_000)
        audio.layout = "stereo"
        frames = fps * seconds
        background = np.empty((height, width, 3), np.uint8)
        background[:] = (40, 90, 160)
        bar = max(8, width // 16)
        for index in range(frames):
            picture = background.copy()
            x = (width - bar) * index // max(1, frames - 1)
            picture[:, x : x + bar] = (240, 240, 240)
            for packet in video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        rate, total, pts = 48_000, 48_000 * seconds, 0
        while pts < total:
            count = min(1024, total - pts)
            t = np.arange(pts, pts + count) / rate
            tone = (0.05 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
            for packet in audio.encode(frame):
                container.mux(packet)
            pts += count
        for packet in audio.encode():
            container.mux(packet)
    data = buffer.getvalue()
    with _MEDIA_LOCK:
        _MP4_CACHE[key] = data
    return data


def _still(kind: str, width: int, height: int) -> bytes:
    key = (kind, width, height)
    with _MEDIA_LOCK:
        cached = _IMAGE_CACHE.get(key)
    if cached is not None:
        return cached
    from PIL import Image

    scale = min(1.0, 320 / max(width, height))
    image = Image.new("RGB", (max(1, int(width * scale)), max(1, int(height * scale))), (40, 90, 160))
    if kind == "spritesheet":  # a 5x5 grid of frames
        sheet = Image.new("RGB", (image.width * 5, image.height * 5), (20, 20, 20))
        for index in range(25):
            sheet.paste(image, ((index % 5) * image.width, (index // 5) * image.height))
        image = sheet
    out = io.BytesIO()
    image.save(out, format="WEBP" if kind == "thumbnail" else "JPEG", quality=70)
    data = out.getvalue()
    with _MEDIA_LOCK:
        _IMAGE_CACHE[key] = data
    return data


# -- server -----------------------------------------------------------------------------------


class FakeVideosServer(FakeServer):
    """The fake server. Use as ``async with FakeVideosServer(...) as fake:``.

    Args:
        api_key: the only key accepted (``Authorization: Bearer <key>``); mutable as
            ``fake.api_key``.
        clock: returns "now" in unix seconds; ``time.time`` by default, a ``FakeClock`` for
            deterministic timelines.
        render_seconds: time in ``in_progress``; a number or a function
            ``(model, size, seconds) -> float`` (e.g. random durations for benchmarks).
        queue_seconds: time in ``queued`` first (number or function, as above).
        poll_after_ms: when set, Video answers carry ``openai-poll-after-ms: <value>``.
        relay: answer in the new-api relay shape: ``{"code", "message", "data": {...}}`` with
            ``task_id``, upper-case statuses, ``"33%"`` progress, ``fail_reason`` and a
            ``video_url`` once completed.
        content_endpoint: when False, ``/content`` answers 404 (as on relays that only give a
            download URL).
        video_bytes: serve these bytes for every video instead of encoding real MP4s.
        moderated_terms: prompts containing any of these (case-insensitive) get a 400
            ``moderation_blocked`` at create.
        max_running: when set, a create while this many videos are unfinished gets
            429 "Too many running tasks".
        rate_limit_rpm: the ``x-ratelimit-limit-requests`` figure (requests per clock minute).
        enforce_rate_limit: answer 429 with ``Retry-After`` once ``rate_limit_rpm`` is used up.
        omit_nulls: leave null keys out of Video objects (as the guide's examples do).
        model_sizes / allowed_seconds: what create accepts.
        host / port: where to listen (127.0.0.1, any free port).
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        clock: Callable[[], float] = time.time,
        render_seconds: float | Callable[[str, str, int], float] = 2.0,
        queue_seconds: float | Callable[[str, str, int], float] = 0.0,
        poll_after_ms: int | None = None,
        relay: bool = False,
        content_endpoint: bool = True,
        video_bytes: bytes | None = None,
        moderated_terms: Iterable[str] = (),
        max_running: int | None = None,
        rate_limit_rpm: int = 100,
        enforce_rate_limit: bool = False,
        omit_nulls: bool = False,
        model_sizes: Mapping[str, tuple[str, ...]] = MODEL_SIZES,
        allowed_seconds: tuple[str, ...] = ALLOWED_SECONDS,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, outgoing=False)
        self.api_key = api_key
        self.clock = clock
        self.render_seconds = render_seconds
        self.queue_seconds = queue_seconds
        self.poll_after_ms = poll_after_ms
        self.relay = relay
        self.content_endpoint = content_endpoint
        self.video_bytes = video_bytes
        self.moderated_terms = tuple(term.lower() for term in moderated_terms)
        self.max_running = max_running
        self.rate_limit_rpm = rate_limit_rpm
        self.enforce_rate_limit = enforce_rate_limit
        self.omit_nulls = omit_nulls
        self.model_sizes = dict(model_sizes)
        self.allowed_seconds = allowed_seconds
        #: Every request, in arrival order.
        self.requests: list[RecordedRequest] = []
        #: Every video ever created, by id (deleted ones are removed).
        self.videos: dict[str, FakeVideo] = {}
        self._plans: deque[VideoPlan] = deque()
        self._injections: list[Injection] = []
        self._window: deque[float] = deque()
        self._seq = 0

    # -- lifecycle (start/stop: FakeServer) --

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 << 20)
        app.router.add_post("/v1/videos", self._create)
        app.router.add_get("/v1/videos", self._list)
        app.router.add_get("/v1/videos/{video_id}", self._retrieve)
        app.router.add_delete("/v1/videos/{video_id}", self._delete)
        app.router.add_get("/v1/videos/{video_id}/content", self._content)
        app.router.add_post("/v1/videos/{video_id}/remix", self._remix)
        app.router.add_get("/files/{video_id}.mp4", self._file)
        app.on_response_prepare.append(self._on_prepare)
        return app

    @property
    def base_url(self) -> str:
        """The API root to give a client, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"{self.root_url}/v1"

    # -- scripting API --

    def plan(self, **fields: Any) -> VideoPlan:
        """Queues a ``VideoPlan`` (see its fields) for the next created or remixed video.

        Plans are used first in, first out; videos without a plan use the server defaults.
        """
        plan = VideoPlan(**fields)
        self._plans.append(plan)
        return plan

    def inject(
        self,
        op: str,
        *,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        type: str | None = None,
        param: str | None = None,
        json: Any = None,
        body: bytes | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        reset: bool = False,
        garbage: bool = False,
        truncate_after: int | None = None,
        process: bool = False,
        times: int | None = 1,
    ) -> Injection:
        """Makes the next ``times`` requests for ``op`` misbehave (see ``Injection``).

        With ``status`` and no ``json``/``body``, the answer is the OpenAI error envelope built
        from ``code``, ``message``, ``type`` and ``param`` (with a stock message per status).
        Injections for one op are used in the order they were added.

        Examples::

            fake.inject("create", status=429, headers={"Retry-After": "1"}, times=2)
            fake.inject("retrieve", status=503, times=3)
            fake.inject("retrieve", delay=5)             # slow answer -> client timeout
            fake.inject("create", process=True, reset=True)  # created, but the answer is lost
            fake.inject("retrieve", garbage=True)        # truncated JSON
            fake.inject("content", status=200, body=b"<html>", content_type="text/html")
        """
        if op != "*" and op not in OPS:
            raise ValueError(f"unknown op {op!r}; one of {', '.join(OPS)} or '*'")
        if status is not None and json is None and body is None and status >= 400:
            json = error_body(
                message or _DEFAULT_MESSAGES.get(status, f"HTTP {status}"),
                type=type or _DEFAULT_TYPES.get(status, "invalid_request_error"),
                param=param,
                code=code,
            )
        injection = Injection(
            op=op,
            status=status,
            json=json,
            body=body,
            content_type=content_type,
            headers=dict(headers or {}),
            delay=delay,
            reset=reset,
            garbage=garbage,
            truncate_after=truncate_after,
            process=process,
            times=times,
        )
        self._injections.append(injection)
        return injection

    def rate_limit(
        self,
        op: str = "create",
        *,
        times: int = 1,
        retry_after: float | str | None = None,
        retry_after_ms: int | None = None,
    ) -> Injection:
        """429s with the rate-limit headers (``Retry-After`` / ``retry-after-ms`` when given)."""
        headers: dict[str, str] = {"x-ratelimit-remaining-requests": "0"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if retry_after_ms is not None:
            headers["retry-after-ms"] = str(retry_after_ms)
        return self.inject(op, status=429, code="rate_limit_exceeded", headers=headers, times=times)

    def server_errors(self, op: str, *, times: int = 1, status: int = 500) -> Injection:
        """A burst of 5xx answers."""
        return self.inject(op, status=status, times=times)

    def moderate_next_create(self) -> Injection:
        """The next create is refused by moderation (400 ``moderation_blocked``)."""
        return self.inject("create", status=400, code="moderation_blocked", message=MODERATION_MESSAGE)

    def model_not_found(self, op: str = "create", *, status: int = 404, model: str = "sora-2") -> Injection:
        """The shut-down answer: the model does not exist (``model_not_found``)."""
        return self.inject(
            op,
            status=status,
            code="model_not_found",
            param="model",
            message=f"The model `{model}` does not exist or you do not have access to it.",
        )

    def clear_injections(self) -> None:
        self._injections.clear()

    def video(self, video_id: str) -> FakeVideo:
        return self.videos[video_id]

    def finish(self, video_id: str) -> None:
        """Completes a video now, whatever its plan."""
        self.videos[video_id].forced = ("completed", self.clock(), None)

    def fail(self, video_id: str, code: str = "internal_error", message: str = "Video generation failed.") -> None:
        """Fails a video now with ``error: {code, message}``."""
        self.videos[video_id].forced = ("failed", self.clock(), {"code": code, "message": message})

    def set_content(
        self,
        video_id: str,
        *,
        data: bytes | None = None,
        size: int | None = None,
        content_type: str = "video/mp4",
    ) -> None:
        """What ``/content`` serves for one video: exact bytes, or a streamed body of ``size``."""
        plan = self.videos[video_id].plan
        plan.content, plan.content_size, plan.content_type = data, size, content_type

    def calls(self, op: str) -> list[RecordedRequest]:
        return [r for r in self.requests if op in ("*", r.op)]

    def count(self, op: str) -> int:
        return len(self.calls(op))

    # -- plumbing --

    @staticmethod
    def _op(request: web.Request) -> str:
        info = request.match_info
        if info.http_exception is not None:
            return "unknown"
        canonical = info.route.resource.canonical if info.route.resource is not None else ""
        table = {
            ("POST", "/v1/videos"): "create",
            ("GET", "/v1/videos"): "list",
            ("GET", "/v1/videos/{video_id}"): "retrieve",
            ("DELETE", "/v1/videos/{video_id}"): "delete",
            ("GET", "/v1/videos/{video_id}/content"): "content",
            ("POST", "/v1/videos/{video_id}/remix"): "remix",
            ("GET", "/files/{video_id}.mp4"): "file",
        }
        return table.get((request.method, canonical), "unknown")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        op = self._op(request)
        media = request.content_type if request.body_exists else ""
        kind = (
            "none"
            if not request.body_exists
            else "json"
            if media == "application/json"
            else "multipart"
            if media.startswith("multipart/")
            else "other"
        )
        record = RecordedRequest(
            op=op,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body_kind=kind,
            at=self.clock(),
        )
        self.requests.append(record)
        request[_OP_KEY], request[_RECORD_KEY] = op, record
        info = request.match_info
        if info.http_exception is not None:
            exc = info.http_exception
            return _error(exc.status, f"Invalid URL ({request.method} {request.path})")
        if op != "file":
            denied = self._check_auth(request)
            if denied is not None:
                return denied
        self._window.append(self.clock())
        injection = self._take_injection(op)
        try:
            if injection is None:
                limited = self._check_rate_limit()
                return limited if limited is not None else await handler(request)
            request[_INJECTION_KEY] = injection
            return await self._apply(injection, request, handler)
        except _Invalid as invalid:
            return _error(
                invalid.status,
                invalid.message,
                code=invalid.code,
                param=invalid.param,
                type=invalid.type,
                headers=invalid.headers,
            )

    def _check_auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header:
            return _error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or key.strip() != self.api_key:
            shown = key.strip()
            masked = f"{shown[:3]}{'*' * 8}{shown[-4:]}" if len(shown) > 8 else "****"
            return _error(
                401,
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )
        return None

    def _check_rate_limit(self) -> web.Response | None:
        if not self.enforce_rate_limit:
            return None
        self._trim_window()
        if len(self._window) <= self.rate_limit_rpm:
            return None
        self._window.pop()  # a refused request does not count
        wait = max(1, math.ceil(self._reset_seconds()))
        return _error(
            429,
            "Rate limit reached for requests.",
            type="requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )

    def _trim_window(self) -> None:
        horizon = self.clock() - 60.0
        while self._window and self._window[0] <= horizon:
            self._window.popleft()

    def _reset_seconds(self) -> float:
        return 0.0 if not self._window else max(0.0, self._window[0] + 60.0 - self.clock())

    def _take_injection(self, op: str) -> Injection | None:
        for injection in self._injections:
            if injection.op in (op, "*") and not injection.spent:
                injection.hits += 1
                return injection
        return None

    async def _apply(
        self, injection: Injection, request: web.Request, handler: Callable[..., Any]
    ) -> web.StreamResponse:
        response: web.StreamResponse | None = None
        if injection.process:
            response = await handler(request)
        if injection.delay:
            await asyncio.sleep(injection.delay)
        if injection.reset:
            reset_connection(request)
            return web.Response(status=500)  # never reaches the client
        if injection.garbage:
            return web.Response(
                status=injection.status or 200,
                body=b'{"id": "video_',
                headers=injection.headers,
                content_type="application/json",
            )
        if injection.status is not None or injection.json is not None or injection.body is not None:
            status = injection.status or 200
            if injection.body is not None:
                return web.Response(
                    status=status,
                    body=injection.body,
                    headers=injection.headers,
                    content_type=injection.content_type or "application/octet-stream",
                )
            return web.json_response(
                injection.json,
                status=status,
                headers=injection.headers,
                content_type=injection.content_type or "application/json",
            )
        if response is None:
            response = await handler(request)
        for name, value in injection.headers.items():
            response.headers[name] = value
        return response

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("x-request-id", f"req_{secrets.token_hex(12)}")
        if request.get(_OP_KEY, "unknown") != "file":
            self._trim_window()
            remaining = max(0, self.rate_limit_rpm - len(self._window))
            response.headers.setdefault("x-ratelimit-limit-requests", str(self.rate_limit_rpm))
            response.headers.setdefault("x-ratelimit-remaining-requests", str(remaining))
            response.headers.setdefault("x-ratelimit-reset-requests", f"{int(self._reset_seconds() * 1000)}ms")

    def _video_response(self, video: FakeVideo) -> web.Response:
        headers = {}
        if self.poll_after_ms is not None:
            headers["openai-poll-after-ms"] = str(self.poll_after_ms)
        return web.json_response(self._render(video), headers=headers)

    def _render(self, video: FakeVideo) -> dict[str, Any]:
        now = self.clock()
        body = video.to_json(now)
        if self.relay:
            status = body["status"]
            error = body["error"] or {}
            data: dict[str, Any] = {
                "task_id": video.id,
                "status": _RELAY_STATUS[status],
                "progress": f"{body['progress']}%",
                "fail_reason": error.get("message") or "",
                "submit_time": body["created_at"],
                "finish_time": body["completed_at"] or 0,
                "model": video.model,
                "size": video.size,
                "seconds": video.seconds,
                "prompt": video.prompt,
                "video_url": f"{self.root_url}/files/{video.id}.mp4" if status == "completed" else None,
            }
            return {"code": "success", "message": "", "data": data}
        if self.omit_nulls:
            body = {key: value for key, value in body.items() if value is not None}
        return body

    def _find(self, video_id: str) -> FakeVideo:
        video = self.videos.get(video_id)
        if video is None:
            raise _Invalid(404, f"Video with id '{video_id}' not found.", param="video_id")
        return video

    def _new_video(
        self,
        *,
        model: str,
        prompt: str,
        size: str,
        seconds: str,
        remixed_from: str | None = None,
        reference: UploadedFile | dict[str, Any] | None = None,
    ) -> FakeVideo:
        plan = self._plans.popleft() if self._plans else VideoPlan()
        secs = int(seconds)
        render = plan.render_seconds
        if render is None:
            render = self.render_seconds(model, size, secs) if callable(self.render_seconds) else self.render_seconds
        queue = plan.queue_seconds
        if queue is None:
            queue = self.queue_seconds(model, size, secs) if callable(self.queue_seconds) else self.queue_seconds
        self._seq += 1
        video = FakeVideo(
            id=f"video_{secrets.token_hex(16)}",
            model=model,
            prompt=prompt,
            size=size,
            seconds=seconds,
            created=self.clock(),
            queue_seconds=float(queue),
            render_seconds=float(render),
            plan=plan,
            seq=self._seq,
            remixed_from_video_id=remixed_from,
            reference=reference,
        )
        self.videos[video.id] = video
        return video

    def _check_capacity(self) -> None:
        if self.max_running is None:
            return
        now = self.clock()
        running = sum(1 for v in self.videos.values() if v.state(now)[0] in ("queued", "in_progress"))
        if running >= self.max_running:
            raise _Invalid(429, "Too many running tasks.", type="requests", code="rate_limit_exceeded")

    # -- handlers --

    async def _create(self, request: web.Request) -> web.Response:
        record = request[_RECORD_KEY]
        fields, reference = await self._read_create_body(request, record)
        unknown = sorted(set(fields) - _CREATE_FIELDS)
        if unknown:
            raise _Invalid(400, f"Unknown parameter: '{unknown[0]}'.", code="unknown_parameter", param=unknown[0])
        prompt = fields.get("prompt")
        if prompt is None:
            raise _Invalid(
                400, "Missing required parameter: 'prompt'.", code="missing_required_parameter", param="prompt"
            )
        if not isinstance(prompt, str):
            raise _Invalid(
                400,
                f"Invalid type for 'prompt': expected a string, but got {_kind(prompt)} instead.",
                code="invalid_type",
                param="prompt",
            )
        if not prompt:
            raise _Invalid(
                400,
                "Invalid 'prompt': string too short. Expected a string with minimum length 1, "
                "but got an empty string instead.",
                code="string_below_min_length",
                param="prompt",
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise _Invalid(
                400,
                f"Invalid 'prompt': string too long. Expected a string with maximum length "
                f"{MAX_PROMPT_CHARS}, but got a string with length {len(prompt)} instead.",
                code="string_above_max_length",
                param="prompt",
            )
        model = fields.get("model", "sora-2")
        if not isinstance(model, str):
            raise _Invalid(
                400,
                f"Invalid type for 'model': expected a string, but got {_kind(model)} instead.",
                code="invalid_type",
                param="model",
            )
        if model not in self.model_sizes:
            raise _Invalid(
                400,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        seconds = fields.get("seconds", "4")
        choices = _choices(self.allowed_seconds)
        if not isinstance(seconds, str):
            raise _Invalid(
                400,
                f"Invalid type for 'seconds': expected one of {choices}, but got {_kind(seconds)} instead.",
                code="invalid_type",
                param="seconds",
            )
        if seconds not in self.allowed_seconds:
            raise _Invalid(
                400,
                f"Invalid value: '{seconds}'. Supported values are: {choices}.",
                code="invalid_value",
                param="seconds",
            )
        size = fields.get("size", "720x1280")
        sizes = self.model_sizes[model]
        if not isinstance(size, str):
            raise _Invalid(
                400,
                f"Invalid type for 'size': expected a string, but got {_kind(size)} instead.",
                code="invalid_type",
                param="size",
            )
        if size not in sizes:
            raise _Invalid(
                400,
                f"Invalid value: '{size}'. Supported values for {model} are: {_choices(sizes)}.",
                code="invalid_value",
                param="size",
            )
        if reference is not None:
            _check_reference(reference, size)
        if any(term in prompt.lower() for term in self.moderated_terms):
            raise _Invalid(400, MODERATION_MESSAGE, code="moderation_blocked")
        self._check_capacity()
        video = self._new_video(model=model, prompt=prompt, size=size, seconds=seconds, reference=reference)
        return self._video_response(video)

    async def _read_create_body(
        self, request: web.Request, record: RecordedRequest
    ) -> tuple[dict[str, Any], UploadedFile | dict[str, Any] | None]:
        media = request.content_type
        if media == "application/json":
            try:
                data = json.loads(await request.read())
            except ValueError:
                raise _Invalid(400, "We could not parse the JSON body of your request.") from None
            record.json = data
            if not isinstance(data, dict):
                raise _Invalid(400, "The JSON body must be an object.")
            reference = data.get("input_reference")
            if reference is not None and not isinstance(reference, dict):
                raise _Invalid(
                    400,
                    f"Invalid type for 'input_reference': expected an object, but got {_kind(reference)} instead.",
                    code="invalid_type",
                    param="input_reference",
                )
            if isinstance(reference, dict) and len({"image_url", "file_id"} & set(reference)) != 1:
                raise _Invalid(400, "Provide exactly one of `image_url` or `file_id`.", param="input_reference")
            return data, reference
        if media.startswith("multipart/"):
            form = await request.post()
            fields: dict[str, Any] = {}
            reference: UploadedFile | None = None
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    upload = UploadedFile(value.filename, value.content_type, value.file.read())
                    record.files[name] = upload
                    if name == "input_reference":
                        reference = upload
                    fields[name] = upload
                else:
                    text = value if isinstance(value, str) else bytes(value).decode("utf-8", "replace")
                    record.form[name] = text
                    fields[name] = text
            if isinstance(fields.get("input_reference"), str):
                raise _Invalid(
                    400,
                    "Invalid type for 'input_reference': expected a file, but got a string instead.",
                    code="invalid_type",
                    param="input_reference",
                )
            return fields, reference
        raise _Invalid(
            400, f"Unsupported Content-Type {media or '(none)'}: send application/json or multipart/form-data."
        )

    async def _retrieve(self, request: web.Request) -> web.Response:
        return self._video_response(self._find(request.match_info["video_id"]))

    async def _list(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise _Invalid(400, "Invalid 'limit': expected an integer.", code="invalid_type", param="limit") from None
        if not 0 <= limit <= 100:
            raise _Invalid(
                400,
                f"Invalid 'limit': {limit}. Expected a value between 0 and 100.",
                code="invalid_value",
                param="limit",
            )
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _Invalid(
                400,
                f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
                code="invalid_value",
                param="order",
            )
        items = sorted(self.videos.values(), key=lambda v: (v.created, v.seq), reverse=order == "desc")
        after = query.get("after")
        if after:
            ids = [v.id for v in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        data = [self._render(v) for v in page]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": len(items) > len(page),
            }
        )

    async def _delete(self, request: web.Request) -> web.Response:
        video = self._find(request.match_info["video_id"])
        del self.videos[video.id]
        return web.json_response({"id": video.id, "object": "video.deleted", "deleted": True})

    async def _remix(self, request: web.Request) -> web.Response:
        record = request[_RECORD_KEY]
        source = self._find(request.match_info["video_id"])
        if request.content_type == "application/json":
            try:
                data = json.loads(await request.read())
            except ValueError:
                raise _Invalid(400, "We could not parse the JSON body of your request.") from None
            record.json = data
        else:
            form = await request.post()
            data = {k: v for k, v in form.items() if isinstance(v, str)}
            record.form = dict(data)
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if not isinstance(prompt, str) or not 1 <= len(prompt) <= MAX_PROMPT_CHARS:
            raise _Invalid(400, "Invalid 'prompt': expected a string of 1 to 32000 characters.", param="prompt")
        if source.state(self.clock())[0] != "completed":
            raise _Invalid(400, "Only completed videos can be remixed.", param="video_id")
        if any(term in prompt.lower() for term in self.moderated_terms):
            raise _Invalid(400, MODERATION_MESSAGE, code="moderation_blocked")
        self._check_capacity()
        video = self._new_video(
            model=source.model, prompt=prompt, size=source.size, seconds=source.seconds, remixed_from=source.id
        )
        return self._video_response(video)

    async def _content(self, request: web.Request) -> web.StreamResponse:
        video = self._find(request.match_info["video_id"])
        if not self.content_endpoint:
            raise _Invalid(404, "Not found.")
        variant = request.query.get("variant", "video")
        if variant not in ("video", "thumbnail", "spritesheet"):
            raise _Invalid(
                400,
                f"Invalid value: '{variant}'. Supported values are: 'video', 'thumbnail', and 'spritesheet'.",
                code="invalid_value",
                param="variant",
            )
        return await self._serve(request, video, variant)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, self._find(request.match_info["video_id"]), "video")

    async def _serve(self, request: web.Request, video: FakeVideo, variant: str) -> web.StreamResponse:
        status = video.state(self.clock())[0]
        if status == "failed":
            raise _Invalid(400, "Video generation failed; there is no content to download.", param="video_id")
        if status != "completed":
            raise _Invalid(400, f"Video is not ready yet; its status is {status}.", param="video_id")
        width, height = _dims(video.size)
        injection = request.get(_INJECTION_KEY)
        truncate = injection.truncate_after if injection is not None else None
        if variant != "video":
            data = await asyncio.to_thread(_still, variant, width, height)
            media = "image/webp" if variant == "thumbnail" else "image/jpeg"
            return await _stream(request, media, len(data), _chunks_of(data), truncate)
        plan = video.plan
        if plan.content_size is not None:
            total = plan.content_size
            return await _stream(request, plan.content_type, total, _synthetic_chunks(total), truncate)
        if plan.content is not None:
            data, media = plan.content, plan.content_type
        elif self.video_bytes is not None:
            data, media = self.video_bytes, "video/mp4"
        else:
            data = await asyncio.to_thread(encode_mp4, width, height, int(video.seconds))
            media = "video/mp4"
        return await _stream(request, media, len(data), _chunks_of(data), truncate)


# -- helpers ----------------------------------------------------------------------------------


def _error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    type: str = "invalid_request_error",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return web.json_response(
        error_body(message, type=type, param=param, code=code), status=status, headers=dict(headers or {})
    )


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else "a string"


def _choices(values: Iterable[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f", or {quoted[-1]}"


def _check_reference(reference: UploadedFile | dict[str, Any], size: str) -> None:
    """Validates a reference image the way the real API reports it (type, decodable, exact size)."""
    if isinstance(reference, dict):
        url = reference.get("image_url")
        if not isinstance(url, str) or not url.startswith("data:"):
            return  # a remote URL or file id: accepted without fetching
        header, _, payload = url.partition(",")
        media = header[5:].split(";")[0]
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(400, "Invalid base64 image data.", param="input_reference") from None
        reference = UploadedFile(None, media, data)
    if reference.content_type not in REFERENCE_TYPES:
        raise _Invalid(
            400,
            f"Invalid file format: {reference.content_type}. Supported formats are: {_choices(REFERENCE_TYPES)}.",
            code="invalid_image_format",
            param="input_reference",
        )
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(reference.data)) as image:
            dims = image.size
    except (UnidentifiedImageError, OSError, ValueError):
        raise _Invalid(
            400, "The input_reference image could not be decoded.", code="invalid_image", param="input_reference"
        ) from None
    if dims != _dims(size):
        raise _Invalid(400, "Inpaint image must match the requested width and height", param="input_reference")


def _chunks_of(data: bytes) -> Iterable[bytes]:
    view = memoryview(data)
    for start in range(0, len(data), _STREAM_CHUNK):
        yield view[start : start + _STREAM_CHUNK].tobytes()


def _synthetic_chunks(total: int) -> Iterable[bytes]:
    head = synthetic_mp4_head(total)
    yield head
    filler = bytes(_STREAM_CHUNK)
    sent = len(head)
    while sent < total:
        count = min(_STREAM_CHUNK, total - sent)
        yield filler if count == _STREAM_CHUNK else filler[:count]
        sent += count


async def _stream(
    request: web.Request, media: str, total: int, chunks: Iterable[bytes], truncate_after: int | None
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": media})
    response.content_length = total
    await response.prepare(request)
    sent = 0
    for chunk in chunks:
        if truncate_after is not None and sent + len(chunk) >= truncate_after:
            await response.write(chunk[: max(0, truncate_after - sent)])
            reset_connection(request)
            return response
        await response.write(chunk)
        sent += len(chunk)
    await response.write_eof()
    return response
