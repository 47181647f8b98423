"""The fal queue provider against the fake fal queue, CDN and JWKS over real loopback HTTP.

Render timing is the fake's (short, or held until a test releases it); the provider's own clock
(progress estimate) is a manual one, and its retry waits go through a recorder, so nothing here
sleeps on a fixed timer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import stat
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bot.providers.base import ErrorKind, ProviderError, ReferenceImage, RenderSpec, Route, VideoStatus
from bot.providers.fal import FalProvider, request_id_of
from bot.providers.fal._handle import FalHandle
from tests.fakes.fal_queue import FakeFalQueue, sign_fal_webhook
from tests.media_factory import image_bytes, stream_facts

pytestmark = pytest.mark.timeout(30)

VEO = Route("fal", "fal-ai/veo3.1/fast", "fal-ai/veo3.1/fast/image-to-video", "fal-ai/veo3.1/reference-to-video")
VEO_SPEC = RenderSpec(
    prompt="a paper boat drifts down a rain gutter",
    model="veo-3.1-fast",
    size="1280x720",
    seconds=4,
    aspect="16:9",
    resolution="720p",
    family="veo",
    route=VEO,
)


class Clock:
    """The provider's clock (unix seconds), moved by hand."""

    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SleepRecorder:
    """Stands in for ``asyncio.sleep`` in retry loops: records the waits and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
async def fal():
    async with FakeFalQueue(render_seconds=0.1) as fake:
        yield fake


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
async def make_provider(fal: FakeFalQueue, clock: Clock, sleeps: SleepRecorder):
    made: list[FalProvider] = []

    def factory(**overrides: Any) -> FalProvider:
        options: dict[str, Any] = {
            "api_key": fal.api_key,
            "queue_url": fal.queue_url,
            "clock": clock,
            "sleep": sleeps,
            "request_timeout": 5.0,
        }
        options.update(overrides)
        provider = FalProvider(**options)
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.aclose()


@pytest.fixture
def provider(make_provider) -> FalProvider:
    return make_provider()


def spec(**changes: Any) -> RenderSpec:
    fields = {name: getattr(VEO_SPEC, name) for name in RenderSpec.__dataclass_fields__}
    fields.update(changes)
    return RenderSpec(**fields)


async def expect_error(awaitable: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await awaitable
    return caught.value


async def until_done(provider: FalProvider, fal: FakeFalQueue, video_id: str) -> None:
    await fal.wait_state(request_id_of(video_id), "COMPLETED")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- submit: endpoints and per-family inputs ---------------------------------------------------------


async def test_submit_sends_the_whole_key_and_veo_inputs(provider, fal: FakeFalQueue) -> None:
    video = await provider.create(spec(seconds=8, audio=True, negative_prompt="blurry", seed=42))

    assert video.status is VideoStatus.QUEUED
    assert video.queue_position == 0
    [call] = fal.calls("submit")
    assert call.path == "/fal-ai/veo3.1/fast"
    assert call.headers["authorization"] == f"Key {fal.api_key}"  # "id:secret", never split
    assert ":" in fal.api_key
    assert call.json == {
        "prompt": VEO_SPEC.prompt,
        "duration": "8s",
        "aspect_ratio": "16:9",
        "resolution": "720p",
        "generate_audio": True,
        "negative_prompt": "blurry",
        "seed": 42,
    }
    assert "fal_webhook" not in call.query
    assert fal.api_key not in video.id and fal.api_key not in repr(provider)


@pytest.mark.parametrize(
    ("family", "route", "changes", "expected", "app"),
    [
        (
            "kling",
            Route("fal", "fal-ai/kling-video/v2.1/standard/text-to-video"),
            {"seconds": 5, "size": "720x1280", "aspect": "", "resolution": "", "audio": False, "negative_prompt": "x"},
            {"duration": "5", "aspect_ratio": "9:16", "generate_audio": False, "negative_prompt": "x"},
            "fal-ai/kling-video",
        ),
        (
            "seedance",
            Route("fal", "bytedance/seedance-2.0/mini/text-to-video"),
            {"seconds": 5, "aspect": "1:1", "resolution": "480p", "seed": 9},
            {"duration": "5", "aspect_ratio": "1:1", "resolution": "480p", "seed": 9},
            "bytedance/seedance-2.0",
        ),
        (
            "ltx",
            Route("fal", "fal-ai/ltx-2/text-to-video/fast"),
            {"seconds": 6, "size": "1920x1080", "resolution": "1080p", "audio": True, "seed": 5},
            {"duration": 6, "resolution": "1080p", "generate_audio": True},
            "fal-ai/ltx-2",
        ),
        (
            "wan",
            Route("fal", "fal-ai/wan/v2.2-a14b/text-to-video"),
            {"seconds": 5, "audio": True, "negative_prompt": "text", "seed": 1},
            {"aspect_ratio": "16:9", "resolution": "720p", "negative_prompt": "text", "seed": 1},
            "fal-ai/wan",
        ),
    ],
)
async def test_each_family_gets_its_own_input_types(
    provider, fal: FakeFalQueue, family: str, route: Route, changes: dict[str, Any], expected: dict[str, Any], app: str
) -> None:
    video = await provider.create(spec(family=family, route=route, **changes))

    [call] = fal.calls("submit")
    assert call.path == f"/{route.model_id}"
    assert call.json == {"prompt": VEO_SPEC.prompt, **expected}
    # Status goes to owner/app only (trap 1), whatever the endpoint's sub-path.
    assert (await provider.retrieve(video.id)).status in (
        VideoStatus.QUEUED,
        VideoStatus.IN_PROGRESS,
        VideoStatus.COMPLETED,
    )
    assert fal.calls("status")[-1].path == f"/{app}/requests/{request_id_of(video.id)}/status"


async def test_the_fake_refuses_a_wrong_input_type_as_fal_does(fal: FakeFalQueue) -> None:
    async with httpx.AsyncClient(base_url=fal.queue_url) as client:
        answer = await client.post(
            "/fal-ai/veo3.1/fast", json={"prompt": "p", "duration": 8}, headers={"Authorization": f"Key {fal.api_key}"}
        )
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["body", "duration"]


async def test_first_frame_goes_to_the_image_endpoint_as_a_data_uri(provider, fal: FakeFalQueue) -> None:
    picture = image_bytes("PNG", 64, 36)
    reference = ReferenceImage(picture, "image/png", "first.png")

    await provider.create(spec(reference=reference))

    [call] = fal.calls("submit")
    assert call.path == "/fal-ai/veo3.1/fast/image-to-video"
    assert call.json["image_url"] == "data:image/png;base64," + base64.b64encode(picture).decode()


@pytest.mark.parametrize(
    ("image_model", "field"),
    [
        ("fal-ai/kling-video/v3/standard/image-to-video", "start_image_url"),
        ("fal-ai/kling-video/v2.1/pro/image-to-video", "image_url"),
    ],
)
async def test_kling_names_its_first_frame_per_version(
    provider, fal: FakeFalQueue, image_model: str, field: str
) -> None:
    route = Route("fal", "fal-ai/kling-video/v2.1/pro/text-to-video", image_model)
    reference = ReferenceImage(image_bytes("JPEG", 64, 36), "image/jpeg", "f.jpg")

    await provider.create(spec(family="kling", route=route, seconds=5, reference=reference, resolution=""))

    [call] = fal.calls("submit")
    assert call.path == f"/{image_model}"
    assert call.json[field].startswith("data:image/jpeg;base64,")
    assert {"image_url", "start_image_url"} - {field} & call.json.keys() == set()


async def test_a_cameo_goes_to_the_reference_endpoint_or_is_refused(provider, fal: FakeFalQueue) -> None:
    cameo = ReferenceImage(image_bytes("PNG", 64, 64), "image/png", "me.likeness.png", is_likeness=True)

    await provider.create(spec(seconds=8, reference=cameo))
    [call] = fal.calls("submit")
    assert call.path == "/fal-ai/veo3.1/reference-to-video"
    assert call.json["image_urls"] == ["data:image/png;base64," + base64.b64encode(cameo.data).decode()]
    assert "image_url" not in call.json

    no_reference = Route("fal", "fal-ai/veo3.1/fast", "fal-ai/veo3.1/fast/image-to-video")
    error = await expect_error(provider.create(spec(reference=cameo, route=no_reference)))
    assert error.kind is ErrorKind.BAD_REQUEST
    assert fal.count("submit") == 1  # nothing sent


@pytest.mark.parametrize(
    ("audio", "sent", "has_track"), [(True, True, True), (False, False, False), (None, None, True)]
)
async def test_audio_on_off_or_left_to_the_model(
    provider, fal: FakeFalQueue, tmp_path: Path, audio: bool | None, sent: bool | None, has_track: bool
) -> None:
    fal.plan(clip_size=(160, 90, 1))
    video = await provider.create(spec(audio=audio))
    [call] = fal.calls("submit")
    assert call.json.get("generate_audio", None) is sent
    assert ("generate_audio" in call.json) is (audio is not None)

    await until_done(provider, fal, video.id)
    await provider.download(video.id, tmp_path / "clip.mp4")
    assert (stream_facts(tmp_path / "clip.mp4")["audio_codec"] is not None) is has_track


async def test_unknown_family_is_refused_before_sending(provider, fal: FakeFalQueue) -> None:
    error = await expect_error(provider.create(spec(family="sora", route=Route("fal", "fal-ai/sora-2/text-to-video"))))
    assert error.kind is ErrorKind.BAD_REQUEST
    assert fal.count("submit") == 0


# -- status, progress, result, download ------------------------------------------------------------


async def test_queue_position_then_time_based_progress(provider, fal: FakeFalQueue, clock: Clock) -> None:
    first = fal.plan(hold=True)
    fal.plan(hold=True, hold_render=True)
    ahead = await provider.create(VEO_SPEC)
    video = await provider.create(VEO_SPEC)
    assert video.queue_position == 1
    assert first is fal.queued[request_id_of(ahead.id)].plan

    queued = await provider.retrieve(video.id)
    assert (queued.status, queued.queue_position, queued.progress) == (VideoStatus.QUEUED, 1, 0)
    assert fal.calls("status")[-1].query == {"logs": "1"}

    fal.release(request_id_of(ahead.id))
    assert (await provider.retrieve(video.id)).queue_position == 0

    fal.release(request_id_of(video.id))
    running = await provider.retrieve(video.id)
    assert running.status is VideoStatus.IN_PROGRESS
    clock.advance(30)  # Veo's typical render is 60 s
    assert (await provider.retrieve(video.id)).progress == 50
    clock.advance(3600)
    assert (await provider.retrieve(video.id)).progress == 95  # capped: there is no real percentage

    fal.finish(request_id_of(video.id))
    done = await provider.retrieve(video.id)
    assert done.status is VideoStatus.COMPLETED and done.progress == 100
    assert done.download_url is not None and "/cdn/files/" in done.download_url


async def test_success_downloads_without_the_key_and_owner_only(provider, fal: FakeFalQueue, tmp_path: Path) -> None:
    video = await provider.create(spec(audio=True))
    await until_done(provider, fal, video.id)
    assert (await provider.retrieve(video.id)).status is VideoStatus.COMPLETED

    dest = tmp_path / "clip.mp4"
    size = await provider.download(video.id, dest)

    assert size == dest.stat().st_size
    facts = stream_facts(dest)
    assert (facts["video_codec"], facts["width"], facts["height"]) == ("h264", 1280, 720)
    assert facts["audio_codec"] == "aac" and abs(float(facts["container_seconds"]) - 4) < 0.5
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no .part left
    [cdn] = fal.calls("cdn")
    assert "authorization" not in cdn.headers and fal.api_key not in json.dumps(cdn.headers)
    assert fal.count("result") == 1  # the download used the remembered result


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_clip_over_the_cap_is_refused_and_nothing_is_left(
    make_provider, fal: FakeFalQueue, tmp_path: Path, chunked: bool
) -> None:
    provider = make_provider(max_download_bytes=1 << 20)
    fal.plan(video_size=3 << 20, chunked=chunked)
    video = await provider.create(VEO_SPEC)
    await until_done(provider, fal, video.id)

    error = await expect_error(provider.download(video.id, tmp_path / "clip.mp4"))

    assert error.kind is ErrorKind.BAD_RESPONSE and "cap" in error.detail
    assert list(tmp_path.iterdir()) == []


async def test_completed_is_not_success_a_timeout_fails_the_render(provider, fal: FakeFalQueue, tmp_path) -> None:
    fal.plan(outcome="timeout")
    video = await provider.create(VEO_SPEC)
    await until_done(provider, fal, video.id)

    result = await provider.retrieve(video.id)

    assert fal.calls("status")  # it said COMPLETED ...
    assert result.status is VideoStatus.FAILED  # ... but the result said 504
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT and result.error.status_code == 504
    download_error = await expect_error(provider.download(video.id, tmp_path / "x.mp4"))
    assert download_error.kind is ErrorKind.TIMEOUT
    assert fal.count("cdn") == 0


async def test_runner_failure_is_a_retryable_server_failure(provider, fal: FakeFalQueue) -> None:
    fal.plan(outcome="runner")
    video = await provider.create(VEO_SPEC)
    await until_done(provider, fal, video.id)

    result = await provider.retrieve(video.id)

    assert result.status is VideoStatus.FAILED
    assert result.error is not None and result.error.kind is ErrorKind.SERVER and result.error.retryable


async def test_content_policy_fails_with_the_reason(make_provider) -> None:
    async with FakeFalQueue(render_seconds=0.05, moderated_terms=("explosion",)) as fal:
        provider = make_provider(api_key=fal.api_key, queue_url=fal.queue_url)
        fal.plan(categories=("violence", "illicit"))
        video = await provider.create(spec(prompt="a huge explosion downtown"))
        await fal.wait_state(request_id_of(video.id), "COMPLETED")

        result = await provider.retrieve(video.id)

    assert result.status is VideoStatus.FAILED
    assert result.error is not None and result.error.kind is ErrorKind.MODERATION
    assert "flagged" in result.error.detail and "violence, illicit" in result.error.detail


async def test_content_policy_at_submit_is_moderation(make_provider) -> None:
    async with FakeFalQueue(moderated_terms=("explosion",), moderate_at_submit=True) as fal:
        provider = make_provider(api_key=fal.api_key, queue_url=fal.queue_url)
        error = await expect_error(provider.create(spec(prompt="an explosion")))
    assert error.kind is ErrorKind.MODERATION and not error.ambiguous
    assert fal.queued == {}


async def test_validation_error_at_submit_is_a_bad_request_with_the_detail(provider, fal: FakeFalQueue) -> None:
    detail = [{"loc": ["body", "resolution"], "msg": "1080p requires 8s", "type": "value_error"}]
    fal.inject("submit", status=422, json={"detail": detail})

    error = await expect_error(provider.create(VEO_SPEC))

    assert error.kind is ErrorKind.BAD_REQUEST and error.detail == "resolution: 1080p requires 8s"
    assert "1080p requires 8s" in error.user_message


# -- failures at submit: what can have been queued --------------------------------------------------


async def test_429_is_rate_limited_with_retry_after_and_sent_once(provider, fal: FakeFalQueue) -> None:
    fal.rate_limit(retry_after=7)

    error = await expect_error(provider.create(VEO_SPEC))

    assert (error.kind, error.retryable, error.retry_after, error.ambiguous) == (
        ErrorKind.RATE_LIMITED,
        True,
        7.0,
        False,
    )
    assert fal.count("submit") == 1 and fal.queued == {}


async def test_ingress_503_is_retryable_and_not_ambiguous(provider, fal: FakeFalQueue) -> None:
    fal.ingress_error()

    error = await expect_error(provider.create(VEO_SPEC))

    assert (error.kind, error.retryable, error.ambiguous) == (ErrorKind.SERVER, True, False)
    assert "<" not in error.detail  # the nginx page's tags are stripped
    assert fal.count("submit") == 1 and fal.queued == {}


async def test_500_with_a_fal_request_id_is_ambiguous(provider, fal: FakeFalQueue) -> None:
    fal.app_error()  # the request really was queued before the 500

    error = await expect_error(provider.create(VEO_SPEC))

    assert error.kind is ErrorKind.SERVER and error.ambiguous and not error.retryable
    assert fal.count("submit") == 1 and len(fal.queued) == 1
    assert await provider.find_recent(VEO_SPEC, 0.0) is None  # fal cannot list: nothing to adopt


async def test_wrong_key_is_auth_and_the_key_is_not_echoed(make_provider, fal: FakeFalQueue) -> None:
    provider = make_provider(api_key="other-id:other-secret")

    error = await expect_error(provider.create(VEO_SPEC))

    assert error.kind is ErrorKind.AUTH and error.status_code == 401 and not error.retryable
    assert "other-secret" not in str(error) and "FAL_KEY" in error.detail


@pytest.mark.parametrize("status", [402, 403])
async def test_exhausted_balance_is_quota(provider, fal: FakeFalQueue, status: int) -> None:
    fal.exhausted_balance(status=status)

    error = await expect_error(provider.create(VEO_SPEC))

    assert error.kind is ErrorKind.QUOTA and "Exhausted balance" in error.detail and not error.ambiguous


async def test_connection_refused_is_unavailable_and_not_ambiguous(make_provider) -> None:
    provider = make_provider(queue_url=f"http://127.0.0.1:{free_port()}")

    error = await expect_error(provider.create(VEO_SPEC))

    assert (error.kind, error.retryable, error.ambiguous) == (ErrorKind.UNAVAILABLE, True, False)


async def test_a_read_timeout_after_the_submit_was_sent_is_ambiguous(make_provider, fal: FakeFalQueue) -> None:
    provider = make_provider(request_timeout=0.3)
    fal.inject("submit", process=True, delay=2.0)

    error = await expect_error(provider.create(VEO_SPEC))

    assert error.kind is ErrorKind.TIMEOUT and error.ambiguous
    assert fal.count("submit") == 1  # never resent


async def test_a_reset_after_the_submit_was_sent_is_ambiguous(provider, fal: FakeFalQueue) -> None:
    fal.inject("submit", process=True, reset=True)

    error = await expect_error(provider.create(VEO_SPEC))

    assert error.kind is ErrorKind.UNAVAILABLE and error.ambiguous
    assert fal.count("submit") == 1 and len(fal.queued) == 1


async def test_an_unreadable_submit_answer_is_ambiguous(provider, fal: FakeFalQueue) -> None:
    fal.inject("submit", status=200, body=b"<html>gateway</html>", content_type="text/html", process=True)

    error = await expect_error(provider.create(VEO_SPEC))

    assert error.kind is ErrorKind.BAD_RESPONSE and error.ambiguous and not error.retryable
    assert len(fal.queued) == 1


async def test_urls_off_the_configured_origin_are_not_followed(provider, fal: FakeFalQueue) -> None:
    fal.advertised_root = "https://queue.elsewhere.example"
    video = await provider.create(spec(route=Route("fal", "fal-ai/veo3.1/lite")))

    assert (await provider.retrieve(video.id)).status is not VideoStatus.FAILED
    assert fal.calls("status")[-1].path == f"/fal-ai/veo3.1/requests/{request_id_of(video.id)}/status"


# -- reads retry; cancel; restart ----------------------------------------------------------------


async def test_status_reads_retry_through_ingress_errors(provider, fal: FakeFalQueue, sleeps: SleepRecorder) -> None:
    video = await provider.create(VEO_SPEC)
    fal.ingress_error("status", times=2)

    assert (await provider.retrieve(video.id)).status is not VideoStatus.FAILED
    assert fal.count("status") == 3 and len(sleeps.calls) == 2


def made_up_id(request_id: str, clock: Clock) -> str:
    base = f"fal-ai/veo3.1/requests/{request_id}"
    return FalHandle(request_id, base, f"{base}/status", f"{base}/cancel", clock(), 60.0).encode()


async def test_a_lost_request_is_not_found(provider, fal: FakeFalQueue, clock: Clock) -> None:
    error = await expect_error(provider.retrieve(made_up_id("nope", clock)))
    assert error.kind is ErrorKind.NOT_FOUND and not error.retryable
    damaged = await expect_error(provider.retrieve("fal:abc:%%%"))
    assert damaged.kind is ErrorKind.NOT_FOUND


async def test_cancel_queued_completed_and_unknown(provider, fal: FakeFalQueue, clock: Clock) -> None:
    fal.plan(hold=True)
    video = await provider.create(VEO_SPEC)

    await provider.delete(video.id)

    [cancel] = fal.calls("cancel")
    assert (cancel.method, cancel.path) == ("PUT", f"/fal-ai/veo3.1/requests/{request_id_of(video.id)}/cancel")
    assert fal.queued[request_id_of(video.id)].cancelled
    after = await provider.retrieve(video.id)
    assert after.status is VideoStatus.FAILED

    await provider.delete(video.id)  # 400 ALREADY_COMPLETED: fine
    await provider.delete(made_up_id("gone", clock))  # 404: fine
    assert [c.path.rsplit("/", 2)[-2] for c in fal.calls("cancel")][1:] == [request_id_of(video.id), "gone"]


async def test_a_fresh_provider_resumes_from_the_id_alone(make_provider, fal: FakeFalQueue, tmp_path: Path) -> None:
    first = make_provider()
    fal.plan(hold=True, clip_size=(160, 90, 1))
    video = await first.create(VEO_SPEC)
    await first.aclose()

    second = make_provider()  # a restarted process
    assert (await second.retrieve(video.id)).status is VideoStatus.QUEUED
    fal.finish(request_id_of(video.id))
    size = await second.download(video.id, tmp_path / "clip.mp4")

    assert size > 0 and fal.count("result") == 1
    for call in fal.calls("status") + fal.calls("result"):
        assert call.path.startswith("/fal-ai/veo3.1/requests/")  # owner/app only, never /fast/


async def test_namespaced_workflow_ids_resume(provider, fal: FakeFalQueue) -> None:
    route = Route("fal", "workflows/acme/veo-pipeline/text-to-video")
    video = await provider.create(spec(route=route))

    await provider.retrieve(video.id)

    assert fal.calls("status")[-1].path.startswith("/workflows/acme/veo-pipeline/requests/")


async def test_no_remix_no_listing(provider) -> None:
    error = await expect_error(provider.remix("fal:x:y", "again"))
    assert error.kind is ErrorKind.BAD_REQUEST and "remix is not offered" in error.detail
    assert await provider.retrieve_many(["a", "b"], since=0.0) == {}
    assert provider.name == "fal" and provider.accepts_likeness


# -- doctor's key check ----------------------------------------------------------------------------


async def test_check_accepts_a_good_key_and_names_the_problem_otherwise(make_provider, fal: FakeFalQueue) -> None:
    assert await make_provider().check() is None
    [probe] = fal.calls("status")
    assert fal.count("submit") == 0 and probe.method == "GET"

    wrong = await make_provider(api_key="x:y").check()
    assert wrong is not None and "rejected the key" in wrong

    fal.exhausted_balance("status")
    broke = await make_provider().check()
    assert broke is not None and "billing" in broke

    unreachable = await make_provider(queue_url=f"http://127.0.0.1:{free_port()}").check()
    assert unreachable is not None and "unavailable" in unreachable


# -- webhooks -------------------------------------------------------------------------------------


def verify(jwks: dict[str, Any], headers: dict[str, str], raw: bytes) -> bool:
    """The reference's verification sketch (§8), trying every published key."""
    rid, uid = headers["X-Fal-Webhook-Request-Id"], headers["X-Fal-Webhook-User-Id"]
    message = f"{rid}\n{uid}\n{headers['X-Fal-Webhook-Timestamp']}\n{hashlib.sha256(raw).hexdigest()}".encode()
    for jwk in jwks["keys"]:
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4)))
            try:
                key.verify(bytes.fromhex(headers["X-Fal-Webhook-Signature"]), message)
                return True
            except InvalidSignature:
                pass
    return False


