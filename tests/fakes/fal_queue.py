"""A fake fal.ai queue, public CDN and webhook JWKS on 127.0.0.1, for tests and benchmarks.

It follows §11 of ``/work/shared/reference/fal-queue-api.md``, traps included:

- ``POST /{model_id}`` (any owner, ``workflows/``/``comfy/`` namespaces) with ``Authorization: Key
  <key>`` (the key holds a colon and is compared whole) answers 200 ``{status: IN_QUEUE, request_id,
  gateway_request_id, response_url, status_url, cancel_url, queue_position}``. The URLs use owner/app
  only; asking under the endpoint's sub-path is a 404 (trap 1). Inputs are checked per family (Veo
  ``"8s"``, Kling ``"5"``, LTX an integer, the image field per family) and refused with fal's 422
  ``detail`` list, so a wrong mapping fails loudly.
- Status: 202 ``IN_QUEUE`` + 0-based ``queue_position`` (earlier requests of the same app still
  queued), 202 ``IN_PROGRESS`` + ``logs`` (a list only with ``logs=1|true``, else null), 200
  ``COMPLETED`` + ``logs`` + ``metrics`` (+ ``error``/``error_type`` on failure: trap 2). ``/status/stream``
  sends the same as Server-Sent Events until COMPLETED.
- Result: 200 ``{video: {url, content_type, file_name, file_size}, seed}``, the URL on the fake's own
  public CDN route (no auth; a real H.264 MP4 of the asked size and length, with an AAC track unless
  the model is silent or ``generate_audio`` was false), or the failure's own status: 422 ``detail``
  list (content policy with ``categories``, or validation), 504/503 ``{detail, error_type}`` +
  ``X-Fal-Error-Type``, 500. Before completion: 400 (UNVERIFIED at fal).
- Cancel: 202 ``CANCELLATION_REQUESTED`` (queued or running; the request then completes with an
  error, UNVERIFIED at fal), 400 ``ALREADY_COMPLETED``, 404 ``NOT_FOUND``.
- Faults (``inject`` and helpers): 429 with ``Retry-After``, an nginx 503 without
  ``x-fal-request-id``, a 500 with it (optionally after queueing the request), 401 for a wrong key
  (just use another key), 402/403 "exhausted balance", connection resets and delays.
- Webhooks: with ``?fal_webhook=<url>`` the fake POSTs the OK/ERROR body on completion, signed
  ED25519 over ``rid\\nuid\\nts\\nsha256hex(body)`` (hex signature) with the key published at
  ``/.well-known/jwks.json`` beside a decoy; knobs for a bad signature, clock skew, a lost webhook,
  repeats and retries on non-2xx. Webhooks only go to loopback addresses.

Every request is recorded (``calls``) with its method, path, query, headers and JSON body.

Quick start::

    async with FakeFalQueue(render_seconds=0.2) as fal:
        provider = FalProvider(api_key=fal.api_key, queue_url=fal.queue_url)
        video = await provider.create(spec)
        fal.plan(outcome="content_policy")          # the next submitted request fails so
        fal.rate_limit(retry_after=3)               # the next submit gets a 429
        await fal.wait_webhooks(1)
        assert all("authorization" not in c.headers for c in fal.calls("cdn"))

Timing runs on the real (monotonic) clock so webhooks fire by themselves: requests are queued for
``queue_seconds`` and run for ``render_seconds`` (per request through ``plan``), or are held until
``release``/``finish`` when planned with ``hold=True``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.fakes._server import FakeServer, reset_connection, synthetic_mp4_head

DEFAULT_API_KEY = "fal-key-id-1234:fal-key-secret-abcd"
DEFAULT_USER_ID = "fal-user-reelbot-test"
OPS = ("submit", "status", "stream", "result", "cancel", "cdn", "jwks")
OUTCOMES = ("ok", "content_policy", "validation", "timeout", "runner", "app_error", "no_video")
NAMESPACES = ("workflows", "comfy")
CONTENT_POLICY_MSG = "The content was flagged by a content checker."
BALANCE_MSG = "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."
NGINX_503 = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center>"
    b"<h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_RECORD_KEY = web.RequestKey("fal_fake_record", "FalCall")
_NO_FAL_ID = web.RequestKey("fal_fake_no_request_id", bool)
_REQUEST_ID = web.RequestKey("fal_fake_request_id", str)
_STREAM_CHUNK = 256 << 10


# -- webhook signing ------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_jwk(key: Ed25519PrivateKey, kid: str) -> dict[str, str]:
    """The OKP/Ed25519 JWK of ``key``'s public half, as fal's JWKS lists it."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw), "kid": kid, "use": "sig", "alg": "EdDSA"}


