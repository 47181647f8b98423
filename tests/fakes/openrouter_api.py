"""A fake OpenRouter video API (``/api/v1/videos``) on 127.0.0.1, for tests.

It follows ``/work/shared/reference/openrouter-videos-api.md`` (§13's fidelity checklist):

- ``POST /api/v1/videos``: JSON only, Bearer key, validated against a catalogue shaped like §9
  (durations, resolutions, aspect ratios, sizes, frame types, HTTPS-or-data image URLs, HTTPS-only
  video references, prompt required without an image, unknown model 400, deprecated model 404,
  413 over 50 MiB by Content-Length, ``previous_job_id`` 400/404/409) with the recorded message
  shapes; answers **202** with exactly ``{id, polling_url, status: "pending"}``.
- ``GET /api/v1/videos/{id}``: ``pending`` -> ``in_progress`` -> a terminal status on a real-time
  timeline (short by default), ``generation_id`` = id from the first poll; ``completed`` adds
  ``unsigned_urls`` (the /content URL), ``usage {cost, is_byok}`` and, with ``signed_urls``,
  ``urls`` + ``expires_at``; failures add a string ``error`` (moderation failures have
  ``generation_id: null``). No ``progress`` field. A plan may instead script the status of each
  poll (e.g. the unknown ``"processing"``).
- ``GET /api/v1/videos/{id}/content?index=0``: a real H.264 MP4 (silent for models whose audio
  flag is false/null or with ``generate_audio: false``), chunked with no Content-Length, Range
  ignored; 401 without a key, 400 for an index out of range. **Choices** (the meanings are not
  documented): 409 while the job is not completed (or failed), 410 once ``expire_content`` ran.
- Signed ``urls[0]`` (``/signed/{id}?token=…``) that work without a key until ``expires_at``.
- ``GET /api/v1/videos/models`` (no key; every key on every row, nulls included) and
  ``GET /api/v1/key`` (the key's limit and usage).
- Errors in the ``{error: {code, message, metadata?}}`` envelope; ``inject`` scripts 401, 402 (both
  wordings), 429 with Retry-After, 5xx (also *after* accepting a job), delays and resets.
- Webhooks: when a job has a ``callback_url`` (or the server a workspace default), a POST of the
  event envelope at its terminal state, with ``X-OpenRouter-Idempotency-Key`` and, when
  ``webhook_secret`` is set, ``X-OpenRouter-Signature``; retried on non-2xx; per-job knobs for a
  bad signature, an old timestamp, a lost delivery and a repeated one.

Deviation: the real API wants an HTTPS ``callback_url``; the fake accepts ``http://127.0.0.1`` so
tests can receive, unless ``require_https_callbacks=True``.

Quick start::

    async with FakeOpenRouter(webhook_secret="whsec") as fake:
        provider = OpenRouterProvider(api_key=fake.api_key, base_url=fake.base_url)
        fake.plan(outcome="failed", error="Content policy violation")   # the next job fails
        fake.inject("create", status=429, headers={"Retry-After": "3"})  # the next create is a 429
        ...
        [request] = fake.calls("create"); request.json["duration"]
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
import string
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes._server import FakeServer, reset_connection
from tests.media_factory import make_clip

DEFAULT_API_KEY = "sk-or-v1-fake-reelbot-0123456789abcdef"
MAX_BODY_BYTES = 50 << 20
OPS = ("create", "retrieve", "content", "models", "key", "signed")
NO_CREDITS_MESSAGE = "Insufficient credits. Add more using https://openrouter.ai/credits"
BALANCE_FLOOR_MESSAGE = "This request requires at least $1.00 in balance for image or video output"
CONTENT_POLICY = "Content policy violation"
_ALNUM = string.ascii_letters + string.digits
_STREAM_CHUNK = 64 << 10
_OP_KEY = web.RequestKey("openrouter_fake_op", str)
_RECORD_KEY = web.RequestKey("openrouter_fake_record", "RecordedRequest")
_TERMINAL = ("completed", "failed", "cancelled", "expired")
_DEFAULT_MESSAGES = {
    400: "Bad Request",
    401: "User not found.",
    402: NO_CREDITS_MESSAGE,
    403: "Forbidden",
    404: "Not Found",
    429: "Rate limit exceeded",
    500: "Internal Server Error",
    502: "Provider returned error",
    503: "Service Unavailable",
}


def _model(
    model_id: str,
    *,
    durations: Iterable[int],
    resolutions: Iterable[str],
    aspects: Iterable[str],
    frames: Iterable[str] = ("first_frame", "last_frame"),
    audio: bool | None = True,
    seed: bool | None = True,
    sizes: Iterable[str] = (),
    passthrough: Iterable[str] = (),
) -> dict[str, Any]:
    """One ``/videos/models`` row with every key the SDK requires (nullable ones as null)."""
    return {
        "id": model_id,
        "canonical_slug": f"{model_id}-20260331",
        "name": model_id.split("/", 1)[-1],
        "created": 1_774_915_200,
        "description": None,
        "hugging_face_id": None,
        "supported_resolutions": list(resolutions),
        "supported_aspect_ratios": list(aspects),
        "supported_sizes": list(sizes) or None,
        "supported_durations": list(durations),
        "supported_frame_images": list(frames),
        "generate_audio": audio,
        "seed": seed,
        "pricing_skus": {"duration_seconds": "0.05"},
        "allowed_passthrough_parameters": list(passthrough),
        "upscale_factor": None,
        "creativity": None,
    }


_SEVEN = ("1:1", "3:4", "9:16", "4:3", "16:9", "21:9", "9:21")
CATALOGUE: tuple[dict[str, Any], ...] = (
    _model(
        "google/veo-3.1-lite",
        durations=(4, 6, 8),
        resolutions=("720p", "1080p"),
        aspects=("16:9", "9:16"),
        sizes=("1280x720", "720x1280", "1920x1080", "1080x1920"),
        passthrough=("personGeneration", "aspectRatio", "negativePrompt", "conditioningScale", "enhancePrompt"),
    ),
    _model(
        "google/veo-3.1-fast",
        durations=(4, 6, 8),
        resolutions=("720p", "1080p", "4K"),
        aspects=("16:9", "9:16"),
        passthrough=("personGeneration", "negativePrompt"),
    ),
    _model("bytedance/seedance-2.0", durations=range(4, 16), resolutions=("480p", "720p", "1080p"), aspects=_SEVEN),
    _model("minimax/hailuo-2.3", durations=(6, 10), resolutions=("1080p",), aspects=("16:9",), frames=("first_frame",),
           audio=False, seed=None),
    _model("x-ai/grok-imagine-video", durations=range(1, 16), resolutions=("480p", "720p"), aspects=_SEVEN,
           frames=("first_frame",), audio=None, seed=None),
    _model("openai/sora-2-pro", durations=(4, 8, 12, 16, 20), resolutions=("720p", "1080p"), aspects=("16:9", "9:16"),
           frames=(), seed=False),
)  # fmt: skip


# -- media ------------------------------------------------------------------------------------

_MEDIA_LOCK = threading.Lock()
_CLIPS: dict[bool, bytes] = {}


def sample_mp4(*, audio: bool = True) -> bytes:
    """A real small H.264 MP4 (160x120, 1 s; + AAC when ``audio``), made once per process."""
    with _MEDIA_LOCK:
        cached = _CLIPS.get(audio)
        if cached is None:
            with tempfile.TemporaryDirectory() as folder:
                cached = make_clip(Path(folder) / "clip.mp4", seconds=1.0, audio=audio).read_bytes()
            _CLIPS[audio] = cached
    return cached


_SHAPED: dict[tuple[int, int, int, bool], bytes] = {}


def shaped_mp4(body: Mapping[str, Any], *, audio: bool) -> bytes:
    """A real H.264 MP4 of the asked ``duration``, ``aspect_ratio`` and ``resolution`` (cached per process)."""
    seconds = int(body.get("duration") or 4)
    short = int(str(body.get("resolution") or "720p").rstrip("pP") or 720)
    across, _, down = str(body.get("aspect_ratio") or "16:9").partition(":")
    w, h = int(across), int(down or 1)
    width, height = (round(short * w / h), short) if w >= h else (short, round(short * h / w))
    key = (width // 2 * 2, height // 2 * 2, seconds, audio)
    with _MEDIA_LOCK:
        cached = _SHAPED.get(key)
        if cached is None:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "clip.mp4"
                clip = make_clip(path, seconds=seconds, width=key[0], height=key[1], fps=8, audio=audio)
                cached = _SHAPED[key] = clip.read_bytes()
    return cached


# -- webhooks ---------------------------------------------------------------------------------


def sign_openrouter_webhook(secret: str, body: bytes, timestamp: int) -> dict[str, str]:
    """The ``X-OpenRouter-Signature`` header OpenRouter sends for ``body`` at ``timestamp``."""
    digest = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"," + body, hashlib.sha256)
    return {"X-OpenRouter-Signature": f"t={timestamp},v1={digest.hexdigest()}"}


@dataclass
class WebhookDelivery:
    """One webhook POST the fake made (or chose to lose).

    Attributes:
        status: the receiver's HTTP answer, None when it could not be reached or ``lost``.
    """

    url: str
    headers: dict[str, str]
    body: bytes
    attempt: int
    status: int | None
    lost: bool = False


# -- data -------------------------------------------------------------------------------------


@dataclass
class JobPlan:
    """How the next created job behaves; ``None`` fields use the server's defaults.

    Attributes:
        pending_s / in_progress_s: time spent in each status before the outcome.
        outcome: the terminal status: ``completed``, ``failed``, ``cancelled`` or ``expired``.
        error: the ``error`` string of a failure (defaults per outcome, as in the guide).
        statuses: the status of each poll in turn (the last one repeats), instead of the timeline;
            e.g. ``["pending", "processing", "processing", "completed"]``.
        never_finish: stays ``in_progress`` forever.
        content: exact bytes ``/content`` serves.
        cost: ``usage.cost`` in USD.
        webhook: ``ok``, ``bad_signature``, ``old_timestamp``, ``lost`` or ``repeat``.
    """

    pending_s: float | None = None
    in_progress_s: float | None = None
    outcome: str = "completed"
    error: str | None = None
    statuses: list[str] | None = None
    never_finish: bool = False
    content: bytes | None = None
    cost: float | None = None
    webhook: str = "ok"


@dataclass
class RecordedRequest:
    """One request as the server saw it (headers with lower-case names)."""

    op: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    json: Any = None


@dataclass
class Injection:
    """A scripted misbehaviour for the next ``times`` requests of ``op`` (``None``: forever).

    Order: if ``process``, the real handler runs first (e.g. the job is created); then ``delay``
    seconds pass; then ``reset`` drops the connection, or the injected answer is sent, or else the
    real answer.
    """

    op: str
    status: int | None = None
    json: Any = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False
    process: bool = False
    times: int | None = 1
    hits: int = 0

    @property
    def spent(self) -> bool:
        return self.times is not None and self.hits >= self.times


@dataclass
class FakeJob:
    id: str
    body: dict[str, Any]
    model: dict[str, Any]
    created: float
    plan: JobPlan
    pending_s: float
    in_progress_s: float
    callback_url: str | None
    polls: int = 0
    forced: tuple[str, str | None] | None = None
    content_gone: bool = False
    webhook_sent: bool = False
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    @property
    def audio(self) -> bool:
        asked = self.body.get("generate_audio")
        flag = self.model.get("generate_audio")
        return bool(flag) if asked is None else bool(asked) and bool(flag)

    def terminal_at(self) -> float | None:
        if self.plan.statuses is not None or self.plan.never_finish:
            return None
        return self.created + self.pending_s + self.in_progress_s

    def state(self, now: float) -> tuple[str, str | None]:
        """``(status, error)`` now (scripted statuses follow the poll count instead)."""
        if self.forced is not None:
            return self.forced
        if self.plan.statuses is not None:
            script = self.plan.statuses
            status = script[min(max(self.polls - 1, 0), len(script) - 1)]
            return status, self._error(status)
        if now < self.created + self.pending_s:
            return "pending", None
        if self.plan.never_finish or now < self.created + self.pending_s + self.in_progress_s:
            return "in_progress", None
        return self.plan.outcome, self._error(self.plan.outcome)

    def _error(self, status: str) -> str | None:
        if status not in ("failed", "cancelled", "expired"):
            return None
        if self.plan.error is not None:
            return self.plan.error
        return {
            "failed": "Video generation failed",
            "cancelled": "Job was cancelled",
            "expired": "Job exceeded maximum time to live",
        }[status]


class _Invalid(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.metadata, self.headers = status, message, metadata, dict(headers or {})


def error_body(status: int, message: str, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The OpenRouter error envelope (``code`` is the integer HTTP status)."""
    error: dict[str, Any] = {"code": status, "message": message}
    if metadata:
        error["metadata"] = dict(metadata)
    return {"error": error}