@pytest.fixture
async def receiver():
    """A webhook endpoint on 127.0.0.1 that records raw bodies and headers."""
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks/fal", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/hooks/fal", received
    await runner.cleanup()


async def test_webhook_url_is_passed_and_the_signed_callback_verifies(provider, fal: FakeFalQueue, receiver) -> None:
    url, received = receiver
    video = await provider.create(spec(webhook_url=f"{url}?job=42"))

    [call] = fal.calls("submit")
    assert call.query["fal_webhook"] == f"{url}?job=42"
    assert "fal_webhook=http%3A%2F%2F127.0.0.1" in call.raw_query and "%3Fjob%3D42" in call.raw_query
    [delivery] = await fal.wait_webhooks(1)
    assert delivery.status == 200
    headers, raw = received[0]
    body = json.loads(raw)
    assert body["status"] == "OK" and body["request_id"] == request_id_of(video.id)
    assert body["payload"]["video"]["url"].startswith(fal.queue_url)
    async with httpx.AsyncClient() as client:
        jwks = (await client.get(fal.jwks_url)).json()
    assert len(jwks["keys"]) == 2 and verify(jwks, headers, raw)
    assert headers["X-Fal-Webhook-User-Id"] == fal.user_id
    assert headers == headers | sign_fal_webhook(
        fal.signing_key, body["request_id"], fal.user_id, headers["X-Fal-Webhook-Timestamp"], raw
    )