def sign_fal_webhook(
    private_key: Ed25519PrivateKey, request_id: str, user_id: str, timestamp: int | str, body: bytes
) -> dict[str, str]:
    """The four ``X-Fal-Webhook-*`` headers fal sends with ``body``.

    The signature is ED25519 over ``request_id + "\\n" + user_id + "\\n" + timestamp + "\\n" +
    sha256_hex(body)`` (UTF-8), written as 128 hex characters.
    """
    message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": str(timestamp),
        "X-Fal-Webhook-Signature": private_key.sign(message).hex(),
    }


# -- media ----------------------------------------------------------------------------------------

_MEDIA_LOCK = threading.Lock()
_CLIPS: dict[tuple[int, int, int, bool, int], bytes] = {}


def encode_clip(width: int, height: int, seconds: int, *, audio: bool, fps: int = 8) -> bytes:
    """A real H.264 MP4 (+ AAC when ``audio``) of exactly this size and length, cached per process."""
    key = (width, height, seconds, audio, fps)
    with _MEDIA_LOCK:
        cached = _CLIPS.get(key)
    if cached is not None:
        return cached
    from tests.media_factory import make_clip

    with tempfile.TemporaryDirectory() as tmp:
        path = make_clip(Path(tmp) / "clip.mp4", seconds=seconds, width=width, height=height, fps=fps, audio=audio)
        data = path.read_bytes()
    with _MEDIA_LOCK:
        _CLIPS[key] = data
    return data


_SHORT_SIDES = {"480p": 480, "580p": 580, "720p": 720, "1080p": 1080, "1440p": 1440, "2160p": 2160, "4k": 2160}


def clip_shape(family: str, body: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(width, height, seconds)`` a model would render for these inputs (even sizes, H.264-friendly)."""
    duration = body.get("duration")
    seconds = 5
    if isinstance(duration, int) and not isinstance(duration, bool):
        seconds = duration
    elif isinstance(duration, str) and duration.rstrip("s").isdigit():
        seconds = int(duration.rstrip("s"))
    short = _SHORT_SIDES.get(str(body.get("resolution", "")), 1080 if family == "ltx" else 720)
    aspect = str(body.get("aspect_ratio", "16:9"))
    if aspect in ("auto", "") or ":" not in aspect:
        aspect = "16:9"
    w, h = (int(part) for part in aspect.split(":"))
    if w >= h:
        height, width = short, round(short * w / h)
    else:
        width, height = short, round(short * h / w)
    return width // 2 * 2, height // 2 * 2, seconds


# -- input checks -----------------------------------------------------------------------------------


def family_of(model_id: str) -> str:
    lowered = model_id.lower()
    for name in ("veo", "kling", "seedance", "ltx", "wan"):
        if name in lowered:
            return name
    return ""


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("data:image/", "https://", "http://"))


def _one_of(*allowed: Any) -> Callable[[Any], bool]:
    return lambda value: type(value) is type(allowed[0]) and value in allowed


_ASPECTS = ("21:9", "16:9", "4:3", "1:1", "3:4", "9:16", "auto")
# field -> check, per family (reference §9; (M) fields as read on fal's model pages, the rest as reported).
SCHEMAS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "veo": {
        "duration": _one_of("4s", "6s", "8s"),
        "aspect_ratio": _one_of("16:9", "9:16", "auto"),
        "resolution": _one_of("720p", "1080p", "4k"),
        "generate_audio": lambda v: isinstance(v, bool),
        "negative_prompt": _is_str,
        "seed": _is_int,
        "image_url": _image,
        "image_urls": lambda v: isinstance(v, list) and bool(v) and all(_image(i) for i in v),
    },
    "kling": {
        "duration": _one_of(*(str(n) for n in range(3, 16))),
        "aspect_ratio": _one_of("16:9", "9:16", "1:1"),
        "generate_audio": lambda v: isinstance(v, bool),
        "negative_prompt": _is_str,
        "cfg_scale": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "image_url": _image,
        "start_image_url": _image,
        "end_image_url": _image,
    },
    "seedance": {
        "duration": _one_of(*(str(n) for n in range(2, 16))),
        "resolution": _one_of("480p", "720p", "1080p"),
        "aspect_ratio": _one_of(*_ASPECTS),
        "generate_audio": lambda v: isinstance(v, bool),
        "seed": _is_int,
        "image_url": _image,
    },
    "ltx": {
        "duration": lambda v: _is_int(v) and 6 <= v <= 20,
        "resolution": _one_of("1080p", "1440p", "2160p"),
        "fps": _is_int,
        "generate_audio": lambda v: isinstance(v, bool),
        "image_url": _image,
    },
    "wan": {
        "resolution": _one_of("480p", "580p", "720p"),
        "aspect_ratio": _one_of("16:9", "9:16", "1:1", "auto"),
        "negative_prompt": _is_str,
        "seed": _is_int,
        "num_frames": _is_int,
        "frames_per_second": _is_int,
        "enable_safety_checker": lambda v: isinstance(v, bool),
        "image_url": _image,
    },
}
SILENT_FAMILIES = frozenset({"wan"})


def required_image_field(family: str, model_id: str) -> str | None:
    """The field an image-to-video or reference-to-video endpoint requires."""
    if "reference-to-video" in model_id:
        return "image_urls"
    if "image-to-video" in model_id:
        return "start_image_url" if family == "kling" and "/v3/" in model_id else "image_url"
    return None


def validate_input(model_id: str, body: Any) -> list[dict[str, Any]]:
    """fal-style 422 error objects for a body the model would refuse (empty when it is fine)."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type", "input": body}]
    errors: list[dict[str, Any]] = []
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        errors.append({"loc": ["body", "prompt"], "msg": "Field required", "type": "missing", "input": body})
    family = family_of(model_id)
    schema = SCHEMAS.get(family, {})
    for name, check in schema.items():
        if name in body and not check(body[name]):
            errors.append(
                {
                    "loc": ["body", name],
                    "msg": f"Input should be valid for {name}",
                    "type": "literal_error",
                    "input": body[name],
                }
            )
    needed = required_image_field(family, model_id)
    if needed and needed not in body:
        errors.append({"loc": ["body", needed], "msg": "Field required", "type": "missing", "input": body})
    return errors


