"""Revoking a cameo tells the truth in every job state and leaves no copy of the likeness (issue 11).

The real store, worker and local renderer; the console delivery can hold an upload open (or refuse
it) and the renderer can hold a download open, so the revocation lands in exactly the state named.
After revoking, every job is driven to its end and the data directory is walked: no file of the
likeness may be left but a posted clip (which goes with its post, by the owner's button).
"""

from __future__ import annotations

import asyncio
import functools
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.console import ConsoleDelivery
from bot.app import App, build_app
from bot.config import Settings
from bot.delivery import DeliveryError
from bot.jobs import Job, JobState
from bot.providers.local import LocalRenderer
from tests.test_consent import FACE, register, say

pytestmark = pytest.mark.timeout(180)


class HeldDelivery(ConsoleDelivery):
    """The console delivery, with an upload that can be held open or refused."""

    def __init__(self) -> None:
        super().__init__(quiet=True)
        self.hold = False
        self.refuse = False
        self.uploading = asyncio.Event()
        self.release = asyncio.Event()
        self.posted: list[str] = []
        self.told: list[tuple[str, str]] = []  # (job id, text) of every notice, as sent
        self.deleted: list[str] = []  # job ids whose post was taken down

    async def delete_message(self, job: Job, ref: str) -> None:
        self.deleted.append(job.id)
        await super().delete_message(job, ref)

    async def notify(self, job: Job, text: str) -> None:
        self.told.append((job.id, text))
        await super().notify(job, text)

    async def post_clip(self, job: Job, clip: Path, caption: str) -> str:
        if self.refuse:
            raise DeliveryError("I am not in that channel.", retryable=False)
        if self.hold:
            self.uploading.set()
            await self.release.wait()
        ref = await super().post_clip(job, clip, caption)
        self.posted.append(job.id)
        return ref