async def test_webhook_knobs_bad_signature_repeat_and_drop(provider, fal: FakeFalQueue, receiver) -> None:
    url, received = receiver
    async with httpx.AsyncClient() as client:
        jwks = (await client.get(fal.jwks_url)).json()
    fal.webhook_bad_signature = True
    fal.webhook_repeat = 1
    await provider.create(spec(webhook_url=url))
    await fal.wait_webhooks(2)
    assert len(received) == 2 and not any(verify(jwks, h, raw) for h, raw in received)

    fal.plan(webhook_drop=True, render_seconds=0.0)
    lost = await provider.create(spec(webhook_url=url))
    await fal.wait_state(request_id_of(lost.id), "COMPLETED")
    assert (await provider.retrieve(lost.id)).status is VideoStatus.COMPLETED  # polling still finds it
    assert len(fal.webhooks) == 2


async def test_webhook_retries_a_failing_receiver_with_skewed_timestamps(provider, fal: FakeFalQueue) -> None:
    answers = [500, 200]

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=answers.pop(0))

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        fal.webhook_skew_seconds = -600
        await provider.create(spec(webhook_url=f"http://127.0.0.1:{runner.addresses[0][1]}/hook"))
        deliveries = await fal.wait_webhooks(2)
    finally:
        await runner.cleanup()

    assert [(d.attempt, d.status) for d in deliveries] == [(1, 500), (2, 200)]
    assert deliveries[0].body == deliveries[1].body
    stamp = int(deliveries[1].headers["X-Fal-Webhook-Timestamp"])
    assert 590 <= time.time() - stamp <= 630


