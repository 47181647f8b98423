"""Real providers through the real worker, end to end from the terminal (issue 10's Tests).

``build_app`` builds the fal and OpenRouter providers from settings (``FAL_KEY``/``FAL_QUEUE_URL``,
``OPENROUTER_API_KEY``/``OPENROUTER_BASE_URL``) exactly as ``reelbot serve`` does, pointed at the fake fal
queue and the fake OpenRouter on 127.0.0.1; requests go through ``ReelBot.handle`` and the worker drives
them into the store, the providers' real httpx code, the clip probe and a terminal delivery. Webhook
tests also run ``build_web``'s server on 127.0.0.1 with ``on_webhook=worker.on_webhook``, and the fakes
sign their callbacks with their own keys.

Render times on the fakes are short; every wait is a condition with a deadline. Waits the worker itself
would sleep (a Retry-After, a backoff) go through a recorder that keeps what was asked and returns
quickly, so the tests see the asked wait without spending it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import skimage

from adapters.console import ConsoleDelivery
from bot.app import App, build_app
from bot.config import Settings
from bot.core import Reply
from bot.delivery import CardView
from bot.jobs import ChatRequest, InputFile, Job, JobState, Requester
from bot.media import inspect_clip
from bot.providers.fal import request_id_of
from bot.web import WebServer, build_web
from tests.fakes.fal_queue import FakeFalQueue
from tests.fakes.openrouter_api import FakeOpenRouter

pytestmark = pytest.mark.timeout(90)

OR_WEBHOOK_SECRET = "or-webhook-secret-e2e-7c1d"
FACE = (Path(skimage.__file__).parent / "data" / "astronaut.png").read_bytes()  # ships with scikit-image


class RecordingDelivery(ConsoleDelivery):
    """The terminal delivery, keeping every card it was shown (our own interface: no protocol here)."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.cards: list[tuple[str, CardView]] = []

    async def post_card(self, job: Job, card: CardView) -> str:
        self.cards.append((job.id, card))
        return await super().post_card(job, card)

    async def update_card(self, job: Job, card: CardView) -> None:
        self.cards.append((job.id, card))
        await super().update_card(job, card)

    def cards_of(self, job_id: str) -> list[CardView]:
        return [card for jid, card in self.cards if jid == job_id]

    def said_about(self, job_id: str) -> list[str]:
        return [text for text in self.posts if job_id in text]


class SleepRecorder:
    """The worker's sleep: records each asked wait and yields briefly instead of spending it."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await asyncio.sleep(min(seconds, 0.02))


@dataclass
class Rig:
    app: App
    fal: FakeFalQueue
    openrouter: FakeOpenRouter
    delivery: RecordingDelivery
    sleeps: SleepRecorder
    web: WebServer | None = None
    users: dict[str, Requester] = field(default_factory=dict)

    async def say(self, text: str, *, user: str = "alice", attachments: tuple[InputFile, ...] = ()) -> Reply:
        request = ChatRequest(
            requester=Requester("console", "w1", user, f"@{user}"),
            request_key=f"k-{time.monotonic_ns()}",
            channel_id="terminal",
            text=text,
            attachments=attachments,
        )
        return await self.app.bot.handle(request)

    async def ask(self, text: str, *, user: str = "alice") -> Job:
        reply = await self.say(text, user=user)
        assert reply.ok and reply.job is not None, reply.text
        return reply.job

    async def finished(self, job_id: str, timeout: float = 30) -> Job:
        return await self.app.worker.wait_for(job_id, timeout=timeout)

    async def state(self, job_id: str, *states: JobState, timeout: float = 15) -> Job:
        async with asyncio.timeout(timeout):
            while True:
                job = await self.app.store.get_job(job_id)
                if job is not None and job.state in states:
                    return job
                await asyncio.sleep(0.02)

    async def ledger(self, job_id: str) -> list[tuple[str, int]]:
        return await self.app.store.ledger_for(job_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def make_rig(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Starts the fakes and the app; ``providers`` picks which keys are set, ``webhooks`` runs the web server."""
    stack = contextlib.AsyncExitStack()

    async def factory(
        *,
        providers: tuple[str, ...] = ("fal", "openrouter"),
        webhooks: bool = False,
        safety_poll_s: float | None = None,
        fal_render_s: float = 0.3,
        **env: object,
    ) -> Rig:
        fal = await stack.enter_async_context(FakeFalQueue(render_seconds=fal_render_s))
        openrouter = await stack.enter_async_context(
            FakeOpenRouter(shaped_clips=True, webhook_secret=OR_WEBHOOK_SECRET, pending_s=0.05, in_progress_s=0.25)
        )
        values: dict[str, object] = {"REELBOT_CAMEO_ADMIN_VERIFY": "never"}
        if "fal" in providers:
            values |= {"FAL_KEY": fal.api_key, "FAL_QUEUE_URL": fal.queue_url}
        if "openrouter" in providers:
            values |= {"OPENROUTER_API_KEY": openrouter.api_key, "OPENROUTER_BASE_URL": openrouter.base_url}
        if webhooks:
            port = free_port()
            values |= {
                "REELBOT_PUBLIC_URL": f"http://127.0.0.1:{port}",
                "REELBOT_HTTP_PORT": port,
                "FAL_JWKS_URL": fal.jwks_url,
                "FAL_USER_ID": fal.user_id,
                "OPENROUTER_WEBHOOK_SECRET": OR_WEBHOOK_SECRET,
            }
        values |= env
        settings = make_settings(**values)
        app = await build_app(settings, webhooks=settings.public_url is not None)  # as `reelbot serve` builds it
        stack.push_async_callback(app.close)
        delivery = RecordingDelivery()
        app.bot.register(delivery)
        app.worker.tick_seconds = 0.05
        sleeps = SleepRecorder()
        app.worker._sleep = sleeps  # the worker reads it at each wait (see Worker.__init__)
        if safety_poll_s is not None:
            app.worker.webhook_safety_poll_s = safety_poll_s
        web = None
        if webhooks:
            web = build_web(settings, on_webhook=app.worker.on_webhook, host="127.0.0.1")
            await web.start()
            stack.push_async_callback(web.stop)
        await app.worker.start()
        return Rig(app=app, fal=fal, openrouter=openrouter, delivery=delivery, sleeps=sleeps, web=web)

    async with stack:
        yield factory