def _validation(message: str) -> _Invalid:
    funnel = {"routing_funnel": [{"step": "Initial Endpoints", "endpoint_count": 1}]}
    return _Invalid(400, message, metadata={**funnel, "failed_routing_step": "Validate Video Parameters"})


# -- server -----------------------------------------------------------------------------------


class FakeOpenRouter(FakeServer):
    """The fake server. Use as ``async with FakeOpenRouter(...) as fake:``.

    Args:
        api_key: the only key accepted (mutable as ``fake.api_key``).
        pending_s / in_progress_s: the default timeline of a job, in real seconds (short).
        catalogue: the ``/videos/models`` rows create validates against.
        deprecated_models: ids that answer 404 ``model_deprecated`` at create.
        balance_usd: when set, a create below the $1.00 floor gets the 402 floor answer.
        key_limit_remaining: ``limit_remaining`` in ``GET /key`` (None: no limit).
        signed_urls: completed jobs also carry signed ``urls`` + ``expires_at``.
        signed_url_ttl_s: how long a signed URL works.
        webhook_secret: sign deliveries (no header without it, as OpenRouter does).
        workspace_callback_url: the default callback for jobs without ``callback_url``.
        webhook_attempts: deliveries per event until the receiver answers 2xx.
        require_https_callbacks: refuse non-HTTPS ``callback_url`` as the real API does.
        shaped_clips: serve a clip of the asked duration, aspect ratio and resolution (as a real model
            does; end-to-end tests probe it) instead of the small 1 s sample.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        pending_s: float = 0.05,
        in_progress_s: float = 0.15,
        catalogue: Iterable[Mapping[str, Any]] = CATALOGUE,
        deprecated_models: Iterable[str] = (),
        balance_usd: float | None = None,
        key_limit_remaining: float | None = None,
        signed_urls: bool = False,
        signed_url_ttl_s: float = 3600.0,
        webhook_secret: str | None = None,
        workspace_callback_url: str | None = None,
        webhook_attempts: int = 3,
        require_https_callbacks: bool = False,
        shaped_clips: bool = False,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, outgoing=True)
        self.api_key = api_key
        self.pending_s = pending_s
        self.in_progress_s = in_progress_s
        self.models = {row["id"]: dict(row) for row in catalogue}
        self.deprecated_models = set(deprecated_models)
        self.balance_usd = balance_usd
        self.key_limit_remaining = key_limit_remaining
        self.signed_urls = signed_urls
        self.signed_url_ttl_s = signed_url_ttl_s
        self.webhook_secret = webhook_secret
        self.workspace_callback_url = workspace_callback_url
        self.webhook_attempts = webhook_attempts
        self.require_https_callbacks = require_https_callbacks
        self.shaped_clips = shaped_clips
        self.clock = clock
        #: Every request, in arrival order.
        self.requests: list[RecordedRequest] = []
        #: Every job, by id.
        self.jobs: dict[str, FakeJob] = {}
        #: Every webhook POST made (or lost), in order.
        self.deliveries: list[WebhookDelivery] = []
        self._plans: deque[JobPlan] = deque()
        self._injections: list[Injection] = []

    # -- lifecycle (start/stop: FakeServer) --

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_BODY_BYTES + (8 << 20))
        app.router.add_post("/api/v1/videos", self._create)
        app.router.add_get("/api/v1/videos/models", self._models)
        app.router.add_get("/api/v1/videos/{job_id}", self._retrieve)
        app.router.add_get("/api/v1/videos/{job_id}/content", self._content)
        app.router.add_get("/api/v1/key", self._key)
        app.router.add_get("/signed/{job_id}", self._signed)
        return app

    @property
    def base_url(self) -> str:
        """The API root to give a client: ``http://127.0.0.1:PORT/api/v1``."""
        return f"{self.root_url}/api/v1"

    # -- scripting API --

    def plan(self, **fields: Any) -> JobPlan:
        """Queues a ``JobPlan`` for the next created job (first in, first out)."""
        plan = JobPlan(**fields)
        self._plans.append(plan)
        return plan

    def inject(
        self,
        op: str,
        *,
        status: int | None = None,
        message: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        json: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        reset: bool = False,
        process: bool = False,
        times: int | None = 1,
    ) -> Injection:
        """Makes the next ``times`` requests of ``op`` misbehave (see ``Injection``).

        With ``status`` >= 400 and no ``json``/``body``, the answer is the error envelope with
        ``message`` (a stock one per status) and ``metadata``.
        """
        if op != "*" and op not in OPS:
            raise ValueError(f"unknown op {op!r}; one of {', '.join(OPS)} or '*'")
        if status is not None and status >= 400 and json is None and body is None:
            json = error_body(status, message or _DEFAULT_MESSAGES.get(status, f"HTTP {status}"), metadata)
        injection = Injection(
            op, status, json, body, dict(headers or {}), delay=delay, reset=reset, process=process, times=times
        )
        self._injections.append(injection)
        return injection

    def no_credits(self, *, floor: bool = False, op: str = "create") -> Injection:
        """A 402: "Insufficient credits…" or, with ``floor``, the $1.00 balance-floor wording."""
        if floor:
            metadata = {"limit_source": "openrouter_key_limit", "remedy_hint": "Add credits or raise the key limit"}
            return self.inject(op, status=402, message=BALANCE_FLOOR_MESSAGE, metadata=metadata)
        return self.inject(op, status=402, message=NO_CREDITS_MESSAGE)

    def rate_limit(self, op: str = "create", *, retry_after: float | str | None = None, times: int = 1) -> Injection:
        """429 ``Rate limit exceeded`` (``error_type: rate_limit_exceeded``), with Retry-After when given."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        return self.inject(op, status=429, metadata={"error_type": "rate_limit_exceeded"}, headers=headers, times=times)

    def server_error(self, op: str = "create", *, status: int = 500, after_accept: bool = False) -> Injection:
        """A 5xx; with ``after_accept`` the job is created first (a retried POST would pay twice)."""
        return self.inject(op, status=status, process=after_accept)

    def finish(self, job_id: str) -> None:
        """Completes a job now (and sends its webhook)."""
        self._force(job_id, "completed", None)

    def fail(self, job_id: str, error: str = "Video generation failed", status: str = "failed") -> None:
        """Ends a job now as ``status`` with ``error`` (and sends its webhook)."""
        self._force(job_id, status, error)

    def expire_content(self, job_id: str) -> None:
        """``/content`` for this job answers 410 from now on."""
        self.jobs[job_id].content_gone = True

    def calls(self, op: str) -> list[RecordedRequest]:
        return [r for r in self.requests if op in ("*", r.op)]

    def count(self, op: str) -> int:
        return len(self.calls(op))

    async def wait_for_deliveries(self, count: int, *, timeout: float = 5.0) -> list[WebhookDelivery]:
        """Waits (polling with a deadline) until ``count`` webhook POSTs were made or lost."""
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.deliveries) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{len(self.deliveries)} webhook deliveries after {timeout}s, wanted {count}")
            await asyncio.sleep(0.01)
        return list(self.deliveries)

    # -- plumbing --

    @staticmethod
    def _op(request: web.Request) -> str:
        info = request.match_info
        if info.http_exception is not None or info.route.resource is None:
            return "unknown"
        table = {
            ("POST", "/api/v1/videos"): "create",
            ("GET", "/api/v1/videos/models"): "models",
            ("GET", "/api/v1/videos/{job_id}"): "retrieve",
            ("GET", "/api/v1/videos/{job_id}/content"): "content",
            ("GET", "/api/v1/key"): "key",
            ("GET", "/signed/{job_id}"): "signed",
        }
        return table.get((request.method, info.route.resource.canonical), "unknown")

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        op = self._op(request)
        record = RecordedRequest(
            op=op,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            at=self.clock(),
        )
        self.requests.append(record)
        request[_OP_KEY], request[_RECORD_KEY] = op, record
        try:
            if request.match_info.http_exception is not None:
                raise _Invalid(request.match_info.http_exception.status, "Not Found")
            if op not in ("models", "signed"):
                self._check_auth(request)
            injection = self._take_injection(op)
            if injection is None:
                return await handler(request)
            return await self._apply(injection, request, handler)
        except _Invalid as invalid:
            return web.json_response(
                error_body(invalid.status, invalid.message, invalid.metadata),
                status=invalid.status,
                headers=invalid.headers,
            )

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        if not header:
            raise _Invalid(401, "No cookie auth credentials found")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or key.strip() != self.api_key:
            raise _Invalid(401, "User not found.")

    def _take_injection(self, op: str) -> Injection | None:
        for injection in self._injections:
            if injection.op in (op, "*") and not injection.spent:
                injection.hits += 1
                return injection
        return None

    async def _apply(self, injection: Injection, request: web.Request, handler: Callable[..., Any]) -> Any:
        real: web.StreamResponse | None = None
        if injection.process:
            with contextlib.suppress(_Invalid):
                real = await handler(request)
        if injection.delay:
            await asyncio.sleep(injection.delay)
        if injection.reset:
            reset_connection(request)
            return web.Response(status=500)  # never reaches the client
        if injection.status is None and injection.json is None and injection.body is None:
            return real if real is not None else await handler(request)
        status = injection.status or 200
        if injection.body is not None:
            return web.Response(status=status, body=injection.body, headers=injection.headers)
        return web.json_response(injection.json, status=status, headers=injection.headers)

    # -- handlers --

    async def _create(self, request: web.Request) -> web.Response:
        if (request.content_length or 0) > MAX_BODY_BYTES:  # checked before the body is read
            raise _Invalid(413, "Request body too large", metadata={"error_type": "payload_too_large"})
        if request.content_type != "application/json":
            raise _Invalid(400, "Content-Type must be application/json")
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _Invalid(400, "Invalid JSON body") from None
        request[_RECORD_KEY].json = body
        if not isinstance(body, dict):
            raise _Invalid(400, "The request body must be a JSON object")
        model = self._validate(body)
        if self.balance_usd is not None and self.balance_usd < 1.0:
            raise _Invalid(402, BALANCE_FLOOR_MESSAGE, metadata={"limit_source": "openrouter_balance"})
        plan = self._plans.popleft() if self._plans else JobPlan()
        job_id = f"gen-vid-{int(time.time())}-{''.join(secrets.choice(_ALNUM) for _ in range(20))}"
        job = FakeJob(
            id=job_id,
            body=body,
            model=model,
            created=self.clock(),
            plan=plan,
            pending_s=self.pending_s if plan.pending_s is None else plan.pending_s,
            in_progress_s=self.in_progress_s if plan.in_progress_s is None else plan.in_progress_s,
            callback_url=body.get("callback_url") or self.workspace_callback_url,
        )
        self.jobs[job_id] = job
        terminal_at = job.terminal_at()
        if job.callback_url and terminal_at is not None:
            self._spawn(self._deliver_at(job, terminal_at))
        return web.json_response(
            {"id": job_id, "polling_url": self._polling_url(job_id), "status": "pending"}, status=202
        )

    def _validate(self, body: dict[str, Any]) -> dict[str, Any]:
        model_id = body.get("model")
        if not isinstance(model_id, str) or not model_id:
            raise _validation("model is required")
        if model_id in self.deprecated_models:
            availability = {"code": "model_deprecated", "retryable": False}
            raise _Invalid(404, f"{model_id} is deprecated", metadata={"availability": availability})
        model = self.models.get(model_id)
        if model is None:
            raise _Invalid(400, f"{model_id} is not a valid model ID")
        frames = body.get("frame_images") or []
        references = body.get("input_references") or []
        if not isinstance(frames, list) or not isinstance(references, list):
            raise _validation("frame_images and input_references must be arrays")
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise _validation("prompt must be a string")
        if not prompt and not frames and not references:
            vendor = model_id.split("/", 1)[0]
            raise _validation(f"{vendor} video generations require a prompt when no image input is provided")
        duration = body.get("duration")
        if duration is not None:
            if not isinstance(duration, int) or isinstance(duration, bool):
                raise _validation("duration must be an integer")
            if duration not in model["supported_durations"]:
                listed = ", ".join(str(d) for d in model["supported_durations"])
                raise _validation(
                    f"Duration {duration}s is not supported for this model. Supported durations: {listed}s"
                )
        for key, label in (("resolution", "Resolution"), ("aspect_ratio", "Aspect ratio")):
            value = body.get(key)
            allowed = model["supported_resolutions" if key == "resolution" else "supported_aspect_ratios"]
            if value is not None and value not in allowed:
                plural = "resolutions" if key == "resolution" else "aspect ratios"
                raise _validation(
                    f"{label} {value} is not supported for this model. Supported {plural}: {', '.join(allowed)}"
                )
        size = body.get("size")
        if size is not None and model["supported_sizes"] is not None and size not in model["supported_sizes"]:
            raise _validation(f"Size {size} is not supported for this model")
        if "generate_audio" in body and not isinstance(body["generate_audio"], bool):
            raise _validation("generate_audio must be a boolean")
        if "seed" in body and (not isinstance(body["seed"], int) or isinstance(body["seed"], bool)):
            raise _validation("seed must be an integer")
        for index, frame in enumerate(frames):
            where = f"frame_images[{index}]"
            if not isinstance(frame, dict) or frame.get("type") != "image_url":
                raise _validation(f"Invalid frame image: {where} must be an image_url part")
            _check_url(frame.get("image_url"), f"{where}.image_url.url", image=True)
            if frame.get("frame_type") not in model["supported_frame_images"]:
                raise _validation(f"Frame type {frame.get('frame_type')} is not supported for this model")
        for index, reference in enumerate(references):
            kind = reference.get("type") if isinstance(reference, dict) else None
            if kind not in ("image_url", "video_url", "audio_url"):
                raise _validation(f"Invalid reference: input_references[{index}] has an unknown type")
            _check_url(reference.get(kind), f"input_references[{index}].{kind}.url", image=kind == "image_url")
        callback = body.get("callback_url")
        if callback is not None:
            if not isinstance(callback, str) or not callback.startswith(("https://", "http://")):
                raise _validation("callback_url must be a URL")
            if self.require_https_callbacks and not callback.startswith("https://"):
                raise _validation("callback_url must be an HTTPS URL")
        previous = body.get("previous_job_id")
        if previous is not None:
            source = self.jobs.get(previous)
            if source is None:
                raise _Invalid(404, f"Job {previous} not found")
            if source.model["id"] != model_id:
                raise _validation("previous_job_id must use the same model as the previous job")
            if source.state(self.clock())[0] != "completed":
                raise _Invalid(409, f"Job {previous} is not completed")
        return model

    async def _retrieve(self, request: web.Request) -> web.Response:
        job = self._find(request.match_info["job_id"])
        job.polls += 1
        return web.json_response(self._job_json(job))

    def _job_json(self, job: FakeJob) -> dict[str, Any]:
        status, error = job.state(self.clock())
        moderated = error is not None and "content policy" in error.lower()
        answer: dict[str, Any] = {
            "id": job.id,
            "generation_id": None if moderated else job.id,
            "polling_url": self._polling_url(job.id),
            "status": status,
        }
        if status == "completed":
            answer["unsigned_urls"] = [f"{self.base_url}/videos/{job.id}/content?index=0"]
            seconds = int(job.body.get("duration") or 4)
            cost = job.plan.cost if job.plan.cost is not None else round(0.01 * seconds, 4)
            answer["usage"] = {"cost": cost, "is_byok": False}
            if self.signed_urls:
                expires = int(job.created + self.signed_url_ttl_s)
                answer["urls"] = [f"{self.root_url}/signed/{job.id}?token={job.token}&expires={expires}"]
                answer["expires_at"] = expires
        elif error is not None:
            answer["error"] = error
        if status in _TERMINAL and job.callback_url and job.plan.statuses is not None and not job.webhook_sent:
            self._spawn(self._deliver(job))  # scripted jobs notify at the poll that ends them
        return answer

    async def _content(self, request: web.Request) -> web.StreamResponse:
        job = self._find(request.match_info["job_id"])
        return await self._serve(request, job)

    async def _signed(self, request: web.Request) -> web.StreamResponse:
        job = self._find(request.match_info["job_id"])
        expires = int(job.created + self.signed_url_ttl_s)
        if not hmac.compare_digest(request.query.get("token", ""), job.token):
            raise _Invalid(403, "Invalid signature")
        if self.clock() > expires:
            raise _Invalid(403, "URL expired")
        return await self._serve(request, job)

    async def _serve(self, request: web.Request, job: FakeJob) -> web.StreamResponse:
        raw_index = request.query.get("index", "0")
        if not raw_index.isdigit():
            raise _Invalid(400, "index must be a non-negative integer")
        status, _ = job.state(self.clock())
        if int(raw_index) != 0:
            raise _Invalid(400, f"Video index {raw_index} out of range (1 videos available)")
        if job.content_gone:
            raise _Invalid(410, "Video content is no longer available")
        if status != "completed":
            raise _Invalid(409, f"Video generation is not complete (status: {status})")
        if job.plan.content is not None:
            data = job.plan.content
        elif self.shaped_clips:
            data = await asyncio.to_thread(shaped_mp4, job.body, audio=job.audio)
        else:
            data = await asyncio.to_thread(sample_mp4, audio=job.audio)
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.enable_chunked_encoding()  # as recorded: chunked, no Content-Length, Range ignored
        await response.prepare(request)
        for start in range(0, len(data), _STREAM_CHUNK):
            await response.write(data[start : start + _STREAM_CHUNK])
        await response.write_eof()
        return response

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": list(self.models.values())})

    async def _key(self, request: web.Request) -> web.Response:
        remaining = self.key_limit_remaining
        data = {
            "label": self.api_key[:12] + "...",
            "limit": None if remaining is None else remaining + 1.0,
            "limit_reset": None,
            "limit_remaining": remaining,
            "usage": 1.0,
            "usage_daily": 0.0,
            "is_free_tier": False,
        }
        return web.json_response({"data": data})

    def _find(self, job_id: str) -> FakeJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise _Invalid(404, f"Job {job_id} not found")
        return job

    def _polling_url(self, job_id: str) -> str:
        return f"{self.base_url}/videos/{job_id}"

    # -- webhooks --

    def _force(self, job_id: str, status: str, error: str | None) -> None:
        job = self.jobs[job_id]
        job.forced = (status, error)
        if job.callback_url and not job.webhook_sent:
            self._spawn(self._deliver(job))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver_at(self, job: FakeJob, when: float) -> None:
        await asyncio.sleep(max(0.0, when - self.clock()))
        if job.forced is None:
            await self._deliver(job)

    def event(self, job: FakeJob) -> dict[str, Any]:
        """The webhook envelope for a job's current (terminal) state."""
        status, error = job.state(self.clock())
        moderated = error is not None and "content policy" in error.lower()
        data: dict[str, Any] = {
            "id": job.id,
            "status": status,
            "generation_id": None if moderated else job.id,
            "model": job.model["id"],
        }
        if status == "completed":
            data["unsigned_urls"] = [f"{self.base_url}/videos/{job.id}/content?index=0"]
            data["usage"] = self._job_json(job)["usage"]
        elif error is not None:
            data["error"] = error
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.clock()))
        return {"type": f"video.generation.{status}", "created_at": created, "data": data}

    async def _deliver(self, job: FakeJob) -> None:
        if job.webhook_sent or not job.callback_url:
            return
        job.webhook_sent = True
        event = self.event(job)
        body = json.dumps(event).encode()
        headers = {
            "Content-Type": "application/json",
            "X-OpenRouter-Idempotency-Key": f"{job.id}-{event['data']['status']}",
        }
        mode = job.plan.webhook
        if self.webhook_secret:
            stamp = int(time.time()) - (3600 if mode == "old_timestamp" else 0)
            secret = "not-the-secret" if mode == "bad_signature" else self.webhook_secret
            headers |= sign_openrouter_webhook(secret, body, stamp)
        if mode == "lost":
            self.deliveries.append(WebhookDelivery(job.callback_url, headers, body, 1, None, lost=True))
            return
        for _ in range(2 if mode == "repeat" else 1):
            await self._post_with_retries(job.callback_url, headers, body)

    async def _post_with_retries(self, url: str, headers: dict[str, str], body: bytes) -> None:
        assert self._session is not None
        for attempt in range(1, self.webhook_attempts + 1):
            status: int | None = None
            try:
                async with self._session.post(url, data=body, headers=headers) as response:
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = None
            self.deliveries.append(WebhookDelivery(url, dict(headers), body, attempt, status))
            if status is not None and 200 <= status < 300:
                return
            await asyncio.sleep(0.05 * 2 ** (attempt - 1))


def _check_url(part: Any, where: str, *, image: bool) -> None:
    url = part.get("url") if isinstance(part, dict) else None
    if not isinstance(url, str) or not url:
        raise _validation(f"Invalid reference URL: {where}: a URL is required")
    if url.startswith("https://"):
        return
    if image and url.startswith("data:image/") and ";base64," in url:
        return
    raise _validation(f"Invalid reference URL: {where}: Only HTTPS URLs are allowed")
