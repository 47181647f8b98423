"""The core end to end on the embedded renderer: jobs, budgets, caps, cancel, delivery, resume."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from adapters.console import ConsoleDelivery
from bot.app import App, build_app
from bot.config import Settings
from bot.delivery import DeliveryError
from bot.jobs import ChatRequest, InputFile, Job, JobOptions, JobState, Requester
from bot.media import probe_clip
from bot.providers.local import LocalRenderer
from tests.media_factory import image_bytes

pytestmark = pytest.mark.timeout(60)


def ask(
    text: str,
    user: str = "alice",
    key: str | None = None,
    *,
    admin: bool = False,
    attachments: tuple[InputFile, ...] = (),
    workspace: str = "w1",
) -> ChatRequest:
    return ChatRequest(
        requester=Requester("console", workspace, user, f"@{user}", is_admin=admin),
        request_key=key or f"k-{time.monotonic_ns()}",
        channel_id="terminal",
        text=text,
        attachments=attachments,
    )


class FlakyDelivery(ConsoleDelivery):
    """A terminal delivery whose uploads fail a set number of times (our own interface: no protocol)."""

    def __init__(self, failures: int, *, retryable: bool = False) -> None:
        super().__init__(quiet=True)
        self.failures = failures
        self.retryable = retryable
        self.uploads = 0

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise DeliveryError("The upload was refused (test).", retryable=self.retryable)
        self.uploads += 1
        return await super().post_clip(job, clip, caption)


async def start(
    settings: Settings, *, delivery: ConsoleDelivery | None = None, min_render: float = 0.0, fps: int = 12
) -> App:
    provider = LocalRenderer(work_dir=settings.data_dir / "renders", fps=fps, min_render_seconds=min_render)
    app = await build_app(settings, provider=provider)
    app.bot.register(delivery or ConsoleDelivery(quiet=True))
    app.worker.tick_seconds = 0.1
    await app.worker.start()
    return app


@pytest.fixture
async def running(make_settings: Callable[..., Settings]) -> AsyncIterator[App]:
    app = await start(make_settings())
    yield app
    await app.close()


async def wait_state(app: App, job_id: str, *states: JobState, timeout: float = 20) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = await app.store.get_job(job_id)
        if job is not None and job.state in states:
            return job
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {states}; it is {job.state if job else None}")


async def test_a_request_becomes_a_delivered_clip_and_is_charged_once(running: App) -> None:
    reply = await running.bot.handle(ask("a calico cat playing piano --seconds 4"))
    assert reply.ok and reply.job is not None
    assert "queued" in reply.text and "$0.40" in reply.text
    job = await running.worker.wait_for(reply.job.id, timeout=30)
    assert job.state is JobState.DELIVERED
    info = probe_clip(Path(job.clip_path), seconds=4, size="1280x720")
    assert info.has_audio and info.video_codec == "h264"
    assert await running.store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]
    budget = await running.bot.handle(ask("budget"))
    assert "spent $0.40" in budget.text and "remaining $9.60" in budget.text
    jobs = await running.bot.handle(ask("jobs"))
    assert job.id in jobs.text and "Delivered" in jobs.text


async def test_the_same_platform_request_twice_makes_one_job(running: App) -> None:
    first, second = await asyncio.gather(
        running.bot.handle(ask("a paper boat", key="slack:cmd:T1")),
        running.bot.handle(ask("a paper boat", key="slack:cmd:T1")),
    )
    assert first.job is not None and second.job is not None
    assert first.job.id == second.job.id
    await running.worker.wait_for(first.job.id, timeout=30)
    totals = await running.store.ledger_totals()
    assert totals.reserved == totals.settled == 400_000


async def test_budget_refusal_says_cost_and_what_is_left_and_charges_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    app = await start(make_settings(REELBOT_USER_BUDGET_USD="1.00"))
    try:
        reply = await app.bot.handle(ask("a lighthouse --pro --seconds 8"))
        assert not reply.ok
        assert "costs $2.40" in reply.text and "$1.00 left" in reply.text and "Nothing was charged" in reply.text
        assert reply.job is not None and reply.job.state is JobState.REFUSED
        assert (await app.store.ledger_totals()).reserved == 0
        assert not list((app.settings.clips_dir).glob("*.mp4"))
    finally:
        await app.close()


async def test_warning_at_80_percent_once(make_settings: Callable[..., Settings]) -> None:
    app = await start(make_settings(REELBOT_USER_BUDGET_USD="1.00"))
    try:
        replies = [await app.bot.handle(ask(f"clip {i}")) for i in range(3)]
        assert ["80%" in r.text for r in replies] == [False, True, False]
    finally:
        await app.close()


async def test_bad_input_gets_one_clear_line_and_no_job(running: App) -> None:
    for text, fragment in [
        ("a cat --seconds 5", "sora-2 takes 4, 8 or 12 seconds (got 5)"),
        ("a cat --size 1792x1024", "sora-2 takes sizes 1280x720 or 720x1280 (got 1792x1024)"),
        ("", "Tell me what to film"),
    ]:
        reply = await running.bot.handle(ask(text))
        assert not reply.ok and fragment in reply.text and reply.job is None
    gif = InputFile("cat.png", "image/png", b"GIF89a" + b"\0" * 100)
    reply = await running.bot.handle(ask("a cat", attachments=(gif,)))
    assert not reply.ok and "JPEG, PNG" in reply.text
    assert (await running.store.ledger_totals()).reserved == 0


async def test_a_reference_image_is_fitted_and_used(running: App) -> None:
    png = InputFile("boat.png", "image/png", image_bytes("PNG", 640, 480, color=(200, 30, 30)))
    reply = await running.bot.handle(ask("a paper boat", attachments=(png,)))
    assert reply.ok and reply.job is not None
    job = await running.worker.wait_for(reply.job.id, timeout=30)
    assert job.state is JobState.DELIVERED
    assert job.reference_path and Path(job.reference_path).exists()


async def test_cancel_while_queued_and_while_rendering_releases_the_money(
    make_settings: Callable[..., Settings],
) -> None:
    app = await start(make_settings(REELBOT_MAX_JOBS_IN_FLIGHT=1), min_render=6)
    try:
        first = (await app.bot.handle(ask("first"))).job
        second_reply = await app.bot.handle(ask("second"))
        assert "position 2" in second_reply.text or "position 1" in second_reply.text
        second = second_reply.job
        await wait_state(app, first.id, JobState.RENDERING)
        assert (await app.store.get_job(second.id)).state is JobState.QUEUED

        refused = await app.bot.handle(ask(f"cancel {first.id}", user="mallory"))
        assert not refused.ok and "Only the person who asked" in refused.text

        queued_cancel = await app.bot.handle(ask(f"cancel {second.id}"))
        assert queued_cancel.ok and "cancelled" in queued_cancel.text
        rendering_cancel = await app.bot.handle(ask(f"cancel {first.id}", user="boss", admin=True))
        assert rendering_cancel.ok
        done = await app.worker.wait_for(first.id, timeout=20)
        assert done.state is JobState.CANCELLED
        assert await app.store.ledger_for(first.id) == [("reserve", 400_000), ("release", 400_000)]
        assert await app.store.ledger_for(second.id) == [("reserve", 400_000), ("release", 400_000)]
        assert not (app.settings.data_dir / "renders" / f"{done.provider_video_id}.mp4").exists()
    finally:
        await app.close()


async def test_caps_limit_jobs_in_flight_per_user(make_settings: Callable[..., Settings]) -> None:
    app = await start(make_settings(REELBOT_MAX_JOBS_PER_USER=1, REELBOT_MAX_JOBS_IN_FLIGHT=5), min_render=2)
    try:
        jobs = [(await app.bot.handle(ask(f"clip {i}"))).job for i in range(3)]
        other = (await app.bot.handle(ask("bob's clip", user="bob"))).job
        await wait_state(app, jobs[0].id, JobState.RENDERING)
        await wait_state(app, other.id, JobState.RENDERING)
        states = [(await app.store.get_job(j.id)).state for j in jobs[1:]]
        assert states == [JobState.QUEUED, JobState.QUEUED]
        for job in [*jobs, other]:
            assert (await app.worker.wait_for(job.id, timeout=40)).state is JobState.DELIVERED
    finally:
        await app.close()


async def test_undelivered_clip_can_be_delivered_again_and_is_charged_once(
    make_settings: Callable[..., Settings],
) -> None:
    delivery = FlakyDelivery(failures=1)
    app = await start(make_settings(), delivery=delivery)
    try:
        job = (await app.bot.handle(ask("a kite"))).job
        stuck = await app.worker.wait_for(job.id, timeout=30)
        assert stuck.state is JobState.UNDELIVERED and "refused" in stuck.error
        assert any("/video retry" in post for post in delivery.posts)
        assert await app.store.ledger_for(job.id) == [("reserve", 400_000)]
        other = await app.bot.handle(ask(f"retry {job.id}", user="mallory"))
        assert not other.ok
        retry = await app.bot.handle(ask(f"retry {job.id}"))
        assert retry.ok
        done = await app.worker.wait_for(job.id, timeout=30)
        assert done.state is JobState.DELIVERED and delivery.uploads == 1
        assert await app.store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]
    finally:
        await app.close()


async def test_transient_upload_errors_are_retried(make_settings: Callable[..., Settings]) -> None:
    delivery = FlakyDelivery(failures=1, retryable=True)
    app = await start(make_settings(), delivery=delivery)
    app.worker._sleep = lambda _s: asyncio.sleep(0)
    try:
        job = (await app.bot.handle(ask("a kite"))).job
        done = await app.worker.wait_for(job.id, timeout=30)
        assert done.state is JobState.DELIVERED and delivery.uploads == 1
    finally:
        await app.close()


@pytest.mark.parametrize(
    "crash_at",
    [
        "received",
        "queued",
        "submitting",
        "sent_not_recorded",
        "rendering",
        "downloading",
        "delivering",
        "delivered_not_recorded",
    ],
)
async def test_a_restart_at_any_state_finishes_every_job_once(
    make_settings: Callable[..., Settings], crash_at: str
) -> None:
    """Writes the state a crash would leave behind, then starts a fresh process on the same data dir."""
    settings = make_settings()
    provider = LocalRenderer(work_dir=settings.data_dir / "renders", fps=12)
    first = await build_app(settings, provider=provider)
    delivery = ConsoleDelivery(quiet=True)
    first.bot.register(delivery)  # registered, but the worker never starts: the process "dies" here
    store = first.store
    if crash_at == "received":
        # Written, then the process died before admission: nothing reserved, the row a minute old.
        now = time.time() - 60
        job, _ = await store.insert_job(
            Job(
                id="crashrcv",
                request_key="k-crash-received",
                platform="console",
                workspace_id="w1",
                user_id="alice",
                user_name="@alice",
                channel_id="terminal",
                thread_id=None,
                prompt="a restart test",
                options=JobOptions("sora-2", "1280x720", 4),
                state=JobState.RECEIVED,
                cost_micros=400_000,
                created_at=now,
                updated_at=now,
                provider=provider.name,
            )
        )
    else:
        job = (await first.bot.handle(ask("a restart test"))).job
    if crash_at not in ("received", "queued"):
        await store.transition(job.id, JobState.SUBMITTING, started_at=time.time())
        if crash_at == "sent_not_recorded":
            await provider.create(first.worker._spec(job))  # the create went out; its id was never stored
        elif crash_at != "submitting":
            video = await provider.create(first.worker._spec(job))
            await store.transition(job.id, JobState.RENDERING, provider_video_id=video.id)
            if crash_at != "rendering":
                while (await provider.retrieve(video.id)).status != "completed":
                    await asyncio.sleep(0.05)
                await store.transition(job.id, JobState.DOWNLOADING)
                if crash_at != "downloading":
                    dest = settings.clips_dir / f"{job.id}.mp4"
                    settings.clips_dir.mkdir(parents=True, exist_ok=True)
                    await provider.download(video.id, dest)
                    job = await store.transition(job.id, JobState.DELIVERING, clip_path=str(dest))
                    if crash_at == "delivered_not_recorded":
                        await delivery.post_clip(job, dest, "posted before the crash")
    await first.close()

    second = await start(settings)
    try:
        second_delivery = second.bot.deliveries["console"]
        done = await second.worker.wait_for(job.id, timeout=30)
        assert done.state is JobState.DELIVERED
        uploads = len([p for p in second_delivery.posts if "📎" in p])
        assert uploads == (0 if crash_at == "delivered_not_recorded" else 1)
        assert await second.store.ledger_for(job.id) == [("reserve", 400_000), ("settle", 400_000)]
        totals = await second.store.ledger_totals()
        assert totals.reserved == totals.settled + totals.released
        renders = list((settings.data_dir / "renders").glob("local_*.json"))
        assert len(renders) == 1  # rendered (and paid for at the provider) exactly once
    finally:
        await second.close()


async def test_a_render_that_outlives_the_deadline_fails_unbilled(make_settings: Callable[..., Settings]) -> None:
    app = await start(make_settings(REELBOT_RENDER_DEADLINE_S=0.5), min_render=5)
    try:
        job = (await app.bot.handle(ask("a slow render"))).job
        done = await app.worker.wait_for(job.id, timeout=20)
        assert done.state is JobState.FAILED and "did not finish" in done.error
        assert await app.store.ledger_for(job.id) == [("reserve", 400_000), ("release", 400_000)]
    finally:
        await app.close()


async def test_admin_budget_and_usage(running: App) -> None:
    refused = await running.bot.handle(ask("admin budget @bob 50"))
    assert not refused.ok and "Only workspace admins" in refused.text
    ok = await running.bot.handle(ask("admin budget @bob 0.50", user="root", admin=True))
    assert ok.ok and "$0.50" in ok.text
    bob = await running.bot.handle(ask("a cat --seconds 8", user="bob"))
    assert not bob.ok and "$0.50" in bob.text
    default = await running.bot.handle(ask("admin budget default 20", user="root", admin=True))
    assert default.ok
    alice = await running.bot.handle(ask("budget"))
    assert "limit $20.00" in alice.text
    await running.bot.handle(ask("a cat"))
    usage = await running.bot.handle(ask("admin usage", user="root", admin=True))
    assert usage.ok and "@alice" in usage.text


async def test_reroll_makes_a_new_job_with_the_same_settings(running: App) -> None:
    first = await running.worker.wait_for((await running.bot.handle(ask("a fox --portrait"))).job.id, timeout=30)
    requester = Requester("console", "w1", "alice", "@alice")
    reply = await running.bot.reroll(requester, first.id, request_key="reroll-1")
    assert reply.ok and reply.job.id != first.id
    again = await running.bot.reroll(requester, first.id, request_key="reroll-1")  # the same press twice
    assert again.job.id == reply.job.id
    second = await running.worker.wait_for(reply.job.id, timeout=30)
    assert second.state is JobState.DELIVERED and second.options == first.options and second.prompt == first.prompt