# -- data -----------------------------------------------------------------------------------------


@dataclass
class FalPlan:
    """How the next submitted request behaves; ``None`` fields use the server's defaults.

    Attributes:
        queue_seconds / render_seconds: time in IN_QUEUE and IN_PROGRESS.
        hold: stay IN_QUEUE until ``release`` (or ``finish``).
        hold_render: once running, stay IN_PROGRESS until ``finish``.
        outcome: one of ``OUTCOMES``.
        categories: content-policy categories for ``content_policy``.
        audio: force the clip's audio track on or off.
        clip_size: ``(width, height, seconds)`` of the served clip instead of what the inputs ask.
        video_bytes: serve exactly these bytes from the CDN.
        video_size: serve an MP4-looking body of this many bytes (streamed; for size caps).
        chunked: send ``video_size`` without a Content-Length (the client must count).
        content_type: the CDN's Content-Type.
        webhook_drop: never deliver this request's webhook (a lost webhook).
        cdn_pause: with ``video_bytes``, the CDN sends the first half, waits for this event, then the rest.
        cdn_cut_once: with ``video_bytes``, the first CDN answer sends half the declared bytes and drops
            the connection; later ones are whole.
        cdn_rate: with ``video_bytes``, the CDN sends no faster than this many bytes per second (a
            shaped link; benchmarks).
    """

    queue_seconds: float | None = None
    render_seconds: float | None = None
    hold: bool = False
    hold_render: bool = False
    outcome: str = "ok"
    categories: tuple[str, ...] = ("violence",)
    audio: bool | None = None
    clip_size: tuple[int, int, int] | None = None
    video_bytes: bytes | None = None
    video_size: int | None = None
    content_type: str = "video/mp4"
    chunked: bool = False
    webhook_drop: bool = False
    cdn_pause: asyncio.Event | None = None
    cdn_cut_once: bool = False
    cdn_rate: float | None = None

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}")


@dataclass
class FalCall:
    """One HTTP request as the fake saw it (header names lower-cased)."""

    op: str
    method: str
    path: str
    query: dict[str, str]
    raw_query: str
    headers: dict[str, str]
    json: Any = None
    at: float = 0.0


@dataclass
class FalInjection:
    """A scripted misbehaviour for the next ``times`` requests of ``op`` (``None``: forever).

    With ``process`` the real handler runs first (a submit really queues); then ``delay``; then
    ``reset`` drops the connection, or the injected answer is sent. ``fal_request_id=False`` marks an
    answer from the ingress (no ``x-fal-request-id``).
    """

    op: str
    status: int = 500
    json: Any = None
    body: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    fal_request_id: bool = True
    process: bool = False
    reset: bool = False
    delay: float = 0.0
    times: int | None = 1
    hits: int = 0

    @property
    def spent(self) -> bool:
        return self.times is not None and self.hits >= self.times