def submitted(fal: FakeFalQueue) -> list[tuple[str, dict[str, Any]]]:
    return [(call.path, call.json) for call in fal.calls("submit")]


# -- each family's inputs as they reach the fake, delivered and priced ---------------------------------------


async def test_veo_on_fal_maps_8s_is_delivered_and_charged_exactly(make_rig) -> None:
    rig: Rig = await make_rig()
    job = await rig.ask("a paper boat in a rain gutter --model veo-3.1-fast --seconds 8 --seed 7 --negative blurry")
    assert job.cost_micros == 8 * 150_000  # veo-3.1-fast with sound: $0.15/s
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED and done.provider == "fal"
    [(path, body)] = submitted(rig.fal)
    assert path == "/fal-ai/veo3.1/fast"
    assert body["duration"] == "8s" and body["aspect_ratio"] == "16:9" and body["resolution"] == "720p"
    assert body["seed"] == 7 and body["negative_prompt"] == "blurry"
    info = inspect_clip(Path(done.clip_path))
    assert info.has_audio and abs(info.duration - 8) < 0.5
    assert await rig.ledger(job.id) == [("reserve", 1_200_000), ("settle", 1_200_000)]
    assert rig.openrouter.count("create") == 0
    caption = next(text for text in rig.delivery.said_about(job.id) if "📎" in text)
    assert "veo-3.1-fast" in caption and "via fal" in caption and "$1.20" in caption
    # the CDN link is public: the key never goes there
    assert all("authorization" not in call.headers for call in rig.fal.calls("cdn"))


async def test_kling_on_fal_maps_a_numeric_string(make_rig) -> None:
    rig: Rig = await make_rig(providers=("fal",))
    job = await rig.ask("a red kite over dunes --model kling-3 --seconds 5 --square")
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED, done.error
    [(path, body)] = submitted(rig.fal)
    assert path == "/fal-ai/kling-video/v3/standard/text-to-video"
    assert body["duration"] == "5" and body["aspect_ratio"] == "1:1"
    assert "resolution" not in body and "seed" not in body  # Kling takes neither
    assert await rig.ledger(job.id) == [("reserve", 5 * 126_000), ("settle", 5 * 126_000)]


async def test_ltx_on_fal_maps_an_integer(make_rig) -> None:
    rig: Rig = await make_rig(providers=("fal",))
    job = await rig.ask("a lighthouse at dusk --model ltx-2-fast --seconds 6")
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED, done.error
    [(path, body)] = submitted(rig.fal)
    assert path == "/fal-ai/ltx-2/text-to-video/fast"
    assert body["duration"] == 6 and isinstance(body["duration"], int)
    assert body["resolution"] == "1080p" and "aspect_ratio" not in body
    assert await rig.ledger(job.id) == [("reserve", 6 * 40_000), ("settle", 6 * 40_000)]