async def test_the_fake_streams_status_until_completed(fal: FakeFalQueue, provider) -> None:
    fal.plan(render_seconds=0.2)
    video = await provider.create(VEO_SPEC)
    url = f"{fal.queue_url}/fal-ai/veo3.1/requests/{request_id_of(video.id)}/status/stream"
    events: list[dict[str, Any]] = []
    async with httpx.AsyncClient() as client:
        headers = {"Authorization": f"Key {fal.api_key}"}
        async with client.stream("GET", url, headers=headers, timeout=5) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            async for line in answer.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))

    assert events[-1]["status"] == "COMPLETED" and events[-1]["logs"] is None
    assert {e["status"] for e in events[:-1]} <= {"IN_QUEUE", "IN_PROGRESS"}


# -- a signed webhook's result --------------------------------------------------------------------------


async def test_a_webhook_result_spares_the_status_and_result_calls_and_a_bad_one_changes_nothing(
    provider, fal: FakeFalQueue
) -> None:
    fal.plan(render_seconds=0.05)
    video = await provider.create(spec())
    await until_done(provider, fal, video.id)
    # A payload without a usable URL (cut short, say) is not taken: the calls are made as before.
    assert not provider.take_webhook_result(video.id, {"status": "OK", "payload": {"video": {}}})
    assert not provider.take_webhook_result(video.id, {"status": "OK", "payload": None})
    assert not provider.take_webhook_result(video.id, {"status": "OK", "payload": {"video": {"url": "file:///x"}}})
    assert (fal.count("status"), fal.count("result")) == (0, 0)
    url = f"{fal.queue_url}/cdn/files/elsewhere/output.mp4"
    assert provider.take_webhook_result(video.id, {"status": "OK", "payload": {"video": {"url": url}}})
    done = await provider.retrieve(video.id)
    assert done.status is VideoStatus.COMPLETED and done.download_url == url
    assert (fal.count("status"), fal.count("result")) == (0, 0)