@dataclass
class WebhookDelivery:
    """One webhook POST attempt: what was sent and what the receiver answered (None: no answer)."""

    url: str
    request_id: str
    attempt: int
    headers: dict[str, str]
    body: bytes
    status: int | None
    error: str | None = None


@dataclass
class FalRequest:
    """A queued request; its status follows the monotonic clock and the plan."""

    request_id: str
    model_id: str
    app: str
    input: dict[str, Any]
    webhook_url: str | None
    created: float
    seq: int
    plan: FalPlan
    render_seconds: float
    start_at: float | None
    done_at: float | None
    cdn_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancelled: bool = False
    seed: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def family(self) -> str:
        return family_of(self.model_id)

    def state(self, now: float) -> str:
        if self.start_at is None or now < self.start_at:
            return "IN_QUEUE"
        if self.done_at is None or now < self.done_at:
            return "IN_PROGRESS"
        return "COMPLETED"

    @property
    def outcome(self) -> str:
        return "cancelled" if self.cancelled else self.plan.outcome


# -- server ---------------------------------------------------------------------------------------


class FakeFalQueue(FakeServer):
    """The fake. Use as ``async with FakeFalQueue(...) as fal:``.

    Args:
        api_key: the only key accepted (``Authorization: Key <key>``); mutable.
        user_id: the fal user id webhooks are signed for.
        queue_seconds / render_seconds: default time in IN_QUEUE / IN_PROGRESS.
        moderated_terms: prompts containing one of these (case-insensitive) end with a content
            policy failure (COMPLETED + result 422), unless ``moderate_at_submit`` refuses them at
            submit with the same 422.
        clip_fps: the frame rate of served clips.
    """

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        user_id: str = DEFAULT_USER_ID,
        queue_seconds: float = 0.0,
        render_seconds: float = 0.2,
        moderated_terms: tuple[str, ...] = (),
        moderate_at_submit: bool = False,
        clip_fps: int = 8,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port, outgoing=True)
        self.api_key = api_key
        self.user_id = user_id
        self.queue_seconds = queue_seconds
        self.render_seconds = render_seconds
        self.moderated_terms = tuple(term.lower() for term in moderated_terms)
        self.moderate_at_submit = moderate_at_submit
        self.clip_fps = clip_fps
        self.signing_key = Ed25519PrivateKey.generate()
        self.decoy_key = Ed25519PrivateKey.generate()
        self.rogue_key = Ed25519PrivateKey.generate()  # never published: signs "bad" webhooks
        #: The root written into response/status/cancel URLs (None: this server); for clients that must not follow
        #: URLs off their configured origin.
        self.advertised_root: str | None = None
        #: Webhook knobs (read at delivery time).
        self.webhook_bad_signature = False
        self.webhook_skew_seconds = 0.0
        self.webhook_repeat = 0
        self.webhook_retries = 3
        self.webhook_retry_delay = 0.05
        #: Every request, in arrival order.
        self.requests: list[FalCall] = []
        #: Every queued request, by id.
        self.queued: dict[str, FalRequest] = {}
        #: Every webhook attempt, in order.
        self.webhooks: list[WebhookDelivery] = []
        self._webhook_event = asyncio.Event()
        self._plans: list[FalPlan] = []
        self._injections: list[FalInjection] = []
        self._seq = 0

    # -- lifecycle (start/stop: FakeServer) --

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 << 20)
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        app.router.add_get("/cdn/files/{token}/{name}", self._cdn)
        app.router.add_get(r"/{app:.+}/requests/{rid}/status/stream", self._stream)
        app.router.add_get(r"/{app:.+}/requests/{rid}/status", self._status)
        app.router.add_put(r"/{app:.+}/requests/{rid}/cancel", self._cancel)
        app.router.add_get(r"/{app:.+}/requests/{rid}", self._result)
        app.router.add_post(r"/{model:.+}", self._submit)
        app.on_response_prepare.append(self._on_prepare)
        return app

    @property
    def queue_url(self) -> str:
        """The queue root to give a client (``http://127.0.0.1:PORT``)."""
        return self.root_url

    @property
    def jwks_url(self) -> str:
        return f"{self.queue_url}/.well-known/jwks.json"

    # -- scripting --

    def plan(self, **fields: Any) -> FalPlan:
        """Queues a ``FalPlan`` for the next submitted request (first in, first out)."""
        plan = FalPlan(**fields)
        self._plans.append(plan)
        return plan

    def inject(
        self,
        op: str,
        *,
        status: int = 500,
        json: Any = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        fal_request_id: bool = True,
        process: bool = False,
        reset: bool = False,
        delay: float = 0.0,
        times: int | None = 1,
    ) -> FalInjection:
        """Makes the next ``times`` requests of ``op`` misbehave (see ``FalInjection``)."""
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; one of {OPS}")
        injection = FalInjection(
            op=op,
            status=status,
            json=json if json is not None or body is not None else {"detail": f"HTTP {status}"},
            body=body,
            content_type=content_type,
            headers=dict(headers or {}),
            fal_request_id=fal_request_id,
            process=process,
            reset=reset,
            delay=delay,
            times=times,
        )
        self._injections.append(injection)
        return injection

    def rate_limit(self, *, retry_after: float | str | None = 2, times: int = 1) -> FalInjection:
        """429 on submit (over the key's concurrent-request limit), with ``Retry-After`` when given."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        detail = {"detail": "Too many concurrent requests for this key. Please retry later."}
        return self.inject("submit", status=429, json=detail, headers=headers, times=times)

    def ingress_error(self, op: str = "submit", *, status: int = 503, times: int = 1) -> FalInjection:
        """An nginx error page from the ingress: no ``x-fal-request-id``, nothing queued."""
        return self.inject(
            op, status=status, body=NGINX_503, content_type="text/html", fal_request_id=False, times=times
        )

    def app_error(self, op: str = "submit", *, process: bool = True, times: int = 1) -> FalInjection:
        """A 500 from fal's own servers (with ``x-fal-request-id``); by default the submit really queued."""
        return self.inject(op, status=500, json={"detail": "Internal Server Error"}, process=process, times=times)

    def exhausted_balance(self, op: str = "submit", *, status: int = 403, times: int = 1) -> FalInjection:
        return self.inject(op, status=status, json={"detail": BALANCE_MSG}, times=times)

    def release(self, request_id: str) -> None:
        """Starts a held request now."""
        request = self.queued[request_id]
        now = time.monotonic()
        request.start_at = now
        request.done_at = None if request.plan.hold_render else now + request.render_seconds
        request.changed.set()

    def finish(self, request_id: str) -> None:
        """Completes a request now (with its planned outcome)."""
        request = self.queued[request_id]
        now = time.monotonic()
        if request.start_at is None or request.start_at > now:
            request.start_at = now
        request.done_at = now
        request.changed.set()

    def calls(self, op: str = "*") -> list[FalCall]:
        return [call for call in self.requests if op in ("*", call.op)]

    def count(self, op: str = "*") -> int:
        return len(self.calls(op))

    async def wait_webhooks(self, count: int, *, timeout: float = 5.0) -> list[WebhookDelivery]:
        """Waits until ``count`` webhook attempts were made (a condition wait, bounded)."""
        async with asyncio.timeout(timeout):
            while len(self.webhooks) < count:
                self._webhook_event.clear()
                await self._webhook_event.wait()
        return list(self.webhooks)

    async def wait_state(self, request_id: str, state: str, *, timeout: float = 5.0) -> None:
        """Waits until a request reaches ``state`` on the fake's clock (polling the clock, bounded)."""
        async with asyncio.timeout(timeout):
            while self.queued[request_id].state(time.monotonic()) != state:
                await asyncio.sleep(0.01)

    # -- plumbing --

    def _op(self, request: web.Request) -> str:
        info = request.match_info
        if info.http_exception is not None or info.route.resource is None:
            return "unknown"
        handler = info.route.handler
        table = {
            self._submit: "submit",
            self._status: "status",
            self._stream: "stream",
            self._result: "result",
            self._cancel: "cancel",
            self._cdn: "cdn",
            self._jwks: "jwks",
        }
        for method, op in table.items():
            if handler == method:
                return op
        return "unknown"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        op = self._op(request)
        body: Any = None
        if request.body_exists and request.content_type == "application/json":
            try:
                body = await request.json()
            except ValueError:
                body = None
        record = FalCall(
            op=op,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            raw_query=request.raw_path.partition("?")[2],  # as sent (yarl decodes query_string)
            headers={k.lower(): v for k, v in request.headers.items()},
            json=body,
            at=time.monotonic(),
        )
        self.requests.append(record)
        request[_RECORD_KEY] = record
        if request.match_info.http_exception is not None:
            return web.json_response({"detail": "Not Found"}, status=404)
        if op not in ("cdn", "jwks"):
            header = request.headers.get("Authorization", "")
            scheme, _, key = header.partition(" ")
            if scheme != "Key" or key != self.api_key:
                detail = "No user found for Key ID and Secret" if header else "Missing credentials"
                return web.json_response({"detail": detail}, status=401)
        injection = next((i for i in self._injections if i.op == op and not i.spent), None)
        if injection is None:
            return await handler(request)
        injection.hits += 1
        if injection.process:
            await handler(request)
        if injection.delay:
            await asyncio.sleep(injection.delay)
        if injection.reset:
            reset_connection(request)
            return web.Response(status=500)
        if not injection.fal_request_id:
            request[_NO_FAL_ID] = True
        if injection.body is not None:
            return web.Response(
                status=injection.status,
                body=injection.body,
                headers=injection.headers,
                content_type=injection.content_type,
            )
        return web.json_response(injection.json, status=injection.status, headers=injection.headers)

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        if request.get(_NO_FAL_ID) or request.get(_RECORD_KEY) is None:
            return
        if request[_RECORD_KEY].op in ("cdn", "jwks"):
            return
        response.headers.setdefault("x-fal-request-id", request.get(_REQUEST_ID, str(uuid.uuid4())))

    def _urls(self, request: FalRequest) -> dict[str, str]:
        base = f"{self.advertised_root or self.queue_url}/{request.app}/requests/{request.request_id}"
        return {"response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"}

    def _find(self, request: web.Request) -> FalRequest | None:
        found = self.queued.get(request.match_info["rid"])
        if found is None or found.app != request.match_info["app"]:
            return None  # unknown, or asked under the endpoint's sub-path (trap 1)
        request[_REQUEST_ID] = found.request_id
        return found

    def _position(self, target: FalRequest, now: float) -> int:
        return sum(
            1
            for other in self.queued.values()
            if other.app == target.app and other.seq < target.seq and other.state(now) == "IN_QUEUE"
        )

    # -- handlers --

    async def _submit(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model"].strip("/")
        parts = model_id.split("/")
        needed = 3 if parts[0] in NAMESPACES else 2
        if len(parts) < needed:
            return web.json_response({"detail": f"Application '{model_id}' not found"}, status=404)
        body = request[_RECORD_KEY].json
        errors = validate_input(model_id, body)
        if errors:
            return web.json_response({"detail": errors}, status=422)
        prompt = str(body.get("prompt", "")).lower()
        moderated = any(term in prompt for term in self.moderated_terms)
        if moderated and self.moderate_at_submit:
            return web.json_response({"detail": [self._policy_error(body, ("violence",))]}, status=422)
        plan = self._plans.pop(0) if self._plans else FalPlan()
        if moderated:
            plan.outcome = "content_policy"
        now = time.monotonic()
        queue_s = self.queue_seconds if plan.queue_seconds is None else plan.queue_seconds
        render_s = self.render_seconds if plan.render_seconds is None else plan.render_seconds
        start_at = None if plan.hold else now + queue_s
        self._seq += 1
        fal_request = FalRequest(
            request_id=str(uuid.uuid4()),
            model_id=model_id,
            app="/".join(parts[:needed]),
            input=body,
            webhook_url=request.query.get("fal_webhook"),
            created=now,
            seq=self._seq,
            plan=plan,
            render_seconds=render_s,
            start_at=start_at,
            done_at=None if start_at is None or plan.hold_render else start_at + render_s,
            seed=self._seq * 7919,
        )
        self.queued[fal_request.request_id] = fal_request
        request[_REQUEST_ID] = fal_request.request_id
        if fal_request.webhook_url and not plan.webhook_drop:
            task = asyncio.create_task(self._webhook_when_done(fal_request))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        answer = {
            "status": "IN_QUEUE",
            "request_id": fal_request.request_id,
            "gateway_request_id": fal_request.request_id,
            **self._urls(fal_request),
            "queue_position": self._position(fal_request, now),
        }
        return web.json_response(answer)

    def _status_body(self, fal_request: FalRequest, *, logs: bool) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        state = fal_request.state(now)
        base = {"response_url": self._urls(fal_request)["response_url"]}
        if state == "IN_QUEUE":
            return 202, {"status": state, "queue_position": self._position(fal_request, now), **base}
        stamp = datetime.now(UTC).replace(tzinfo=None).isoformat()
        entries = [{"message": "Generating video", "level": "INFO", "source": "user", "timestamp": stamp}]
        if state == "IN_PROGRESS":
            return 202, {"status": state, "logs": entries if logs else None, **base}
        body: dict[str, Any] = {"status": state, "logs": entries if logs else None, "metrics": {}, **base}
        failure = self._failure(fal_request)
        if failure is None:
            body["metrics"] = {"inference_time": round(fal_request.render_seconds, 3)}
        else:
            status, payload = failure
            body["error"] = (
                payload.get("detail") if isinstance(payload.get("detail"), str) else f"Invalid status code: {status}"
            )
            if isinstance(payload.get("error_type"), str):
                body["error_type"] = payload["error_type"]
        return 200, body

    async def _status(self, request: web.Request) -> web.Response:
        fal_request = self._find(request)
        if fal_request is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        status, body = self._status_body(fal_request, logs=request.query.get("logs", "") in ("1", "true"))
        return web.json_response(body, status=status)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        fal_request = self._find(request)
        if fal_request is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        logs = request.query.get("logs", "") in ("1", "true")
        while True:
            _, body = self._status_body(fal_request, logs=logs)
            await response.write(f"data: {json.dumps(body)}\n\n".encode())
            if body["status"] == "COMPLETED":
                break
            fal_request.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fal_request.changed.wait(), 0.05)
        await response.write_eof()
        return response

    def _policy_error(self, body: Mapping[str, Any], categories: tuple[str, ...]) -> dict[str, Any]:
        return {
            "loc": ["body", "prompt"],
            "msg": CONTENT_POLICY_MSG,
            "type": "content_policy_violation",
            "url": "https://docs.fal.ai/errors#content_policy_violation",
            "input": body.get("prompt"),
            "categories": list(categories),
        }

    def _failure(self, fal_request: FalRequest) -> tuple[int, dict[str, Any]] | None:
        """The result's (status, body) for a failed request, or None for a success."""
        outcome = fal_request.outcome
        if outcome == "content_policy":
            return 422, {"detail": [self._policy_error(fal_request.input, fal_request.plan.categories)]}
        if outcome == "validation":
            item = {
                "loc": ["body", "image_url"],
                "msg": "Could not download the image",
                "type": "file_download_error",
                "url": "https://docs.fal.ai/errors#file_download_error",
            }
            return 422, {"detail": [item]}
        if outcome == "timeout":
            return 504, {"detail": "Request timed out", "error_type": "request_timeout"}
        if outcome == "runner":
            return 503, {"detail": "Runner disconnected", "error_type": "runner_disconnected"}
        if outcome == "app_error":
            return 500, {"detail": "Internal Server Error"}
        if outcome == "cancelled":
            return 400, {"detail": "Request was cancelled", "error_type": "request_cancelled"}
        return None

    def _result_body(self, fal_request: FalRequest) -> tuple[int, dict[str, Any]]:
        failure = self._failure(fal_request)
        if failure is not None:
            return failure
        if fal_request.outcome == "no_video":
            return 200, {"images": [], "seed": fal_request.seed}
        url = f"{self.queue_url}/cdn/files/{fal_request.cdn_token}/output.mp4"
        size = self._clip_size_hint(fal_request)
        video = {"url": url, "content_type": fal_request.plan.content_type, "file_name": "output.mp4"}
        if size is not None:
            video["file_size"] = size
        return 200, {"video": video, "seed": fal_request.seed}

    async def _result(self, request: web.Request) -> web.Response:
        fal_request = self._find(request)
        if fal_request is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if fal_request.state(time.monotonic()) != "COMPLETED":
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        status, body = self._result_body(fal_request)
        headers = {"X-Fal-Error-Type": body["error_type"]} if isinstance(body.get("error_type"), str) else {}
        if status >= 400:
            headers["X-Fal-Retryable"] = "false"
        return web.json_response(body, status=status, headers=headers)

    async def _cancel(self, request: web.Request) -> web.Response:
        fal_request = self._find(request)
        if fal_request is None:
            return web.json_response({"status": "NOT_FOUND"}, status=404)
        now = time.monotonic()
        if fal_request.state(now) == "COMPLETED":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        fal_request.cancelled = True
        fal_request.start_at = fal_request.start_at if fal_request.start_at is not None else now
        fal_request.start_at = min(fal_request.start_at, now)
        fal_request.done_at = now
        fal_request.changed.set()
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)

    def _clip_size_hint(self, fal_request: FalRequest) -> int | None:
        plan = fal_request.plan
        if plan.video_bytes is not None:
            return len(plan.video_bytes)
        return plan.video_size

    async def _clip(self, fal_request: FalRequest) -> bytes:
        plan = fal_request.plan
        if plan.video_bytes is not None:
            return plan.video_bytes
        width, height, seconds = plan.clip_size or clip_shape(fal_request.family, fal_request.input)
        audio = plan.audio
        if audio is None:
            audio = fal_request.family not in SILENT_FAMILIES and fal_request.input.get("generate_audio") is not False
        return await asyncio.to_thread(encode_clip, width, height, seconds, audio=audio, fps=self.clip_fps)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        fal_request = next((r for r in self.queued.values() if r.cdn_token == token), None)
        if fal_request is None or fal_request.outcome != "ok":
            return web.Response(status=404, text="Not Found")
        plan = fal_request.plan
        if plan.video_size is not None:
            response = web.StreamResponse(headers={"Content-Type": plan.content_type})
            if plan.chunked:
                response.enable_chunked_encoding()
            else:
                response.content_length = plan.video_size
            await response.prepare(request)
            head = synthetic_mp4_head(plan.video_size)
            await response.write(head)
            left = plan.video_size - len(head)
            while left > 0:
                piece = min(left, _STREAM_CHUNK)
                await response.write(bytes(piece))
                left -= piece
            await response.write_eof()
            return response
        if plan.video_bytes is not None and (plan.cdn_pause is not None or plan.cdn_cut_once):
            data = plan.video_bytes
            response = web.StreamResponse(headers={"Content-Type": plan.content_type})
            response.content_length = len(data)
            await response.prepare(request)
            await response.write(data[: len(data) // 2])
            if plan.cdn_cut_once:
                plan.cdn_cut_once = False
                assert request.transport is not None
                request.transport.close()  # half the declared bytes, then the connection is gone
                return response
            assert plan.cdn_pause is not None
            await plan.cdn_pause.wait()
            await response.write(data[len(data) // 2 :])
            await response.write_eof()
            return response
        if plan.video_bytes is not None and plan.cdn_rate is not None:
            data, loop = plan.video_bytes, asyncio.get_running_loop()
            response = web.StreamResponse(headers={"Content-Type": plan.content_type})
            response.content_length = len(data)
            await response.prepare(request)
            started = loop.time()
            for sent in range(0, len(data), 64 << 10):
                piece = data[sent : sent + (64 << 10)]
                await response.write(piece)
                await asyncio.sleep(max(0.0, started + (sent + len(piece)) / plan.cdn_rate - loop.time()))
            await response.write_eof()
            return response
        return web.Response(body=await self._clip(fal_request), content_type=plan.content_type)

    async def _jwks(self, request: web.Request) -> web.Response:
        keys = [public_jwk(self.decoy_key, "decoy-2026-11"), public_jwk(self.signing_key, "signing-2026-12")]
        return web.json_response({"keys": keys}, headers={"Cache-Control": "max-age=86400"})

    # -- webhooks --

    async def _webhook_when_done(self, fal_request: FalRequest) -> None:
        while True:
            now = time.monotonic()
            if fal_request.state(now) == "COMPLETED":
                break
            wait = None if fal_request.done_at is None else max(0.0, fal_request.done_at - now)
            fal_request.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fal_request.changed.wait(), wait)
        status, payload = self._result_body(fal_request)
        body: dict[str, Any] = {"request_id": fal_request.request_id, "gateway_request_id": fal_request.request_id}
        if status < 300:
            body |= {"status": "OK", "payload": payload}
        else:
            body |= {"status": "ERROR", "error": f"Invalid status code: {status}", "payload": payload}
        raw = json.dumps(body).encode()
        for _ in range(1 + max(0, self.webhook_repeat)):
            await self._deliver(fal_request, raw)

    async def _deliver(self, fal_request: FalRequest, raw: bytes) -> None:
        url = fal_request.webhook_url or ""
        for attempt in range(1, self.webhook_retries + 2):
            timestamp = int(time.time() + self.webhook_skew_seconds)
            key = self.rogue_key if self.webhook_bad_signature else self.signing_key
            headers = sign_fal_webhook(key, fal_request.request_id, self.user_id, timestamp, raw)
            status: int | None = None
            error: str | None = None
            if not _is_loopback(url):
                error = "refused: the fake only calls loopback addresses"
            else:
                assert self._session is not None
                try:
                    async with self._session.post(
                        url, data=raw, headers=headers | {"Content-Type": "application/json"}
                    ) as answer:
                        status = answer.status
                except (aiohttp.ClientError, TimeoutError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
            self.webhooks.append(WebhookDelivery(url, fal_request.request_id, attempt, headers, raw, status, error))
            self._webhook_event.set()
            if status is not None and 200 <= status < 300:
                return
            if error is not None and error.startswith("refused"):
                return
            await asyncio.sleep(self.webhook_retry_delay)


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