# -- the card while fal queues the render -------------------------------------------------------------------------


async def test_the_card_shows_fals_queue_position_while_queued_there(make_rig) -> None:
    rig: Rig = await make_rig(providers=("fal",))
    rig.fal.plan(hold=True)  # an earlier request of the same app stays queued at fal
    first = await rig.ask("first --model veo-3.1-fast --seconds 4")
    await rig.state(first.id, JobState.RENDERING)
    rig.fal.plan(hold=True)  # and so does the second, behind it
    second = await rig.ask("second --model veo-3.1-fast --seconds 4", user="bob")
    rendering = await rig.state(second.id, JobState.RENDERING)
    assert rendering.provider == "fal"

    def shown(job_id: str, text: str) -> bool:
        return any(card.state == "rendering" and text in card.status for card in rig.delivery.cards_of(job_id))

    async with asyncio.timeout(10):
        # while the job renders (queued at fal), not while it waits in reelbot's own queue
        while not (
            shown(first.id, "Queued at fal.ai (position 1)") and shown(second.id, "Queued at fal.ai (position 2)")
        ):
            await asyncio.sleep(0.05)
    for job in (first, second):
        rig.fal.release(request_id_of((await rig.app.store.get_job(job.id)).provider_video_id))
    for job in (first, second):
        assert (await rig.finished(job.id)).state is JobState.DELIVERED
    assert (await rig.app.store.get_job(second.id)).provider_position is None


# -- failures told, released, never charged ------------------------------------------------------------------


async def test_a_failure_that_reads_completed_is_failed_with_the_policy_reason_and_released(make_rig) -> None:
    rig: Rig = await make_rig()
    rig.fal.plan(outcome="content_policy", categories=("violence",))
    job = await rig.ask("a duel --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED
    assert "moderation" in (done.error or "").lower()
    assert [c.path for c in rig.fal.calls("result")]  # the status said COMPLETED; only the result told
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("release", 600_000)]
    told = " ".join(rig.delivery.said_about(job.id))
    assert "moderation" in told and "not charged" in told
    assert rig.openrouter.count("create") == 0  # a refusal of the prompt is not a reason to go elsewhere
    assert not list(rig.app.settings.clips_dir.glob("*.mp4"))


async def test_a_429_with_a_short_wait_is_retried_in_place_after_the_asked_wait(make_rig) -> None:
    rig: Rig = await make_rig()
    rig.fal.rate_limit(retry_after=3)
    job = await rig.ask("a tram in fog --model veo-3.1-lite --seconds 4")
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED and done.provider == "fal"
    assert 3.0 in rig.sleeps.asked  # Retry-After honoured
    assert rig.fal.count("submit") == 2 and len(rig.fal.queued) == 1
    assert rig.openrouter.count("create") == 0
    assert await rig.ledger(job.id) == [("reserve", 4 * 50_000), ("settle", 4 * 50_000)]


async def test_a_429_past_its_wait_moves_the_job_to_openrouter(make_rig) -> None:
    rig: Rig = await make_rig()
    rig.fal.rate_limit(retry_after=600)
    job = await rig.ask("a tram in fog --model veo-3.1-lite --seconds 4")
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED and done.provider == "openrouter"
    assert 600.0 not in rig.sleeps.asked
    [create] = rig.openrouter.calls("create")
    assert create.json["model"] == "google/veo-3.1-lite" and create.json["duration"] == 4
    assert await rig.ledger(job.id) == [("reserve", 200_000), ("settle", 200_000)]