class HeldRenderer(LocalRenderer):
    """The local renderer, with a download that can be held open."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.hold = False
        self.downloading = asyncio.Event()
        self.release = asyncio.Event()

    async def download(self, video_id: str, dest: Path) -> int:
        if self.hold:
            self.downloading.set()
            await self.release.wait()
        return await super().download(video_id, dest)


async def wait_until(predicate: Callable[[], object], *, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await predicate():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def in_state(app: App, job_id: str, state: JobState) -> None:
    async def reached() -> bool:
        return (await app.store.get_job(job_id)).state is state

    await wait_until(reached)


async def likeness_copies(app: App, jobs: list[Job]) -> set[Path]:
    """Every file that holds the likeness, as far as anyone could know before revoking."""
    data = app.settings.data_dir
    paths = {Path(p) for p in await app.bot.cameos.store.files("console:w1:alice")}
    for job in jobs:
        job = await app.store.get_job(job.id)
        paths |= {Path(p) for p in (job.reference_path, job.clip_path) if p}
        paths |= set((data / "clips").glob(f"{job.id}.*"))
        if job.provider_video_id:
            paths |= set((data / "renders").glob(f"{job.provider_video_id}*"))
    return paths


def leftovers(app: App, jobs: list[Job], likeness: set[bytes], posted_clips: set[Path]) -> list[Path]:
    """Files under the data dir that are a copy of the likeness or belong to a job that used it."""
    names = {j.id for j in jobs if j.state is not JobState.DELIVERED}  # a posted job's marker is no likeness
    names |= {j.provider_video_id for j in jobs if j.provider_video_id}
    found = []
    for path in app.settings.data_dir.rglob("*"):
        if not path.is_file() or path in posted_clips or path.name.startswith("reelbot.db"):
            continue
        # The console's ``.delivered`` marker holds a post reference, not a picture: only its bytes are checked.
        named = any(name in path.name for name in names) and not path.name.endswith(".delivered")
        if named or path.read_bytes() in likeness:
            found.append(path)
    return found


STATES = ["pending_consent", "queued", "rendering", "downloading", "delivering", "undelivered", "delivered"]


@pytest.mark.parametrize(
    ("state", "answer_at_once"),
    [(state, False) for state in STATES] + [("rendering", True), ("delivering", True)],
)
async def test_revoking_tells_the_truth_and_leaves_no_copy(
    make_settings: Callable[..., Settings], state: str, answer_at_once: bool
) -> None:
    """``answer_at_once``: revocation answers without waiting for the worker to stop the job."""
    settings = make_settings(REELBOT_ADMIN_IDS="root", REELBOT_MAX_JOBS_IN_FLIGHT=1)
    renderer = HeldRenderer(work_dir=settings.data_dir / "renders", fps=12, min_render_seconds=0.0)
    app = await build_app(settings, provider=renderer)
    delivery = HeldDelivery()
    app.bot.register(delivery)
    app.worker.tick_seconds = 0.1
    if answer_at_once:
        app.bot.stop_job = functools.partial(app.bot.stop_job, wait_s=0.0)  # type: ignore[method-assign]
    await app.worker.start()
    try:
        await register(app, "alice")
        await say(app, "alice", "cameo audience approved" if state == "pending_consent" else "cameo audience everyone")
        jobs: list[Job] = []
        match state:
            case "pending_consent":
                job = (await say(app, "bob", "a dance --cameo @alice")).job
                await in_state(app, job.id, JobState.PENDING_CONSENT)
            case "queued":
                renderer.hold = True  # the first job holds the only slot, so the second stays queued
                jobs.append((await say(app, "carol", "ahead --cameo @alice")).job)
                await asyncio.wait_for(renderer.downloading.wait(), 30)
                job = (await say(app, "bob", "a dance --cameo @alice")).job
                await in_state(app, job.id, JobState.QUEUED)
            case "rendering":
                renderer.min_render_seconds = 30
                job = (await say(app, "bob", "a dance --cameo @alice")).job
                await in_state(app, job.id, JobState.RENDERING)
            case "downloading":
                renderer.hold = True
                job = (await say(app, "bob", "a dance --cameo @alice")).job
                await asyncio.wait_for(renderer.downloading.wait(), 30)
                await in_state(app, job.id, JobState.DOWNLOADING)
            case "delivering":
                delivery.hold = True
                job = (await say(app, "bob", "a dance --cameo @alice")).job
                await asyncio.wait_for(delivery.uploading.wait(), 30)
                await in_state(app, job.id, JobState.DELIVERING)
            case "undelivered":
                delivery.refuse = True
                job = (await say(app, "bob", "a dance --cameo @alice")).job
                await in_state(app, job.id, JobState.UNDELIVERED)
            case _:
                job = (await say(app, "bob", "a dance --cameo @alice")).job
                await app.worker.wait_for(job.id, timeout=60)
        jobs.append(job)
        likeness = {p.read_bytes() for p in map(Path, await app.bot.cameos.store.files("console:w1:alice"))}
        before = await likeness_copies(app, jobs)
        assert before, "the scenario made no copy to delete"

        earlier_notices = len(delivery.told)
        reply = await say(app, "alice", "cameo revoke")
        assert reply.ok, reply.text
        renderer.release.set()
        delivery.release.set()
        delivery.hold = renderer.hold = False
        for each in jobs:
            await wait_until(lambda each=each: _ended(app, each.id), within=60)
        final = await app.store.get_job(job.id)
        ledger = await app.store.ledger_for(job.id)
        told = [text for job_id, text in delivery.told[earlier_notices:] if job_id == job.id]

        if state == "delivered":
            assert final.state is JobState.DELIVERED and job.id in delivery.posted
            assert "Clips already posted with it" in reply.text and job.id in reply.text
            assert reply.actions == (("cameo_delete_posts", "Delete 1 post(s)"),)
            assert [kind for kind, _ in ledger] == ["reserve", "settle"]
            assert not any("Nothing was charged" in p for p in told)
        else:
            # Not posted, nothing charged, and that is what bob was told, once it was true.
            assert final.state is JobState.REFUSED, (final.state, final.error)
            # Never posted, or (an upload that finished as the stop came) taken down again.
            assert job.id not in delivery.posted or job.id in delivery.deleted, (delivery.posted, delivery.deleted)
            assert "revoked" in (final.error or "")
            assert [kind for kind, _ in ledger] in ([], ["reserve", "release"])
            assert "Clips already posted" not in reply.text
            assert any("nothing was charged" in p.lower() or "not charged" in p for p in told), told
            stopped = int(re.search(r"(\d+) unposted clip\(s\) stopped", reply.text).group(1))
            being = re.search(r"(\d+) clip\(s\) being made with it are being stopped", reply.text)
            assert stopped + (int(being.group(1)) if being else 0) == len(jobs), reply.text
            # Answered at once, the stop of a job in a worker's hands is not done yet; otherwise the
            # answer waits for the worker (up to a few seconds), and a slow machine may still outlast that.
            pending = f"Job {job.id} is being stopped" in told[0]
            assert pending or not answer_at_once
            if pending:  # a worker had it and had not stopped yet: no promise
                assert state in ("rendering", "downloading", "delivering") and being
                assert "charged" not in told[0]
                assert "nothing was charged" in told[-1].lower()  # told once it was true
            else:
                assert told == [f"Job {job.id} was stopped because the cameo it used was revoked. Nothing was charged."]

        # A posted clip (and the console's marker of its post) goes with the post, by the owner's button.
        posted_clips = (
            set((app.settings.data_dir / "clips").glob(f"{job.id}.*")) if final.state.value == "delivered" else set()
        )
        assert not [p for p in before if p.exists() and p not in posted_clips]
        ended = [await app.store.get_job(j.id) for j in jobs]
        assert leftovers(app, ended, likeness | {FACE}, posted_clips) == []
        assert not (app.settings.data_dir / "cameos").exists() or not any((app.settings.data_dir / "cameos").rglob("*"))
    finally:
        renderer.release.set()
        delivery.release.set()
        await app.close()


async def _ended(app: App, job_id: str) -> bool:
    job = await app.store.get_job(job_id)
    return job.state.is_final


NARROWINGS = {
    "audience": "cameo audience only-me",
    "disallow": "cameo disallow @bob",
    "forbidden word": "cameo forbid dancing",
}


@pytest.mark.parametrize("narrowing", list(NARROWINGS))
@pytest.mark.parametrize("step", ["rendering", "downloading"])
async def test_consent_narrowed_after_admission_stops_the_clip_before_it_is_posted(
    make_settings: Callable[..., Settings], narrowing: str, step: str
) -> None:
    """The worker checks consent again before download and before posting: a narrowed consent wins.

    Narrowed while rendering, the check before download refuses the job; narrowed while the clip
    downloads, the check before posting does.
    """
    settings = make_settings(REELBOT_ADMIN_IDS="root")
    renderer = HeldRenderer(work_dir=settings.data_dir / "renders", fps=12, min_render_seconds=0.0)
    app = await build_app(settings, provider=renderer)
    delivery = HeldDelivery()
    app.bot.register(delivery)
    app.worker.tick_seconds = 0.1
    await app.worker.start()
    try:
        await register(app, "alice")
        await say(app, "alice", "cameo audience approved")
        await say(app, "alice", "cameo allow @bob")
        if step == "rendering":
            renderer.min_render_seconds = 3
        else:
            renderer.hold = True
        job = (await say(app, "bob", "bob dancing --cameo @alice")).job
        assert job.state is JobState.QUEUED
        if step == "rendering":
            await in_state(app, job.id, JobState.RENDERING)
        else:
            await asyncio.wait_for(renderer.downloading.wait(), 30)
        assert (await say(app, "alice", NARROWINGS[narrowing])).ok
        renderer.release.set()
        await wait_until(lambda: _ended(app, job.id), within=60)
        final = await app.store.get_job(job.id)
        assert final.state is JobState.REFUSED and job.id not in delivery.posted
        assert [kind for kind, _ in await app.store.ledger_for(job.id)] == ["reserve", "release"]
        told = [text for job_id, text in delivery.told if job_id == job.id]
        assert any("Nothing was charged" in text for text in told), told
        assert not any(app.settings.data_dir.joinpath("clips").glob(f"{job.id}.*"))
        assert not Path(final.reference_path).exists()
        assert not any(app.settings.data_dir.joinpath("renders").glob(f"{final.provider_video_id}*"))
    finally:
        renderer.release.set()
        await app.close()
