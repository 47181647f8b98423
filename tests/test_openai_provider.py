"""The /v1/videos provider against the fake server over real loopback HTTP.

Retry waits go through an injected recorder, and the render timeline through a ``FakeClock``, so
nothing here sleeps for real except the few deliberate client timeouts (0.2 s each).
"""

from __future__ import annotations

import email.utils
import io
import json
import logging
import random
import socket
from pathlib import Path
from typing import Any

import av
import httpx
import pytest
from PIL import Image

from bot.providers.base import ErrorKind, ProviderError, ReferenceImage, RenderSpec, VideoStatus
from bot.providers.openai_videos import OpenAIVideosProvider
from bot.providers.openai_videos._retry import retry_after_seconds
from tests.fakes.videos_server import (
    MODERATION_MESSAGE,
    FakeClock,
    FakeVideosServer,
    encode_mp4,
)

pytestmark = pytest.mark.timeout(30)

SPEC = RenderSpec(prompt="a calico cat playing piano", model="sora-2", size="1280x720", seconds=8)
RENDER_SECONDS = 20.0


class SleepRecorder:
    """Stands in for ``asyncio.sleep``: records the waits and returns at once."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fake(clock: FakeClock):
    async with FakeVideosServer(clock=clock, render_seconds=RENDER_SECONDS) as server:
        yield server


@pytest.fixture
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@pytest.fixture
async def make_provider(fake: FakeVideosServer, sleeps: SleepRecorder):
    made: list[OpenAIVideosProvider] = []

    def factory(**overrides: Any) -> OpenAIVideosProvider:
        options: dict[str, Any] = {
            "api_key": fake.api_key,
            "base_url": fake.base_url,
            "sleep": sleeps,
            "rng": random.Random(7),
            "request_timeout": 5.0,
        }
        options.update(overrides)
        provider = OpenAIVideosProvider(**options)
        made.append(provider)
        return provider

    yield factory
    for provider in made:
        await provider.aclose()


@pytest.fixture
def provider(make_provider) -> OpenAIVideosProvider:
    return make_provider()


def png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


async def finished_video(provider: OpenAIVideosProvider, clock: FakeClock, spec: RenderSpec = SPEC) -> str:
    video = await provider.create(spec)
    clock.advance(RENDER_SECONDS + 1)
    return video.id


async def expect_error(awaitable: Any) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        await awaitable
    return caught.value


# -- create, retrieve, remix, delete ----------------------------------------------------------


async def test_create_sends_json_with_seconds_as_a_string(provider, fake: FakeVideosServer) -> None:
    video = await provider.create(SPEC)

    assert video.status is VideoStatus.QUEUED
    assert video.progress == 0
    assert video.id in fake.videos
    [request] = fake.calls("create")
    assert request.body_kind == "json"
    assert request.json == {"prompt": SPEC.prompt, "model": "sora-2", "seconds": "8", "size": "1280x720"}
    assert request.headers["authorization"] == f"Bearer {fake.api_key}"


async def test_create_with_reference_is_multipart_with_a_file_part(provider, fake: FakeVideosServer) -> None:
    image = png(1280, 720)
    spec = RenderSpec(SPEC.prompt, "sora-2", "1280x720", 4, ReferenceImage(image, "image/png", "first.png"))

    video = await provider.create(spec)

    assert video.status is VideoStatus.QUEUED
    [request] = fake.calls("create")
    assert request.body_kind == "multipart"
    assert request.form == {"prompt": SPEC.prompt, "model": "sora-2", "seconds": "4", "size": "1280x720"}
    upload = request.files["input_reference"]
    assert (upload.filename, upload.content_type, upload.data) == ("first.png", "image/png", image)


async def test_reference_of_the_wrong_size_is_a_bad_request_sent_once(provider, fake, sleeps) -> None:
    spec = RenderSpec(SPEC.prompt, "sora-2", "1280x720", 4, ReferenceImage(png(640, 360), "image/png", "r.png"))

    error = await expect_error(provider.create(spec))

    assert error.kind is ErrorKind.BAD_REQUEST
    assert "Inpaint image must match the requested width and height" in error.detail
    assert not error.retryable
    assert fake.count("create") == 1
    assert sleeps.calls == []


async def test_likeness_reference_is_refused_before_any_request(provider, fake) -> None:
    reference = ReferenceImage(png(1280, 720), "image/png", "cameo.png", is_likeness=True)

    error = await expect_error(provider.create(RenderSpec("hi", "sora-2", "1280x720", 4, reference)))

    assert error.kind is ErrorKind.BAD_REQUEST
    assert fake.count("*") == 0


async def test_retrieve_follows_the_timeline_and_reports_the_poll_hint(provider, fake, clock) -> None:
    fake.poll_after_ms = 1500
    video = await provider.create(SPEC)
    assert video.poll_after == 1.5

    clock.advance(RENDER_SECONDS / 2)
    halfway = await provider.retrieve(video.id)
    clock.advance(RENDER_SECONDS / 2 + 0.1)
    done = await provider.retrieve(video.id)

    assert (halfway.status, halfway.progress, halfway.poll_after) == (VideoStatus.IN_PROGRESS, 50, 1.5)
    assert (done.status, done.progress, done.error) == (VideoStatus.COMPLETED, 100, None)


async def test_retrieve_without_the_hint_header_has_no_poll_after(provider) -> None:
    video = await provider.retrieve((await provider.create(SPEC)).id)
    assert video.poll_after is None


async def test_remix_posts_json_prompt_and_links_the_source(provider, fake, clock) -> None:
    source = await finished_video(provider, clock)

    remix = await provider.remix(source, "now in the rain")

    [request] = fake.calls("remix")
    assert request.body_kind == "json"
    assert request.json == {"prompt": "now in the rain"}
    assert remix.status is VideoStatus.QUEUED
    assert fake.video(remix.id).remixed_from_video_id == source


async def test_delete_removes_the_video_and_a_second_delete_is_fine(provider, fake, clock) -> None:
    video_id = await finished_video(provider, clock)

    await provider.delete(video_id)
    await provider.delete(video_id)  # 404: already gone

    assert video_id not in fake.videos
    assert [r.method for r in fake.calls("delete")] == ["DELETE", "DELETE"]
    error = await expect_error(provider.retrieve(video_id))
    assert error.kind is ErrorKind.NOT_FOUND


# -- download ---------------------------------------------------------------------------------


async def test_download_streams_a_real_mp4_to_disk(provider, fake, clock, tmp_path: Path) -> None:
    video_id = await finished_video(provider, clock, RenderSpec("a boat", "sora-2", "720x1280", 4))
    dest = tmp_path / "clip.mp4"

    size = await provider.download(video_id, dest)

    assert size == dest.stat().st_size == len(encode_mp4(720, 1280, 4))
    assert list(tmp_path.iterdir()) == [dest]  # the temporary part file was renamed, not left behind
    with av.open(str(dest)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.width, stream.height) == ("h264", 720, 1280)
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.duration / 1_000_000 == pytest.approx(4.0, abs=0.2)
    [request] = fake.calls("content")
    assert request.headers["accept"] == "application/binary"


async def test_download_of_a_large_body_writes_every_byte(provider, fake, clock, tmp_path: Path) -> None:
    video_id = await finished_video(provider, clock)
    fake.set_content(video_id, size=9 * 1024 * 1024 + 123)

    size = await provider.download(video_id, tmp_path / "big.mp4")

    assert size == (tmp_path / "big.mp4").stat().st_size == 9 * 1024 * 1024 + 123


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"error": {"message": "not ready"}}', "application/json"),
        (b"<html><body>Login</body></html>", "text/html"),
        (b"<html><body>Login</body></html>", "video/mp4"),  # lies about its type: the magic check catches it
    ],
)
async def test_a_download_that_is_not_a_video_is_refused(
    provider, fake, clock, tmp_path: Path, body: bytes, content_type: str
) -> None:
    video_id = await finished_video(provider, clock)
    fake.set_content(video_id, data=body, content_type=content_type)

    error = await expect_error(provider.download(video_id, tmp_path / "clip.mp4"))

    assert error.kind is ErrorKind.BAD_RESPONSE
    assert list(tmp_path.iterdir()) == []


async def test_a_download_cut_off_midway_is_restarted(provider, fake, clock, sleeps, tmp_path: Path) -> None:
    video_id = await finished_video(provider, clock)
    fake.set_content(video_id, size=3 * 1024 * 1024)
    fake.inject("content", truncate_after=1024 * 1024)

    size = await provider.download(video_id, tmp_path / "clip.mp4")

    assert size == 3 * 1024 * 1024
    assert fake.count("content") == 2
    assert len(sleeps.calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


async def test_download_before_completion_is_an_error(provider, tmp_path: Path) -> None:
    video = await provider.create(SPEC)
    error = await expect_error(provider.download(video.id, tmp_path / "clip.mp4"))
    assert error.kind is ErrorKind.BAD_REQUEST
    assert "not ready" in error.detail


# -- relay variants ---------------------------------------------------------------------------


async def test_relay_shape_is_normalised_and_download_falls_back_to_its_url(
    make_provider, clock, tmp_path: Path
) -> None:
    async with FakeVideosServer(
        clock=clock, render_seconds=30, relay=True, content_endpoint=False, video_bytes=encode_mp4(1280, 720, 4)
    ) as relay:
        provider = make_provider(base_url=relay.base_url, api_key=relay.api_key)
        created = await provider.create(SPEC)
        clock.advance(10)
        running = await provider.retrieve(created.id)
        clock.advance(21)
        done = await provider.retrieve(created.id)

        size = await provider.download(created.id, tmp_path / "clip.mp4")

    assert created.status is VideoStatus.QUEUED
    assert (running.status, running.progress) == (VideoStatus.IN_PROGRESS, 33)
    assert done.status is VideoStatus.COMPLETED
    assert done.download_url == f"{relay.root_url}/files/{created.id}.mp4"
    assert size == len(encode_mp4(1280, 720, 4))
    assert [r.op for r in relay.requests[-2:]] == ["content", "file"]


async def test_relay_failure_with_a_moderation_reason_is_moderation(make_provider, clock) -> None:
    async with FakeVideosServer(clock=clock, render_seconds=10, relay=True) as relay:
        relay.plan(fail_code="moderation_blocked", fail_message=MODERATION_MESSAGE, fail_at_progress=20)
        provider = make_provider(base_url=relay.base_url, api_key=relay.api_key)
        video_id = (await provider.create(SPEC)).id
        clock.advance(5)
        failed = await provider.retrieve(video_id)

    assert failed.status is VideoStatus.FAILED
    assert failed.progress == 20
    assert failed.error is not None and failed.error.kind is ErrorKind.MODERATION


def mock_provider(payload: Any, *, headers: dict[str, str] | None = None) -> OpenAIVideosProvider:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json", **(headers or {})})

    return OpenAIVideosProvider(
        api_key="sk-mock", base_url="https://relay.example/v1", transport=httpx.MockTransport(handler)
    )


@pytest.mark.parametrize(
    ("payload", "status", "progress", "url"),
    [
        ({"id": "v1", "status": "queued", "progress": 0}, VideoStatus.QUEUED, 0, None),
        ({"id": "v1"}, VideoStatus.IN_PROGRESS, 0, None),  # missing keys
        (
            {"id": "v1", "status": None, "progress": None, "error": None, "completed_at": None},
            VideoStatus.IN_PROGRESS,
            0,
            None,
        ),
        (
            {"id": "v1", "status": "Processing", "progress": 33.7, "quality": "standard"},
            VideoStatus.IN_PROGRESS,
            33,
            None,
        ),
        ({"id": "v1", "status": "RUNNING", "progress": "45%"}, VideoStatus.IN_PROGRESS, 45, None),
        ({"task_id": "v1", "status": "NOT_START", "progress": "0%"}, VideoStatus.QUEUED, 0, None),
        ({"id": "v1", "status": "submitted"}, VideoStatus.QUEUED, 0, None),
        ({"id": "v1", "status": "pending", "progress": "n/a"}, VideoStatus.QUEUED, 0, None),
        (
            {
                "code": "success",
                "data": {
                    "task_id": "v1",
                    "status": "SUCCESS",
                    "progress": "100%",
                    "video_url": "https://cdn.example/v1.mp4",
                },
            },
            VideoStatus.COMPLETED,
            100,
            "https://cdn.example/v1.mp4",
        ),
        (
            {"data": {"id": "v1", "status": "succeeded", "download_url": "https://cdn.example/d.mp4"}},
            VideoStatus.COMPLETED,
            100,
            "https://cdn.example/d.mp4",
        ),
        ({"id": "v1", "status": "completed", "url": "ftp://nope"}, VideoStatus.COMPLETED, 100, None),
        ({"id": "v1", "status": "rendering_on_mars", "progress": 250}, VideoStatus.IN_PROGRESS, 100, None),
    ],
)
async def test_relay_shapes_normalise(payload: Any, status: VideoStatus, progress: int, url: str | None) -> None:
    async with mock_provider(payload, headers={"openai-poll-after-ms": "2500"}) as provider:
        video = await provider.retrieve("v1")
    assert (video.id, video.status, video.progress, video.download_url) == ("v1", status, progress, url)
    assert video.poll_after == 2.5


@pytest.mark.parametrize(
    ("payload", "kind", "retryable"),
    [
        (
            {"id": "v1", "status": "failed", "error": {"code": "moderation_blocked", "message": "blocked"}},
            ErrorKind.MODERATION,
            False,
        ),
        ({"id": "v1", "status": "FAILURE", "fail_reason": "output_moderation"}, ErrorKind.MODERATION, False),
        (
            {"id": "v1", "status": "failed", "error": {"code": "internal_error", "message": "oops"}},
            ErrorKind.SERVER,
            True,
        ),
        (
            {"id": "v1", "status": "failed", "error": "The model sora-2 has been retired"},
            ErrorKind.MODEL_UNAVAILABLE,
            False,
        ),
        ({"id": "v1", "status": "failed"}, ErrorKind.SERVER, False),
    ],
)
async def test_failed_jobs_carry_a_classified_error(payload: Any, kind: ErrorKind, retryable: bool) -> None:
    async with mock_provider(payload) as provider:
        video = await provider.retrieve("v1")
    assert video.status is VideoStatus.FAILED
    assert video.error is not None
    assert (video.error.kind, video.error.retryable) == (kind, retryable)


@pytest.mark.parametrize(
    "payload",
    [b"<html>oops</html>", b'{"id": "vid', [1, 2], {"status": "queued"}, {"data": {"status": "SUCCESS"}}, {"id": ""}],
)
async def test_unusable_answers_are_retryable_bad_responses(payload: Any) -> None:
    async with mock_provider(payload) as provider:
        error = await expect_error(provider.retrieve("v1"))
    assert (error.kind, error.retryable) == (ErrorKind.BAD_RESPONSE, True)


# -- retries ----------------------------------------------------------------------------------


async def test_429_waits_the_retry_after_seconds(provider, fake, sleeps) -> None:
    fake.rate_limit("create", times=2, retry_after=1)

    video = await provider.create(SPEC)

    assert video.status is VideoStatus.QUEUED
    assert sleeps.calls == [1.0, 1.0]
    assert fake.count("create") == 3
    assert len(fake.videos) == 1


async def test_retry_after_ms_wins_over_retry_after(provider, fake, sleeps) -> None:
    fake.rate_limit("retrieve", retry_after=3, retry_after_ms=250)
    video_id = (await provider.create(SPEC)).id

    await provider.retrieve(video_id)

    assert sleeps.calls == [0.25]


async def test_429_asking_for_more_than_two_minutes_is_handed_to_the_caller(provider, fake, sleeps) -> None:
    fake.rate_limit("create", retry_after=600)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.retryable, error.retry_after) == (ErrorKind.RATE_LIMITED, True, 600.0)
    assert sleeps.calls == []
    assert fake.count("create") == 1


async def test_429_without_a_wait_backs_off_and_ends_rate_limited(make_provider, fake, sleeps) -> None:
    provider = make_provider(max_retries=3)
    fake.rate_limit("create", times=None)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.retryable, error.status_code) == (ErrorKind.RATE_LIMITED, True, 429)
    assert fake.count("create") == 4
    assert len(sleeps.calls) == 3
    for n, wait in enumerate(sleeps.calls):
        assert 0.5 * 2**n * 0.75 <= wait <= 0.5 * 2**n


def test_retry_after_as_an_http_date() -> None:
    now = 1_760_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(httpx.Headers({"Retry-After": header}), now=lambda: now) == pytest.approx(30)
    assert retry_after_seconds(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after_seconds(httpx.Headers({"retry-after-ms": "-5", "Retry-After": "2"})) == 2.0


async def test_5xx_burst_then_success(provider, fake, sleeps) -> None:
    video_id = (await provider.create(SPEC)).id
    fake.server_errors("retrieve", times=3, status=503)

    video = await provider.retrieve(video_id)

    assert video.id == video_id
    assert fake.count("retrieve") == 4
    assert len(sleeps.calls) == 3
    for n, wait in enumerate(sleeps.calls):  # 0.5 s * 2^n with 0.75..1 jitter
        assert 0.5 * 2**n * 0.75 <= wait <= 0.5 * 2**n


async def test_create_is_resent_after_a_5xx_answer(provider, fake) -> None:
    fake.server_errors("create", times=1, status=500)
    await provider.create(SPEC)
    assert fake.count("create") == 2
    assert len(fake.videos) == 1


async def test_backoff_is_capped_at_eight_seconds(make_provider, fake, sleeps) -> None:
    provider = make_provider(max_retries=7)
    fake.server_errors("retrieve", times=None, status=500)

    error = await expect_error(provider.retrieve("video_x"))

    assert (error.kind, error.retryable, error.status_code) == (ErrorKind.SERVER, True, 500)
    assert fake.count("retrieve") == 8
    assert max(sleeps.calls) <= 8.0
    assert min(sleeps.calls[-3:]) >= 6.0


async def test_4xx_is_not_retried(provider, fake, sleeps) -> None:
    fake.inject("create", status=400, code="invalid_value", param="size", message="Size 99x99 is not supported.")

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.retryable) == (ErrorKind.BAD_REQUEST, False)
    assert error.detail == "Size 99x99 is not supported."
    assert "Size 99x99" in error.user_message
    assert fake.count("create") == 1
    assert sleeps.calls == []


async def test_x_should_retry_overrides_the_status(provider, fake, sleeps) -> None:
    video_id = (await provider.create(SPEC)).id
    fake.inject("retrieve", status=400, headers={"x-should-retry": "true"})
    await provider.retrieve(video_id)
    assert fake.count("retrieve") == 2

    fake.inject("retrieve", status=503, headers={"x-should-retry": "false"})
    error = await expect_error(provider.retrieve(video_id))
    assert error.kind is ErrorKind.SERVER
    assert fake.count("retrieve") == 3
    assert len(sleeps.calls) == 1


async def test_non_json_error_bodies_are_tolerated(make_provider, fake) -> None:
    provider = make_provider(max_retries=1)
    fake.inject(
        "retrieve",
        status=502,
        body=b"<html><body><h1>502 Bad Gateway</h1></body></html>",
        content_type="text/html",
        times=None,
    )

    error = await expect_error(provider.retrieve("video_x"))

    assert error.kind is ErrorKind.SERVER
    assert "502 Bad Gateway" in error.detail
    assert "<h1>" not in error.detail


# -- error kinds ------------------------------------------------------------------------------


async def test_bad_key_is_auth_and_the_key_never_shows(make_provider, fake, sleeps, caplog) -> None:
    secret = "sk-wrong-key-0123456789abcdef"
    provider = make_provider(api_key=secret)
    caplog.set_level(logging.DEBUG)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.retryable, error.status_code) == (ErrorKind.AUTH, False, 401)
    assert fake.count("create") == 1
    assert sleeps.calls == []
    for text in (repr(provider), str(vars(provider)), str(error), error.detail, caplog.text):
        assert secret not in text


async def test_moderation_at_create_is_moderation(provider, fake) -> None:
    fake.moderate_next_create()
    error = await expect_error(provider.create(SPEC))
    assert (error.kind, error.retryable, error.status_code) == (ErrorKind.MODERATION, False, 400)
    assert fake.count("create") == 1


async def test_moderated_prompt_terms_are_refused_at_create(make_provider, clock) -> None:
    async with FakeVideosServer(clock=clock, moderated_terms=["forbidden"]) as strict:
        provider = make_provider(base_url=strict.base_url, api_key=strict.api_key)
        error = await expect_error(provider.create(RenderSpec("a FORBIDDEN dance", "sora-2", "1280x720", 4)))
    assert error.kind is ErrorKind.MODERATION


async def test_moderation_of_a_running_job_fails_it_with_moderation(provider, fake, clock) -> None:
    fake.plan(fail_code="moderation_blocked", fail_message=MODERATION_MESSAGE, fail_at_progress=60)
    video_id = (await provider.create(SPEC)).id
    clock.advance(RENDER_SECONDS * 0.5)
    assert (await provider.retrieve(video_id)).status is VideoStatus.IN_PROGRESS
    clock.advance(RENDER_SECONDS * 0.2)

    failed = await provider.retrieve(video_id)

    assert (failed.status, failed.progress) == (VideoStatus.FAILED, 60)
    assert failed.error is not None
    assert (failed.error.kind, failed.error.retryable) == (ErrorKind.MODERATION, False)


@pytest.mark.parametrize("status", [404, 400])
async def test_model_not_found_is_model_unavailable(provider, fake, status: int) -> None:
    fake.model_not_found("create", status=status)
    error = await expect_error(provider.create(SPEC))
    assert (error.kind, error.retryable) == (ErrorKind.MODEL_UNAVAILABLE, False)


async def test_an_unknown_model_is_model_unavailable(provider) -> None:
    error = await expect_error(provider.create(RenderSpec("x", "sora-3", "1280x720", 4)))
    assert error.kind is ErrorKind.MODEL_UNAVAILABLE


async def test_a_retired_api_answer_is_model_unavailable(provider, fake) -> None:
    fake.inject("create", status=410, message="The Videos API has been shut down and sora-2 is retired.")
    error = await expect_error(provider.create(SPEC))
    assert error.kind is ErrorKind.MODEL_UNAVAILABLE


async def test_an_unknown_video_is_not_found(provider) -> None:
    error = await expect_error(provider.retrieve("video_does_not_exist"))
    assert (error.kind, error.status_code) == (ErrorKind.NOT_FOUND, 404)


# -- timeouts, resets, garbage ----------------------------------------------------------------


async def test_a_slow_retrieve_times_out_and_is_retried(make_provider, fake, sleeps) -> None:
    provider = make_provider(request_timeout=0.2)
    video_id = (await provider.create(SPEC)).id
    fake.inject("retrieve", delay=3)

    video = await provider.retrieve(video_id)

    assert video.id == video_id
    assert fake.count("retrieve") == 2
    assert len(sleeps.calls) == 1


async def test_retrieve_timeouts_exhausted_are_timeout(make_provider, fake) -> None:
    provider = make_provider(request_timeout=0.2, max_retries=1)
    fake.inject("retrieve", delay=3, times=None)

    error = await expect_error(provider.retrieve("video_x"))

    assert (error.kind, error.retryable) == (ErrorKind.TIMEOUT, True)
    assert fake.count("retrieve") == 2


async def test_a_create_that_timed_out_is_not_resent(make_provider, fake, sleeps) -> None:
    provider = make_provider(request_timeout=0.2)
    fake.inject("create", process=True, delay=3)  # the server starts the render, the answer is late

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.retryable) == (ErrorKind.TIMEOUT, True)
    assert "may have reached the server" in error.detail
    assert fake.count("create") == 1
    assert len(fake.videos) == 1  # why a blind resend would have paid twice
    assert sleeps.calls == []


async def test_a_reset_retrieve_is_retried(provider, fake, sleeps) -> None:
    video_id = (await provider.create(SPEC)).id
    fake.inject("retrieve", reset=True)

    assert (await provider.retrieve(video_id)).id == video_id
    assert fake.count("retrieve") == 2
    assert len(sleeps.calls) == 1


async def test_a_reset_create_is_not_resent(provider, fake, sleeps) -> None:
    fake.inject("create", process=True, reset=True)

    error = await expect_error(provider.create(SPEC))

    assert (error.kind, error.retryable) == (ErrorKind.UNAVAILABLE, True)
    assert fake.count("create") == 1
    assert sleeps.calls == []


async def test_connection_refused_is_unavailable_and_create_may_retry_it(sleeps) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with OpenAIVideosProvider(
        api_key="sk-x", base_url=f"http://127.0.0.1:{port}/v1", sleep=sleeps, max_retries=2
    ) as provider:
        error = await expect_error(provider.create(SPEC))
    assert (error.kind, error.retryable) == (ErrorKind.UNAVAILABLE, True)
    assert len(sleeps.calls) == 2  # nothing was sent, so resending a create is safe


async def test_garbage_json_is_a_retryable_bad_response(provider, fake) -> None:
    video_id = (await provider.create(SPEC)).id
    fake.inject("retrieve", garbage=True)

    error = await expect_error(provider.retrieve(video_id))

    assert (error.kind, error.retryable) == (ErrorKind.BAD_RESPONSE, True)
    assert fake.count("retrieve") == 1
    assert (await provider.retrieve(video_id)).id == video_id


async def test_garbage_after_create_says_the_render_may_exist(provider, fake) -> None:
    fake.inject("create", garbage=True, process=True)
    error = await expect_error(provider.create(SPEC))
    assert error.kind is ErrorKind.BAD_RESPONSE
    assert "may have been started" in error.detail


# -- the fake itself (other suites rely on its fidelity) --------------------------------------


@pytest.fixture
async def raw(fake: FakeVideosServer):
    async with httpx.AsyncClient(
        base_url=fake.base_url + "/", headers={"Authorization": f"Bearer {fake.api_key}"}
    ) as client:
        yield client


async def test_fake_create_answer_has_all_thirteen_fields(raw, fake) -> None:
    response = await raw.post("videos", json={"prompt": "x", "seconds": "4", "size": "720x1280"})
    assert response.status_code == 200
    assert set(response.json()) == {
        "id",
        "object",
        "model",
        "status",
        "progress",
        "created_at",
        "completed_at",
        "expires_at",
        "prompt",
        "size",
        "seconds",
        "remixed_from_video_id",
        "error",
    }
    assert response.json()["status"] == "queued"
    assert response.headers["x-ratelimit-limit-requests"]
    assert response.headers["x-ratelimit-remaining-requests"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"json": {"prompt": "x", "seconds": 8}}, "Invalid type for 'seconds'"),
        ({"json": {"prompt": ""}}, "string too short"),
        ({"json": {"prompt": "x" * 32_001}}, "string too long"),
        ({"json": {"prompt": "x", "model": "sora-2", "size": "1792x1024"}}, "Invalid value: '1792x1024'"),
        ({"json": {"prompt": "x", "n": 2}}, "Unknown parameter"),
        (
            {"data": {"prompt": "x", "input_reference": "https://x/y.png"}, "files": {"dummy": ("a", b"b")}},
            "Invalid type for 'input_reference': expected a file, but got a string instead.",
        ),
    ],
)
async def test_fake_validates_create_like_the_api(raw, kwargs: dict[str, Any], message: str) -> None:
    response = await raw.post("videos", **kwargs)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


async def test_fake_lists_with_cursor_pagination(raw, fake, clock) -> None:
    ids = []
    for n in range(5):
        ids.append((await raw.post("videos", json={"prompt": f"clip {n}"})).json()["id"])
        clock.advance(1)
    first = (await raw.get("videos", params={"limit": 2, "order": "asc"})).json()
    second = (await raw.get("videos", params={"limit": 2, "order": "asc", "after": first["last_id"]})).json()
    newest = (await raw.get("videos")).json()

    assert [v["id"] for v in first["data"]] == ids[:2] and first["has_more"] is True
    assert [v["id"] for v in second["data"]] == ids[2:4]
    assert [v["id"] for v in newest["data"]] == ids[::-1] and newest["has_more"] is False
    assert (await raw.get("videos", params={"limit": 101})).status_code == 400


async def test_fake_content_variants_and_auth(raw, fake, clock) -> None:
    video_id = (await raw.post("videos", json={"prompt": "x"})).json()["id"]
    early = await raw.get(f"videos/{video_id}/content")
    clock.advance(RENDER_SECONDS + 1)
    thumbnail = await raw.get(f"videos/{video_id}/content", params={"variant": "thumbnail"})
    sprites = await raw.get(f"videos/{video_id}/content", params={"variant": "spritesheet"})
    denied = await raw.get(f"videos/{video_id}", headers={"Authorization": "Bearer sk-nope-nope-nope"})

    assert early.status_code == 400 and early.json()["error"]["message"]
    assert thumbnail.headers["content-type"] == "image/webp" and thumbnail.content[8:12] == b"WEBP"
    assert sprites.headers["content-type"] == "image/jpeg" and sprites.content[:2] == b"\xff\xd8"
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"


async def test_fake_scripting_never_finish_finish_fail_and_omitted_nulls(provider, fake, clock) -> None:
    fake.omit_nulls = True
    fake.plan(never_finish=True)
    stuck = (await provider.create(SPEC)).id
    other = (await provider.create(SPEC)).id
    third = (await provider.create(SPEC)).id
    clock.advance(RENDER_SECONDS * 50)
    assert (await provider.retrieve(stuck)).progress == 99
    assert (await provider.retrieve(stuck)).status is VideoStatus.IN_PROGRESS
    fake.finish(stuck)
    assert (await provider.retrieve(stuck)).status is VideoStatus.COMPLETED
    assert (await provider.retrieve(other)).status is VideoStatus.COMPLETED
    fake.fail(third, code="internal_error", message="boom")
    failed = await provider.retrieve(third)
    assert failed.error is not None and (failed.error.kind, failed.error.retryable) == (ErrorKind.SERVER, True)


async def test_fake_caps_running_tasks_and_enforces_the_rate_limit(make_provider, clock) -> None:
    async with FakeVideosServer(
        clock=clock, render_seconds=10, max_running=1, rate_limit_rpm=3, enforce_rate_limit=True
    ) as strict:
        provider = make_provider(base_url=strict.base_url, api_key=strict.api_key, max_retries=0)
        await provider.create(SPEC)
        busy = await expect_error(provider.create(SPEC))
        clock.advance(11)
        await provider.create(SPEC)
        limited = await expect_error(provider.create(SPEC))
    assert (busy.kind, busy.retry_after) == (ErrorKind.RATE_LIMITED, None)
    assert "Too many running tasks" in busy.detail
    assert limited.kind is ErrorKind.RATE_LIMITED and limited.retry_after is not None and limited.retry_after >= 1


async def test_a_download_url_on_another_host_never_gets_the_key(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "cdn.example":
            return httpx.Response(
                200, content=b"\x00\x00\x00\x18ftypisom" + bytes(100), headers={"content-type": "video/mp4"}
            )
        if request.url.path.endswith("/content"):
            return httpx.Response(404, json={"error": {"message": "Not found", "type": "invalid_request_error"}})
        return httpx.Response(200, json={"id": "v1", "status": "SUCCESS", "video_url": "https://cdn.example/v1.mp4"})

    async with OpenAIVideosProvider(
        api_key="sk-secret-abc", base_url="https://relay.example/v1", transport=httpx.MockTransport(handler)
    ) as provider:
        size = await provider.download("v1", tmp_path / "clip.mp4")

    assert size == 112
    assert [(r.url.host, r.url.path) for r in seen] == [
        ("relay.example", "/v1/videos/v1/content"),
        ("relay.example", "/v1/videos/v1"),
        ("cdn.example", "/v1.mp4"),
    ]
    assert all("authorization" in r.headers for r in seen[:2])
    assert "authorization" not in seen[2].headers