async def test_openrouter_402_is_explained_to_an_admin_never_as_the_users_fault(
    make_rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig: Rig = await make_rig(providers=("openrouter",))
    rig.openrouter.no_credits()
    job = await rig.ask("a quiet harbour --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED
    told = " ".join(rig.delivery.said_about(job.id))
    assert "an admin needs to check its billing" in told and "not charged" in told
    assert "your budget" not in told.lower() and "you have" not in told.lower()
    assert "openrouter.ai/credits" not in told  # the remedy is for the admin, in the log
    assert "openrouter.ai/credits" in caplog.text
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("release", 600_000)]


async def test_openrouter_402_moves_a_kling_job_to_fal_before_anything_started(make_rig) -> None:
    rig: Rig = await make_rig()
    rig.openrouter.no_credits()
    job = await rig.ask("a dancer in rain --model kling-3 --seconds 10")
    assert job.provider == "openrouter"  # kling-3 prefers OpenRouter
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED and done.provider == "fal"
    [(path, body)] = submitted(rig.fal)
    assert path == "/fal-ai/kling-video/v3/standard/text-to-video" and body["duration"] == "10"
    assert await rig.ledger(job.id) == [("reserve", 1_260_000), ("settle", 1_260_000)]


async def test_a_wrong_fal_key_fails_the_job_with_an_admin_sentence_and_releases(make_rig) -> None:
    rig: Rig = await make_rig(providers=("fal",))
    rig.fal.api_key = "fal-key-id-0000:some-other-secret"  # the key reelbot holds is no longer accepted
    job = await rig.ask("a windmill --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED
    assert "API key" in (done.error or "") and "admin" in (done.error or "")
    assert rig.fal.count("submit") == 1 and not rig.fal.queued
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("release", 600_000)]


async def test_cancel_while_rendering_cancels_at_fal_and_releases(make_rig) -> None:
    rig: Rig = await make_rig()
    rig.fal.plan(hold_render=True)
    job = await rig.ask("a long shot --model veo-3.1-fast --seconds 4")
    rendering = await rig.state(job.id, JobState.RENDERING)
    rid = request_id_of(rendering.provider_video_id)
    await rig.fal.wait_state(rid, "IN_PROGRESS")
    reply = await rig.say(f"cancel {job.id}")
    assert reply.ok, reply.text
    done = await rig.finished(job.id)
    assert done.state is JobState.CANCELLED
    [cancel] = rig.fal.calls("cancel")
    assert cancel.path.endswith(f"/requests/{rid}/cancel") and rig.fal.queued[rid].cancelled
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("release", 600_000)]


# -- webhooks --------------------------------------------------------------------------------------------------


async def detection_delay(rig: Rig, job_id: str) -> float:
    """Seconds from fal's completion of the job's render to the worker moving the job past ``rendering``."""
    rendering = await rig.state(job_id, JobState.RENDERING, timeout=10)
    request = rig.fal.queued[request_id_of(rendering.provider_video_id)]
    await rig.state(job_id, JobState.DOWNLOADING, JobState.DELIVERING, JobState.DELIVERED, timeout=20)
    assert request.done_at is not None
    return time.monotonic() - request.done_at


async def test_a_signed_fal_webhook_finishes_the_job_well_before_the_safety_net_poll(make_rig) -> None:
    rig: Rig = await make_rig(webhooks=True, safety_poll_s=60.0)
    job = await rig.ask("a hummingbird --model veo-3.1-fast --seconds 4")
    delay = await detection_delay(rig, job.id)
    done = await rig.finished(job.id, timeout=20)
    assert done.state is JobState.DELIVERED
    [submit] = rig.fal.calls("submit")
    assert submit.query["fal_webhook"] == f"{rig.app.settings.public_url}/webhooks/fal?job={job.id}"
    [hook] = rig.fal.webhooks
    assert hook.status == 200
    assert delay < 3.0, delay  # the safety-net poll would only have come after 60 s
    # The signed OK body carried the result: after the first look, no status or result call was needed.
    assert rig.fal.count("status") <= 1 and rig.fal.count("result") == 0
    assert rig.fal.count("cdn") == 1
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("settle", 600_000)]


@pytest.mark.parametrize("fault", ["bad_signature", "old_timestamp"])
async def test_a_bad_or_old_fal_webhook_is_refused_and_polling_finishes_the_job(make_rig, fault: str) -> None:
    rig: Rig = await make_rig(webhooks=True, safety_poll_s=1.0)
    rig.fal.webhook_retries = 0
    if fault == "bad_signature":
        rig.fal.webhook_bad_signature = True
    else:
        rig.fal.webhook_skew_seconds = -3600  # far outside the 300 s window
    job = await rig.ask("a hummingbird --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id, timeout=20)
    assert done.state is JobState.DELIVERED
    [hook] = await rig.fal.wait_webhooks(1)
    assert hook.status == 401
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("settle", 600_000)]


