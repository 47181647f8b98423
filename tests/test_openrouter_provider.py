"""The OpenRouter provider against the fake OpenRouter video API over real loopback HTTP.

The fake's timeline is real but short (tens of milliseconds); tests wait on conditions with a
deadline, never a fixed sleep, and the few deliberate client timeouts are 0.3 s.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from aiohttp import web

from bot.providers.base import (
    ErrorKind,
    ProviderError,
    ProviderVideo,
    ReferenceImage,
    RenderSpec,
    Route,
    VideoProvider,
    VideoStatus,
)
from bot.providers.openrouter import OpenRouterProvider, parse_openrouter_event, verify_openrouter_signature
from tests.fakes.openrouter_api import CONTENT_POLICY, FakeOpenRouter, sign_openrouter_webhook
from tests.media_factory import image_bytes

pytestmark = pytest.mark.timeout(30)

VEO = Route(provider="openrouter", model_id="google/veo-3.1-lite")
SPEC = RenderSpec(
    prompt="A paper boat drifts down a rain gutter",
    model="veo-3.1-lite",
    size="1280x720",
    seconds=4,
    aspect="16:9",
    resolution="720p",
    family="veo",
    route=VEO,
)


def spec(**changes: Any) -> RenderSpec:
    fields = {name: getattr(SPEC, name) for name in RenderSpec.__dataclass_fields__}
    fields.update(changes)
    return RenderSpec(**fields)


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenRouter]:
    async with FakeOpenRouter(webhook_secret="whsec_test_secret") as server:
        yield server


@pytest.fixture
async def make_provider(fake: FakeOpenRouter) -> AsyncIterator[Callable[..., OpenRouterProvider]]:
    made: list[OpenRouterProvider] = []

    def factory(**overrides: Any) -> OpenRouterProvider:
        options: dict[str, Any] = {
            "api_key": fake.api_key,
            "base_url": fake.base_url,
            "request_timeout": 5.0,
            "allow_http_callbacks": True,
        }
        options.update(overrides)
        provider = OpenRouterProvider(**options)
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.aclose()


@pytest.fixture
def provider(make_provider: Callable[..., OpenRouterProvider]) -> OpenRouterProvider:
    return make_provider()


async def expect_error(awaitable: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await awaitable
    return caught.value


async def poll_until_terminal(
    provider: OpenRouterProvider, video_id: str, *, timeout: float = 5.0
) -> list[ProviderVideo]:
    """Every answer until a terminal one, polling every 10 ms within a deadline."""
    seen: list[ProviderVideo] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        video = await provider.retrieve(video_id)
        seen.append(video)
        if video.status in (VideoStatus.COMPLETED, VideoStatus.FAILED):
            return seen
        assert asyncio.get_running_loop().time() < deadline, f"still {video.status} after {timeout}s"
        await asyncio.sleep(0.01)


def data_url_bytes(url: str) -> tuple[str, bytes]:
    header, _, payload = url.partition(",")
    return header, base64.b64decode(payload)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the protocol and create's mapping ----------------------------------------------------------


def test_it_is_a_video_provider(provider: OpenRouterProvider, fake: FakeOpenRouter) -> None:
    assert isinstance(provider, VideoProvider)
    assert (provider.name, provider.accepts_likeness) == ("openrouter", True)
    assert fake.api_key not in repr(provider) and fake.api_key not in repr(vars(provider))


async def test_create_maps_a_text_spec_onto_the_request(provider, fake: FakeOpenRouter) -> None:
    video = await provider.create(
        spec(audio=True, seed=7, negative_prompt="blurry", webhook_url="http://127.0.0.1:9/hooks/openrouter?job=42")
    )

    assert video.status is VideoStatus.QUEUED and video.progress == 0
    assert video.id.startswith("gen-vid-") and video.id in fake.jobs
    [request] = fake.calls("create")
    assert (request.method, request.path) == ("POST", "/api/v1/videos")
    assert request.json == {
        "model": "google/veo-3.1-lite",
        "prompt": SPEC.prompt,
        "duration": 4,
        "resolution": "720p",
        "aspect_ratio": "16:9",
        "generate_audio": True,
        "seed": 7,
        "provider": {"options": {"google-vertex": {"parameters": {"negativePrompt": "blurry"}}}},
        "callback_url": "http://127.0.0.1:9/hooks/openrouter?job=42",
    }
    assert request.headers["authorization"] == f"Bearer {fake.api_key}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-openrouter-title"] == "reelbot"


async def test_a_plain_http_webhook_url_is_left_out_by_default(make_provider, fake: FakeOpenRouter) -> None:
    provider = make_provider(allow_http_callbacks=False)
    await provider.create(spec(webhook_url="http://bot.example/hooks/openrouter"))
    await provider.create(spec(webhook_url="https://bot.example/hooks/openrouter"))

    plain, secure = fake.calls("create")
    assert "callback_url" not in plain.json
    assert secure.json["callback_url"] == "https://bot.example/hooks/openrouter"


async def test_audio_off_is_sent_and_audio_unset_is_omitted(provider, fake: FakeOpenRouter) -> None:
    await provider.create(spec(audio=False))
    await provider.create(spec(audio=None, seed=None))

    off, unset = fake.calls("create")
    assert off.json["generate_audio"] is False
    assert "generate_audio" not in unset.json and "seed" not in unset.json


async def test_negative_prompt_is_dropped_for_a_family_without_a_documented_key(provider, fake) -> None:
    route = Route(provider="openrouter", model_id="bytedance/seedance-2.0")
    await provider.create(spec(family="seedance", route=route, negative_prompt="blurry", seconds=5))

    [request] = fake.calls("create")
    assert request.json["model"] == "bytedance/seedance-2.0" and request.json["duration"] == 5
    assert "provider" not in request.json


async def test_aspect_and_resolution_are_derived_from_the_size(provider, fake: FakeOpenRouter) -> None:
    await provider.create(spec(size="720x1280", aspect="", resolution=""))

    [request] = fake.calls("create")
    assert (request.json["aspect_ratio"], request.json["resolution"]) == ("9:16", "720p")
    assert "size" not in request.json


async def test_a_plain_image_is_the_first_frame_on_the_image_model(provider, fake: FakeOpenRouter) -> None:
    picture = image_bytes("PNG", 128, 72)
    route = Route(provider="openrouter", model_id="google/veo-3.1-fast", image_model_id="google/veo-3.1-lite")
    await provider.create(spec(route=route, reference=ReferenceImage(picture, "image/png", "first.png")))

    [request] = fake.calls("create")
    assert request.json["model"] == "google/veo-3.1-lite"
    assert "input_references" not in request.json
    [frame] = request.json["frame_images"]
    assert (frame["type"], frame["frame_type"]) == ("image_url", "first_frame")
    assert data_url_bytes(frame["image_url"]["url"]) == ("data:image/png;base64", picture)


async def test_a_cameo_is_a_subject_reference_on_the_reference_model(provider, fake: FakeOpenRouter) -> None:
    face = image_bytes("JPEG", 96, 96)
    route = Route(
        provider="openrouter",
        model_id="google/veo-3.1-lite",
        image_model_id="google/veo-3.1-fast",
        reference_model_id="bytedance/seedance-2.0",
    )
    cameo = ReferenceImage(face, "image/jpeg", "me.likeness.jpg", is_likeness=True)
    await provider.create(spec(route=route, reference=cameo, family="seedance"))

    [request] = fake.calls("create")
    assert request.json["model"] == "bytedance/seedance-2.0"
    assert "frame_images" not in request.json
    [reference] = request.json["input_references"]
    assert reference["type"] == "image_url"
    assert data_url_bytes(reference["image_url"]["url"]) == ("data:image/jpeg;base64", face)


async def test_without_a_route_the_spec_model_is_sent_as_is(provider, fake: FakeOpenRouter) -> None:
    await provider.create(spec(route=None, model="google/veo-3.1-fast"))
    assert fake.calls("create")[0].json["model"] == "google/veo-3.1-fast"


async def test_a_value_outside_the_model_set_is_a_bad_request_with_the_reason(provider, fake) -> None:
    error = await expect_error(provider.create(spec(seconds=5)))

    assert error.kind is ErrorKind.BAD_REQUEST and error.status_code == 400
    assert not error.ambiguous and not error.retryable
    assert "Supported durations: 4, 6, 8s" in error.detail
    assert "Supported durations" in error.user_message
    assert fake.jobs == {}


async def test_unknown_and_deprecated_models_are_unavailable(make_provider) -> None:
    async with FakeOpenRouter(deprecated_models={"google/veo-3.1-lite"}) as server:
        provider = make_provider(api_key=server.api_key, base_url=server.base_url)
        deprecated = await expect_error(provider.create(SPEC))
        unknown = await expect_error(provider.create(spec(route=Route("openrouter", "google/veo-9"))))

    assert (deprecated.kind, deprecated.status_code) == (ErrorKind.MODEL_UNAVAILABLE, 404)
    assert (unknown.kind, unknown.status_code) == (ErrorKind.MODEL_UNAVAILABLE, 400)
    assert "google/veo-9 is not a valid model ID" in unknown.detail


# -- statuses, progress, download ---------------------------------------------------------------


async def test_a_job_goes_from_pending_to_completed_and_downloads(provider, fake, tmp_path: Path) -> None:
    fake.plan(pending_s=0.05, in_progress_s=0.3)
    video = await provider.create(spec(audio=True))
    seen = await poll_until_terminal(provider, video.id)

    statuses = [v.status for v in seen]
    assert VideoStatus.IN_PROGRESS in statuses
    assert statuses[-1] is VideoStatus.COMPLETED and seen[-1].progress == 100 and seen[-1].error is None
    assert all(v.status is not VideoStatus.COMPLETED for v in seen[:-1])
    [poll, *_] = fake.calls("retrieve")
    assert poll.path == f"/api/v1/videos/{video.id}" and poll.headers["authorization"] == f"Bearer {fake.api_key}"

    dest = tmp_path / "clip.mp4"
    size = await provider.download(video.id, dest)

    assert size == dest.stat().st_size > 0
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*.part"))
    [content] = fake.calls("content")
    assert content.path == f"/api/v1/videos/{video.id}/content" and content.query == {"index": "0"}
    assert content.headers["authorization"] == f"Bearer {fake.api_key}"
    with av.open(str(dest)) as clip:
        assert clip.streams.video[0].codec_context.name == "h264"
        assert len(clip.streams.audio) == 1


async def test_a_silent_render_downloads_without_an_audio_track(provider, fake, tmp_path: Path) -> None:
    video = await provider.create(spec(audio=False))
    await poll_until_terminal(provider, video.id)
    await provider.download(video.id, tmp_path / "silent.mp4")

    with av.open(str(tmp_path / "silent.mp4")) as clip:
        assert len(clip.streams.video) == 1 and len(clip.streams.audio) == 0


async def test_progress_is_estimated_from_time(make_provider, fake: FakeOpenRouter) -> None:
    now = [100.0]
    provider = make_provider(clock=lambda: now[0], expected_render_s=60.0)
    fake.plan(pending_s=0.0, never_finish=True)
    video = await provider.create(SPEC)

    now[0] += 30
    half = await provider.retrieve(video.id)
    now[0] += 600
    late = await provider.retrieve(video.id)

    assert (half.status, half.progress) == (VideoStatus.IN_PROGRESS, 50)
    assert (late.status, late.progress) == (VideoStatus.IN_PROGRESS, 95)


async def test_an_unknown_status_is_not_terminal(provider, fake: FakeOpenRouter) -> None:
    fake.plan(statuses=["pending", "processing", "processing", "completed"])
    video = await provider.create(SPEC)

    answers = [await provider.retrieve(video.id) for _ in range(4)]

    assert [a.status for a in answers] == [
        VideoStatus.QUEUED,
        VideoStatus.IN_PROGRESS,
        VideoStatus.IN_PROGRESS,
        VideoStatus.COMPLETED,
    ]
    assert all(a.error is None for a in answers)


async def test_a_content_policy_failure_is_moderation_with_the_reason(provider, fake: FakeOpenRouter) -> None:
    fake.plan(outcome="failed", error=CONTENT_POLICY)
    video = await provider.create(SPEC)
    final = (await poll_until_terminal(provider, video.id))[-1]

    assert final.status is VideoStatus.FAILED
    assert final.error is not None and final.error.kind is ErrorKind.MODERATION
    assert final.error.detail == CONTENT_POLICY and not final.error.retryable


@pytest.mark.parametrize(
    ("outcome", "kind", "text"),
    [
        ("expired", ErrorKind.TIMEOUT, "Job exceeded maximum time to live"),
        ("cancelled", ErrorKind.SERVER, "Job was cancelled"),
        ("failed", ErrorKind.SERVER, "Video generation failed"),
    ],
)
async def test_other_terminal_failures(provider, fake, outcome: str, kind: ErrorKind, text: str) -> None:
    fake.plan(outcome=outcome)
    video = await provider.create(SPEC)
    final = (await poll_until_terminal(provider, video.id))[-1]

    assert final.status is VideoStatus.FAILED and final.error is not None
    assert (final.error.kind, final.error.detail, final.error.retryable) == (kind, text, False)


async def test_a_download_over_the_cap_is_refused_and_leaves_nothing(make_provider, fake, tmp_path: Path) -> None:
    provider = make_provider(max_download_bytes=2000)
    video = await provider.create(SPEC)
    await poll_until_terminal(provider, video.id)

    error = await expect_error(provider.download(video.id, tmp_path / "big.mp4"))

    assert error.kind is ErrorKind.BAD_RESPONSE and "cap" in error.detail and not error.retryable
    assert list(tmp_path.iterdir()) == []


async def test_download_not_ready_gone_and_not_a_video(provider, fake: FakeOpenRouter, tmp_path: Path) -> None:
    fake.plan(never_finish=True)
    pending = await provider.create(SPEC)
    not_ready = await expect_error(provider.download(pending.id, tmp_path / "a.mp4"))

    done = await provider.create(SPEC)
    await poll_until_terminal(provider, done.id)
    fake.expire_content(done.id)
    gone = await expect_error(provider.download(done.id, tmp_path / "b.mp4"))

    fake.jobs[done.id].content_gone = False
    fake.inject("content", status=200, body=b"<html>login</html>", headers={"Content-Type": "text/html"})
    html = await expect_error(provider.download(done.id, tmp_path / "c.mp4"))

    assert (not_ready.kind, not_ready.status_code, not_ready.retryable) == (ErrorKind.SERVER, 409, True)
    assert (gone.kind, gone.status_code) == (ErrorKind.NOT_FOUND, 410)
    assert html.kind is ErrorKind.BAD_RESPONSE
    assert list(tmp_path.iterdir()) == []


async def test_missing_job_is_not_found(provider) -> None:
    error = await expect_error(provider.retrieve("gen-vid-1-AAAAAAAAAAAAAAAAAAAA"))
    assert (error.kind, error.status_code) == (ErrorKind.NOT_FOUND, 404)


async def test_routes_the_api_lacks(provider, fake: FakeOpenRouter) -> None:
    video = await provider.create(SPEC)
    before = len(fake.requests)

    await provider.delete(video.id)
    remix = await expect_error(provider.remix(video.id, "make it blue"))
    assert await provider.retrieve_many([video.id], since=0.0) == {}
    assert await provider.find_recent(SPEC, 0.0) is None

    assert remix.kind is ErrorKind.BAD_REQUEST
    assert len(fake.requests) == before  # nothing was asked of the service


# -- errors that decide failover ----------------------------------------------------------------


@pytest.mark.parametrize("floor", [False, True])
async def test_no_credits_is_quota_with_an_admin_detail(provider, fake, floor: bool) -> None:
    fake.no_credits(floor=floor)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.status_code) == (ErrorKind.QUOTA, 402)
    assert not error.retryable and not error.ambiguous
    assert "openrouter.ai/credits" in error.detail and "credit limit" in error.detail
    assert ("$1.00 in balance" in error.detail) is floor
    assert "admin" in error.user_message and "your" not in error.user_message.lower()
    assert fake.jobs == {}


async def test_a_low_balance_account_gets_the_floor_answer(make_provider) -> None:
    async with FakeOpenRouter(balance_usd=0.4) as server:
        provider = make_provider(api_key=server.api_key, base_url=server.base_url)
        error = await expect_error(provider.create(SPEC))
    assert error.kind is ErrorKind.QUOTA and "at least $1.00" in error.detail


async def test_an_exhausted_in_flight_budget_is_a_retryable_wait(provider, fake: FakeOpenRouter) -> None:
    fake.inject(
        "create",
        status=402,
        message="would exceed your available credits",
        metadata={"reason": "in_flight_budget_exhausted"},
        headers={"Retry-After": "12"},
    )
    error = await expect_error(provider.create(SPEC))
    assert (error.kind, error.retryable, error.retry_after, error.ambiguous) == (
        ErrorKind.RATE_LIMITED,
        True,
        12.0,
        False,
    )


async def test_a_wrong_key_is_auth(make_provider, fake: FakeOpenRouter) -> None:
    provider = make_provider(api_key="sk-or-v1-wrong")

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.status_code, error.ambiguous) == (ErrorKind.AUTH, 401, False)
    assert "User not found." in error.detail and "sk-or-v1-wrong" not in str(error)
    assert fake.jobs == {}


async def test_a_rate_limit_carries_retry_after(provider, fake: FakeOpenRouter) -> None:
    fake.rate_limit(retry_after=7)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.retryable, error.retry_after, error.ambiguous) == (
        ErrorKind.RATE_LIMITED,
        True,
        7.0,
        False,
    )
    assert fake.count("create") == 1


async def test_a_server_error_after_accepting_is_ambiguous_and_not_resent(provider, fake: FakeOpenRouter) -> None:
    fake.server_error(after_accept=True)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.status_code, error.ambiguous) == (ErrorKind.SERVER, 500, True)
    assert fake.count("create") == 1 and len(fake.jobs) == 1


async def test_a_server_error_on_a_read_is_retryable_not_ambiguous(provider, fake: FakeOpenRouter) -> None:
    video = await provider.create(SPEC)
    fake.server_error("retrieve", status=503)

    error = await expect_error(provider.retrieve(video.id))

    assert (error.kind, error.retryable, error.ambiguous) == (ErrorKind.SERVER, True, False)


async def test_connection_refused_is_unavailable_and_not_ambiguous(make_provider) -> None:
    provider = make_provider(base_url=f"http://127.0.0.1:{closed_port()}/api/v1")

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.ambiguous, error.retryable) == (ErrorKind.UNAVAILABLE, False, True)


async def test_a_create_timeout_is_ambiguous(make_provider, fake: FakeOpenRouter) -> None:
    provider = make_provider(request_timeout=0.3)
    fake.inject("create", process=True, delay=3.0)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.ambiguous, error.retryable) == (ErrorKind.TIMEOUT, True, True)
    assert fake.count("create") == 1 and len(fake.jobs) == 1  # it was queued, and not sent twice


async def test_a_reset_after_sending_a_create_is_ambiguous(provider, fake: FakeOpenRouter) -> None:
    fake.inject("create", process=True, reset=True)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.ambiguous) == (ErrorKind.UNAVAILABLE, True)
    assert fake.count("create") == 1 and len(fake.jobs) == 1


async def test_a_create_answer_without_an_id_is_ambiguous(provider, fake: FakeOpenRouter) -> None:
    fake.inject("create", status=202, json={"status": "pending"}, process=True)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.ambiguous) == (ErrorKind.BAD_RESPONSE, True)


# -- doctor ------------------------------------------------------------------------------------


async def test_check_accepts_the_right_key_and_names_a_wrong_one(make_provider, fake: FakeOpenRouter) -> None:
    assert await make_provider().check() is None
    problem = await make_provider(api_key="sk-or-v1-wrong").check()

    assert problem is not None and "rejected the API key" in problem and "\n" not in problem
    assert [r.path for r in fake.calls("key")] == ["/api/v1/key", "/api/v1/key"]
    assert fake.count("create") == 0


async def test_check_reports_a_key_limit_under_the_video_floor(make_provider) -> None:
    async with FakeOpenRouter(key_limit_remaining=0.25) as server:
        problem = await make_provider(api_key=server.api_key, base_url=server.base_url).check()
    assert problem is not None and "$0.25" in problem and "$1.00" in problem


async def test_check_reports_an_unreachable_service(make_provider) -> None:
    problem = await make_provider(base_url=f"http://127.0.0.1:{closed_port()}/api/v1").check()
    assert problem is not None and "unavailable" in problem


async def test_live_models_lists_the_catalogue_without_the_key(provider, fake: FakeOpenRouter) -> None:
    models = await provider.live_models()

    assert models == set(fake.models)
    assert "google/veo-3.1-lite" in models
    [request] = fake.calls("models")
    assert request.path == "/api/v1/videos/models" and "authorization" not in request.headers


# -- webhook signatures -------------------------------------------------------------------------

SECRET = "whsec_test_secret"
BODY = json.dumps({"type": "video.generation.completed", "data": {"id": "abc123", "status": "completed"}}).encode()
NOW = 1_790_000_000.0


def test_a_good_signature_verifies() -> None:
    headers = sign_openrouter_webhook(SECRET, BODY, int(NOW) - 10)
    assert verify_openrouter_signature(secret=SECRET, headers=headers, body=BODY, now=NOW)
    lower = {k.lower(): v for k, v in headers.items()}
    assert verify_openrouter_signature(secret=SECRET, headers=lower, body=BODY, now=NOW)


def test_the_signature_matches_the_documented_construction() -> None:
    digest = hmac.new(SECRET.encode(), f"{int(NOW)},".encode() + BODY, hashlib.sha256).hexdigest()
    header = {"X-OpenRouter-Signature": f"t={int(NOW)},v1={digest}"}
    assert sign_openrouter_webhook(SECRET, BODY, int(NOW)) == header
    assert verify_openrouter_signature(secret=SECRET, headers=header, body=BODY, now=NOW)


@pytest.mark.parametrize(
    ("secret", "body", "stamp", "now"),
    [
        ("another-secret", BODY, int(NOW), NOW),  # bad signature
        (SECRET, BODY.replace(b"completed", b"cancelled"), int(NOW), NOW),  # tampered body
        (SECRET, BODY, int(NOW) - 301, NOW),  # too old
        (SECRET, BODY, int(NOW) + 301, NOW),  # from the future
    ],
)
def test_bad_old_and_tampered_signatures_are_refused(secret: str, body: bytes, stamp: int, now: float) -> None:
    headers = sign_openrouter_webhook(secret, BODY, stamp)
    assert not verify_openrouter_signature(secret=SECRET, headers=headers, body=body, now=now)


def test_a_re_serialised_body_fails() -> None:
    headers = sign_openrouter_webhook(SECRET, BODY, int(NOW))
    reserialised = json.dumps(json.loads(BODY), separators=(",", ":")).encode()
    assert reserialised != BODY
    assert not verify_openrouter_signature(secret=SECRET, headers=headers, body=reserialised, now=NOW)


@pytest.mark.parametrize(
    "header",
    [None, "", "t=abc,v1=00", "v1=00", f"t={int(NOW)}", f"t={int(NOW)},v1=zz"],
)
def test_missing_or_malformed_headers_are_refused(header: str | None) -> None:
    headers = {} if header is None else {"X-OpenRouter-Signature": header}
    assert not verify_openrouter_signature(secret=SECRET, headers=headers, body=BODY, now=NOW)


def test_an_empty_secret_verifies_nothing() -> None:
    headers = sign_openrouter_webhook("", BODY, int(NOW))
    assert not verify_openrouter_signature(secret="", headers=headers, body=BODY, now=NOW)


def test_one_of_several_v1_entries_may_match() -> None:
    good = sign_openrouter_webhook(SECRET, BODY, int(NOW))["X-OpenRouter-Signature"].split("v1=")[1]
    headers = {"X-OpenRouter-Signature": f"t={int(NOW)},v1={'0' * 64},v1={good}"}
    assert verify_openrouter_signature(secret=SECRET, headers=headers, body=BODY, now=NOW)


def test_events_name_the_job_and_status() -> None:
    event = parse_openrouter_event(BODY)
    assert (event.job_id, event.status, event.video_status) == ("abc123", "completed", VideoStatus.COMPLETED)
    assert event.dedupe_key == "abc123-completed"
    failed = parse_openrouter_event(
        json.dumps({"type": "video.generation.failed", "data": {"id": "x1", "error": CONTENT_POLICY}}).encode()
    )
    assert (failed.status, failed.video_status, failed.error) == ("failed", VideoStatus.FAILED, CONTENT_POLICY)
    for bad in (b"not json", b"[]", b'{"data": {}}', b'{"type": "x", "data": {"id": "y"}}'):
        with pytest.raises(ValueError):
            parse_openrouter_event(bad)


# -- webhooks from the fake, end to end ---------------------------------------------------------


class Receiver:
    """A webhook endpoint on 127.0.0.1 that verifies deliveries as the bot's endpoint must."""

    def __init__(self, *, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.seen: list[tuple[bool, bytes, dict[str, str]]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        ok = verify_openrouter_signature(secret=SECRET, headers=request.headers, body=body, now=time.time())
        self.seen.append((ok, body, dict(request.headers)))
        if len(self.seen) <= self.fail_first:
            return web.Response(status=500)
        return web.Response(status=204 if ok else 401)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/openrouter", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hooks/openrouter"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def test_a_signed_webhook_verifies_and_names_the_job(provider, fake: FakeOpenRouter) -> None:
    async with Receiver() as receiver:
        video = await provider.create(spec(webhook_url=receiver.url))
        [delivery] = await fake.wait_for_deliveries(1)

    assert delivery.status == 204
    [(ok, body, headers)] = receiver.seen
    event = parse_openrouter_event(body)
    assert ok and (event.job_id, event.video_status) == (video.id, VideoStatus.COMPLETED)
    assert headers["X-OpenRouter-Idempotency-Key"] == event.dedupe_key
    assert (await provider.retrieve(video.id)).status is VideoStatus.COMPLETED  # the re-poll agrees


@pytest.mark.parametrize("mode", ["bad_signature", "old_timestamp"])
async def test_forged_or_stale_webhooks_are_refused(provider, fake: FakeOpenRouter, mode: str) -> None:
    fake.plan(webhook=mode)
    async with Receiver() as receiver:
        await provider.create(spec(webhook_url=receiver.url))
        await fake.wait_for_deliveries(1)

    assert receiver.seen and not any(ok for ok, _, _ in receiver.seen)


async def test_webhooks_can_repeat_be_retried_or_be_lost(provider, fake: FakeOpenRouter) -> None:
    fake.plan(webhook="repeat")
    fake.plan(webhook="lost")
    async with Receiver(fail_first=1) as receiver:
        repeated = await provider.create(spec(webhook_url=receiver.url))
        lost = await provider.create(spec(webhook_url=receiver.url))
        deliveries = await fake.wait_for_deliveries(4)

    keys = [headers["X-OpenRouter-Idempotency-Key"] for _, _, headers in receiver.seen]
    assert keys == [f"{repeated.id}-completed"] * 3  # a 500, its retry, then the repeat
    assert [d.status for d in deliveries if not d.lost] == [500, 204, 204]
    assert [d.lost for d in deliveries if lost.id.encode() in d.body] == [True]


async def test_a_failed_job_webhook_carries_the_error(provider, fake: FakeOpenRouter) -> None:
    fake.plan(outcome="failed", error=CONTENT_POLICY)
    async with Receiver() as receiver:
        await provider.create(spec(webhook_url=receiver.url))
        await fake.wait_for_deliveries(1)

    [(ok, body, _)] = receiver.seen
    event = parse_openrouter_event(body)
    assert ok and (event.status, event.error) == ("failed", CONTENT_POLICY)


# -- the fake itself follows the recorded wire behaviour ----------------------------------------

MODEL_KEYS = {
    "id", "canonical_slug", "name", "created", "description", "hugging_face_id", "supported_resolutions",
    "supported_aspect_ratios", "supported_sizes", "supported_durations", "supported_frame_images", "generate_audio",
    "seed", "pricing_skus", "allowed_passthrough_parameters", "upscale_factor", "creativity",
}  # fmt: skip


async def test_the_fake_answers_like_the_recordings(make_provider) -> None:
    async with FakeOpenRouter(signed_urls=True) as server, httpx.AsyncClient(base_url=server.root_url) as raw:
        ours = make_provider(api_key=server.api_key, base_url=server.base_url)
        key = {"Authorization": f"Bearer {server.api_key}"}
        created = await raw.post("/api/v1/videos", json={**_body(), "prompt": "x"}, headers=key)
        assert created.status_code == 202
        assert set(created.json()) == {"id", "polling_url", "status"} and created.json()["status"] == "pending"
        job = created.json()["id"]
        assert created.json()["polling_url"] == f"{server.base_url}/videos/{job}"
        await poll_until_terminal(ours, job)
        done = (await raw.get(f"/api/v1/videos/{job}", headers=key)).json()
        assert done["generation_id"] == job and "progress" not in done
        assert done["unsigned_urls"] == [f"{server.base_url}/videos/{job}/content?index=0"]
        assert set(done["usage"]) == {"cost", "is_byok"} and isinstance(done["expires_at"], int)

        anonymous = await raw.get(f"/api/v1/videos/{job}/content")
        ranged = await raw.get(f"/api/v1/videos/{job}/content", headers={**key, "Range": "bytes=0-99"})
        out_of_range = await raw.get(f"/api/v1/videos/{job}/content?index=5", headers=key)
        signed = await raw.get(done["urls"][0])
        models = (await raw.get("/api/v1/videos/models")).json()["data"]

    assert anonymous.status_code == 401
    assert anonymous.json() == {"error": {"code": 401, "message": "No cookie auth credentials found"}}
    assert ranged.status_code == 200 and len(ranged.content) > 100 and ranged.content[4:8] == b"ftyp"
    assert "content-length" not in ranged.headers and ranged.headers["transfer-encoding"] == "chunked"
    assert out_of_range.status_code == 400
    assert out_of_range.json()["error"]["message"] == "Video index 5 out of range (1 videos available)"
    assert signed.status_code == 200 and signed.content == ranged.content
    assert all(set(row) == MODEL_KEYS for row in models)


def _body() -> dict[str, Any]:
    return {"model": "google/veo-3.1-lite", "duration": 4, "resolution": "720p", "aspect_ratio": "16:9"}