async def test_a_repeated_fal_webhook_is_harmless(make_rig) -> None:
    rig: Rig = await make_rig(webhooks=True, safety_poll_s=60.0)
    rig.fal.webhook_repeat = 2
    job = await rig.ask("a hummingbird --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id, timeout=20)
    assert done.state is JobState.DELIVERED
    hooks = await rig.fal.wait_webhooks(3)
    assert [h.status for h in hooks] == [200, 200, 200]
    assert sum("📎" in text for text in rig.delivery.said_about(job.id)) == 1
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("settle", 600_000)]


async def test_a_lost_fal_webhook_is_caught_by_the_safety_net_poll(make_rig) -> None:
    rig: Rig = await make_rig(webhooks=True, safety_poll_s=1.0)
    rig.fal.plan(webhook_drop=True)
    job = await rig.ask("a hummingbird --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id, timeout=20)
    assert done.state is JobState.DELIVERED
    assert rig.fal.webhooks == []
    assert rig.fal.count("status") >= 1
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("settle", 600_000)]


async def test_a_signed_openrouter_webhook_finishes_the_job_before_the_safety_net(make_rig) -> None:
    rig: Rig = await make_rig(providers=("openrouter",), webhooks=True, safety_poll_s=60.0)
    job = await rig.ask("a hummingbird --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id, timeout=20)
    assert done.state is JobState.DELIVERED and done.provider == "openrouter"
    [create] = rig.openrouter.calls("create")
    assert create.json["callback_url"] == f"{rig.app.settings.public_url}/webhooks/openrouter?job={job.id}"
    [delivery] = await rig.openrouter.wait_for_deliveries(1)
    assert delivery.status == 200
    assert rig.openrouter.count("retrieve") <= 2


@pytest.mark.parametrize("fault", ["bad_signature", "old_timestamp", "lost", "repeat"])
async def test_openrouter_webhook_faults_never_lose_or_double_a_job(make_rig, fault: str) -> None:
    rig: Rig = await make_rig(providers=("openrouter",), webhooks=True, safety_poll_s=1.0)
    rig.openrouter.webhook_attempts = 1
    rig.openrouter.plan(webhook=fault)
    job = await rig.ask("a hummingbird --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id, timeout=20)
    assert done.state is JobState.DELIVERED
    if fault != "lost":
        statuses = [d.status for d in await rig.openrouter.wait_for_deliveries(2 if fault == "repeat" else 1)]
        assert set(statuses) == ({200} if fault == "repeat" else {401}), statuses
    assert sum("📎" in text for text in rig.delivery.said_about(job.id)) == 1
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("settle", 600_000)]


# -- failover ----------------------------------------------------------------------------------------------------


async def test_fal_ingress_503_moves_the_job_to_openrouter_at_the_models_price(make_rig) -> None:
    rig: Rig = await make_rig()
    rig.fal.ingress_error("submit", status=503, times=None)  # fal's front door is down: nothing is queued
    job = await rig.ask("a fox in snow --model veo-3.1-fast --seconds 4 --portrait")
    assert job.provider == "fal"
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED and done.provider == "openrouter"
    assert not rig.fal.queued  # fal never queued anything
    assert rig.fal.count("submit") == 1  # moved at once: waiting on a front door that queued nothing helps nobody
    assert rig.sleeps.asked == []
    [create] = rig.openrouter.calls("create")
    assert create.json["model"] == "google/veo-3.1-fast"
    assert create.json["aspect_ratio"] == "9:16" and create.json["duration"] == 4
    # the price stays the model's (fal's, the higher), reserved once and settled at the same amount
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("settle", 600_000)]
    told = " ".join(rig.delivery.said_about(job.id))
    assert "fal.ai could not take job" in told and "through OpenRouter instead, at the same price" in told
    assert any("via OpenRouter" in card.settings for card in rig.delivery.cards_of(job.id))
    caption = next(text for text in rig.delivery.said_about(job.id) if "📎" in text)
    assert "via OpenRouter" in caption and "$0.60" in caption


async def test_an_unreachable_fal_moves_the_job_to_openrouter(make_rig) -> None:
    rig: Rig = await make_rig(FAL_QUEUE_URL=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    job = await rig.ask("a fox in snow --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED and done.provider == "openrouter"
    assert rig.fal.count("submit") == 0 and rig.openrouter.count("create") == 1
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("settle", 600_000)]


async def test_an_ambiguous_fal_500_with_a_request_id_never_moves_and_is_never_sent_twice(make_rig) -> None:
    rig: Rig = await make_rig()
    rig.fal.app_error("submit", process=True)  # fal queued it, then answered 500 with its request id
    job = await rig.ask("a fox in snow --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED and done.provider == "fal"
    assert rig.fal.count("submit") == 1 and len(rig.fal.queued) == 1
    assert rig.openrouter.count("create") == 0
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("release", 600_000)]
    assert "not charged" in " ".join(rig.delivery.said_about(job.id))


# -- clip checks -------------------------------------------------------------------------------------------------


async def test_a_silent_clip_is_accepted_when_silence_was_asked_and_priced_silent(make_rig) -> None:
    rig: Rig = await make_rig(providers=("fal",))
    job = await rig.ask("a snowy street --model veo-3.1-fast --seconds 4 --silent")
    assert job.cost_micros == 4 * 100_000
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED, done.error
    [(_, body)] = submitted(rig.fal)
    assert body["generate_audio"] is False
    assert not inspect_clip(Path(done.clip_path)).has_audio
    assert await rig.ledger(job.id) == [("reserve", 400_000), ("settle", 400_000)]


async def test_a_silent_model_from_the_operator_file_is_accepted_without_a_sound_track(
    make_rig, tmp_path: Path
) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[models."wan-silent"]\n'
        'label = "Wan 2.2 (silent)"\nfamily = "wan"\n'
        'routes = [{ provider = "fal", model_id = "fal-ai/wan/v2.2-a14b/text-to-video" }]\n'
        'durations = [5]\naspects = ["16:9"]\nresolutions = ["720p"]\naudio = "never"\n'
        'prices = { "720p" = { silent = 40_000 } }\n'
    )
    rig: Rig = await make_rig(providers=("fal",), REELBOT_MODELS_FILE=str(models))
    job = await rig.ask("a paper crane --model wan-silent --seconds 5")
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED, done.error
    [(path, body)] = submitted(rig.fal)
    assert path == "/fal-ai/wan/v2.2-a14b/text-to-video" and "duration" not in body
    assert not inspect_clip(Path(done.clip_path)).has_audio
    assert await rig.ledger(job.id) == [("reserve", 200_000), ("settle", 200_000)]


async def test_a_clip_missing_its_promised_sound_is_failed_and_unbilled(make_rig) -> None:
    rig: Rig = await make_rig(providers=("fal",))
    rig.fal.plan(audio=False)  # the model dropped the sound it was paid for
    job = await rig.ask("a brass band --model veo-3.1-fast --seconds 4")
    done = await rig.finished(job.id)
    assert done.state is JobState.FAILED
    assert "sound" in (done.error or "")
    assert await rig.ledger(job.id) == [("reserve", 600_000), ("release", 600_000)]
    assert not list(rig.app.settings.clips_dir.glob("*.mp4"))


# -- cameos on real models ---------------------------------------------------------------------------------------


async def register_cameo(rig: Rig, user: str) -> None:
    reply = await rig.say("cameo register", user=user, attachments=(InputFile("me.png", "image/png", FACE),))
    assert reply.ok, reply.text
    confirmed = await rig.say("cameo confirm", user=user)
    assert confirmed.ok and "active" in confirmed.text, confirmed.text


async def test_a_cameo_goes_to_veo_on_fal_as_the_subject_reference(make_rig) -> None:
    rig: Rig = await make_rig()
    await register_cameo(rig, "alice")
    job = await rig.ask("a walk on the beach --cameo @alice --model veo-3.1 --seconds 4")
    done = await rig.finished(job.id)
    assert done.state is JobState.DELIVERED, done.error
    [(path, body)] = submitted(rig.fal)
    assert path == "/fal-ai/veo3.1/reference-to-video"
    [reference] = body["image_urls"]
    assert reference.startswith(("data:image/png;base64,", "data:image/jpeg;base64,"))
    assert "image_url" not in body  # a subject reference, not a first frame
    assert await rig.ledger(job.id) == [("reserve", 1_600_000), ("settle", 1_600_000)]


async def test_a_cameo_for_a_model_that_cannot_is_refused_naming_those_that_can(make_rig) -> None:
    rig: Rig = await make_rig()
    await register_cameo(rig, "alice")
    reply = await rig.say("a walk on the beach --cameo @alice --model veo-3.1-fast --seconds 4")
    assert not reply.ok
    assert "veo-3.1-fast can't use a cameo" in reply.text and "veo-3.1" in reply.text.split("Models that can:")[1]
    assert rig.fal.count("submit") == 0 and rig.openrouter.count("create") == 0
    assert (await rig.app.store.ledger_totals()).reserved == 0
