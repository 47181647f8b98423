"""The worker: takes admitted jobs through submit, render, download, check and delivery.

Each step begins by reading the job row and ends with one committed row update, so a process
killed at any point resumes from the stored state: a job in ``rendering`` is polled again by its
stored provider id, one in ``delivering`` first asks the platform whether its clip is already
there. Several processes may share one data dir: a job is driven by whoever holds its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot import texts
from bot.core import ReelBot
from bot.delivery import Delivery, DeliveryError
from bot.jobs import ACTIVE_STATES, Job, JobState
from bot.media import MediaError, probe_clip
from bot.polling import AdaptivePoller
from bot.providers.base import ErrorKind, ProviderError, ReferenceImage, RenderSpec, VideoStatus
from bot.render_watch import RenderWatcher
from bot.store import StoreError, lease_owner_id

log = logging.getLogger(__name__)

# A queued job starts once its card is posted; if posting it crashed, the job starts anyway after this.
CARD_GRACE_SECONDS = 60.0

_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class Worker:
    """Runs jobs for the platforms whose deliveries are registered on the bot."""

    def __init__(
        self,
        *,
        bot: ReelBot,
        clips_dir: Path,
        max_in_flight: int = 4,
        max_per_user: int = 2,
        render_deadline_s: float = 1200.0,
        owner: str | None = None,
        lease_seconds: float = 60.0,
        tick_seconds: float = 1.0,
        max_submit_tries: int = 5,
        max_delivery_tries: int = 3,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poller_factory: Callable[[], AdaptivePoller] = AdaptivePoller,
    ) -> None:
        self.bot = bot
        self.store = bot.store
        self.clips_dir = clips_dir
        self.max_in_flight = max_in_flight
        self.max_per_user = max_per_user
        self.render_deadline_s = render_deadline_s
        self.owner = owner or lease_owner_id()
        self.lease_seconds = lease_seconds
        self.tick_seconds = tick_seconds
        self.max_submit_tries = max_submit_tries
        self.max_delivery_tries = max_delivery_tries
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last_card: dict[str, float] = {}
        self._fresh_deliveries: set[str] = set()
        self._positions: dict[str, int] = {}
        self._fresh_submits: set[str] = set()
        self._watching: dict[str, tuple[str, str]] = {}  # job id -> (provider, the render it waits on)
        self._event = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rng = random.Random()
        # One watcher per provider (sweeps list one provider's renders). Through self._sleep as it
        # is at the time of the wait: tests replace it after construction.
        self._poller_factory = poller_factory
        self._watchers: dict[str, RenderWatcher] = {}
        self.renders = self.watcher_for(bot.provider.name)
        self._leases_renewed_at = -math.inf
        bot.on_new_work(self.wake)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts scheduling; unfinished jobs found in the store are resumed on the first pass."""
        self.clips_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._stopping = False
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="reelbot-worker")

    async def stop(self) -> None:
        """Stops driving jobs. They stay in their stored state and resume at the next start."""
        self._stopping = True
        tasks = [t for t in (self._loop_task, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop_task = None
        self._tasks.clear()
        for watcher in self._watchers.values():
            await watcher.aclose()
        # A task cancelled inside its own ``finally`` may not have released its lease.
        with contextlib.suppress(Exception):
            await self.store.release_leases(self.owner)
        for job_id in list(self._last_card):
            self._last_card.pop(job_id, None)

    def wake(self) -> None:
        self._event.set()

    def watcher_for(self, provider_name: str) -> RenderWatcher:
        """The render watcher of one provider, made on first use."""
        watcher = self._watchers.get(provider_name)
        if watcher is None:
            watcher = self._watchers[provider_name] = RenderWatcher(
                provider=self.bot.providers.get(provider_name),
                clock=self.bot.clock,
                poller=self._poller_factory(),
                sleep=lambda s: self._sleep(s),
            )
        return watcher

    @property
    def running_jobs(self) -> int:
        return len(self._tasks)

    async def wait_for(self, job_id: str, *, timeout: float | None = None, interval: float = 0.1) -> Job:
        """Waits until the job is final or undelivered (used by the terminal adapter and tests)."""

        async def _wait() -> Job:
            while True:
                job = await self.store.get_job(job_id)
                if job is None:
                    raise StoreError(f"no job {job_id}")
                if job.state.is_final or job.state is JobState.UNDELIVERED:
                    if job_id not in self._tasks:
                        return job
                await asyncio.sleep(interval)

        async with asyncio.timeout(timeout):
            return await _wait()

    async def _loop(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.expire_dead_leases()  # jobs of a killed process resume now, not in a minute
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives
        # as the event fires, and the loop would never stop.
        while not self._stopping:
            try:
                await self._renew_leases()
                await self._schedule()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker scheduling pass failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_seconds):
                    await self._event.wait()
            self._event.clear()

    # --- scheduling ------------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        """Keeps this process's leases alive: one statement for every job it drives, every lease/3."""
        now = asyncio.get_running_loop().time()
        if now - self._leases_renewed_at < self.lease_seconds / 3 or not self._tasks:
            return
        self._leases_renewed_at = now
        await self.store.renew_leases(self.owner, list(self._tasks), self.lease_seconds)

    async def _schedule(self) -> None:
        platforms = list(self.bot.deliveries)
        if not platforms:
            return
        if self.bot.cameos is not None:
            await self.bot.cameos.expire_pending()
        for job_id in await self.store.cancels_requested(self.owner):
            if job_id in self._tasks:
                self._interrupt(job_id)
        # Jobs this process drives hold renewed leases and are not read again here.
        jobs = await self.store.schedulable_jobs(platforms)
        per_user = await self.store.active_counts(platforms)
        active_total = sum(per_user.values())
        now = self.bot.clock()
        for job in jobs:
            if job.id in self._tasks:
                continue
            if job.state in ACTIVE_STATES:
                if await self.store.claim_job(job.id, self.owner, self.lease_seconds):
                    self._spawn(job)
            elif job.state is JobState.RECEIVED and now - job.created_at > 30:
                # Written before a crash that came before admission: admit it now.
                await self.bot.admit_and_announce(job)
            elif job.state is JobState.QUEUED:
                if job.cancel_requested:
                    await self._finish(job, JobState.CANCELLED, "cancelled")
                    continue
                if job.card_ref is None and now - job.updated_at < CARD_GRACE_SECONDS:
                    continue  # its card is still being posted (perhaps waiting out a rate limit)
                if active_total >= self.max_in_flight:
                    continue
                if per_user.get(job.user_key, 0) >= self.max_per_user:
                    continue
                if not await self.store.claim_job(job.id, self.owner, self.lease_seconds):
                    continue
                try:
                    job = await self.store.update_job(
                        job.id, state=JobState.SUBMITTING, started_at=now, expect=[JobState.QUEUED]
                    )
                except StoreError:
                    continue
                active_total += 1
                per_user[job.user_key] = per_user.get(job.user_key, 0) + 1
                self._fresh_submits.add(job.id)
                self._spawn(job)
                await self._card(job, force=True)
        await self._refresh_queue_positions(jobs)

    def _interrupt(self, job_id: str) -> None:
        """Makes a job waiting on its render look at its row again (its cancellation was asked for)."""
        watching = self._watching.get(job_id)
        if watching is not None:
            provider_name, video_id = watching
            self.watcher_for(provider_name).interrupt(video_id)

    async def _refresh_queue_positions(self, jobs: list[Job]) -> None:
        """Edits queued cards whose position changed (a job ahead started or was cancelled).

        ``jobs`` comes ordered by queue time, so positions are counted here rather than asked of
        the store once per job.
        """
        started = set(self._tasks)
        counters: dict[str, int] = {}
        for job in jobs:
            if job.state is not JobState.QUEUED or job.id in started:
                continue
            position = counters[job.platform] = counters.get(job.platform, 0) + 1
            if job.card_ref and self._positions.get(job.id) != position:
                self._positions[job.id] = position
                await self._card(job, force=True)

    def _spawn(self, job: Job) -> None:
        task = asyncio.create_task(self._drive(job.id), name=f"reelbot-job-{job.id}")
        self._tasks[job.id] = task
        self._positions.pop(job.id, None)

    # --- one job ---------------------------------------------------------------------------

    async def _drive(self, job_id: str) -> None:
        try:
            while True:
                job = await self.store.get_job(job_id)
                if job is None or job.state.is_final or job.state is JobState.UNDELIVERED:
                    break
                if job.cancel_requested and job.state in (
                    JobState.SUBMITTING,
                    JobState.RENDERING,
                    JobState.DOWNLOADING,
                ):
                    await self._cancel(job)
                    break
                match job.state:
                    case JobState.SUBMITTING:
                        await self._submit(job)
                    case JobState.RENDERING:
                        await self._await_render(job)
                    case JobState.DOWNLOADING:
                        await self._download(job)
                    case JobState.DELIVERING:
                        await self._deliver(job)
                    case _:
                        break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not leave the job hanging silently
            log.exception("job %s crashed in the worker", job_id)
            job = await self.store.get_job(job_id)
            if job is not None and not job.state.is_final and job.state is not JobState.DELIVERING:
                await self._fail(job, f"reelbot hit an internal error ({type(exc).__name__})")
        finally:
            self._tasks.pop(job_id, None)
            self._last_card.pop(job_id, None)
            self._fresh_submits.discard(job_id)
            with contextlib.suppress(Exception):
                await self.store.release_lease(job_id, self.owner)
            self.wake()

    def _spec(self, job: Job) -> RenderSpec:
        reference = None
        if job.reference_path and Path(job.reference_path).exists():
            path = Path(job.reference_path)
            reference = ReferenceImage(
                data=path.read_bytes(),
                content_type=_CONTENT_TYPES.get(path.suffix.lower(), "image/png"),
                filename=path.name,
                is_likeness=".likeness." in path.name,
            )
        return RenderSpec(job.prompt, job.options.model, job.options.size, job.options.seconds, reference)

    async def _submit(self, job: Job) -> None:
        spec: RenderSpec | None = None
        try:
            spec = await asyncio.to_thread(self._spec, job)
            if job.id not in self._fresh_submits:
                # Resumed after a crash: the create may have been sent before the id was stored.
                if await self._adopt(job, spec, waits=(0.0,), why="started before a restart"):
                    return
            if self.bot.cameos is not None:
                refusal = await self.bot.cameos.recheck_before_submit(job)
                if refusal:
                    await self._finish(job, JobState.REFUSED, refusal, tell=True)
                    return
            self._fresh_submits.add(job.id)
            if job.remix_of:
                video = await self.bot.provider_for(job).remix(job.remix_of, job.prompt)
            else:
                video = await self.bot.provider_for(job).create(spec)
        except ProviderError as exc:
            # The create may have started a render we never heard about: look for it before giving up.
            if exc.ambiguous and spec is not None and await self._adopt(job, spec, why="whose answer was lost"):
                return
            await self._provider_trouble(job, exc, "submit")
            return
        job = await self.store.update_job(
            job.id,
            state=JobState.RENDERING,
            provider_video_id=video.id,
            render_started_at=self.bot.clock(),
            progress=video.progress,
            expect=[JobState.SUBMITTING],
        )
        await self.store.renew_lease(job.id, self.owner, self.lease_seconds)
        await self._card(job, force=True)

    async def _adopt(self, job: Job, spec: RenderSpec, *, why: str, waits: tuple[float, ...] = (0.0, 2.0, 5.0)) -> bool:
        """Takes over a render of this job's spec the service started since the job did, if there is one.

        A render another job already owns is never taken (the same prompt asked twice at once).
        ``waits`` are the pauses before each look: a service that timed out may list the render late.
        """
        for wait in waits:
            if wait:
                await self._sleep(wait)
            try:
                found = await self.bot.provider_for(job).find_recent(spec, job.started_at or job.created_at)
            except ProviderError:
                continue
            if found is None or await self.store.video_in_use(found.id, other_than=job.id):
                continue
            log.info("job %s: adopting render %s %s", job.id, found.id, why)
            await self.store.update_job(
                job.id,
                state=JobState.RENDERING,
                provider_video_id=found.id,
                render_started_at=self.bot.clock(),
                expect=[JobState.SUBMITTING],
            )
            return True
        return False

    async def _provider_trouble(self, job: Job, exc: ProviderError, step: str) -> None:
        if step == "submit" and exc.ambiguous:
            # The service may have started (and will bill) a render we never heard back about:
            # sending it again could pay twice, so the job ends here, unbilled for the person.
            await self._fail(
                job, "The video service stopped answering while the render was being started. Please ask again."
            )
            return
        tries = job.tries + 1
        if exc.retryable and tries < self.max_submit_tries:
            await self.store.update_job(job.id, tries=tries)
            delay = exc.retry_after or min(60.0, 2.0**tries) * self._rng.uniform(0.75, 1.0)
            log.info("job %s: %s failed (%s), retrying in %.1fs", job.id, step, exc.kind, delay)
            await self._sleep(delay)
            await self.store.renew_lease(job.id, self.owner, self.lease_seconds)
            return
        await self._fail(job, exc.user_message)

    async def _await_render(self, job: Job) -> None:
        """Waits for the render through the shared watcher, writing each new progress to the row.

        Returns when the job moved on (downloading, failed) or needs a fresh look (a cancellation
        was asked for); ``_drive`` then reads the row again.
        """
        assert job.provider_video_id is not None
        started = job.started_at or job.created_at  # the deadline covers the whole job, submission included
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.render_deadline_s - (self.bot.clock() - started)
        progress = job.progress
        provider = self.bot.provider_for(job)
        self._watching[job.id] = (provider.name, job.provider_video_id)
        watcher = self.watcher_for(provider.name)
        try:
            async with watcher.watch(job.provider_video_id, started=job.render_started_at or started) as watch:
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            video = await watch.next_change()
                    except TimeoutError:
                        with contextlib.suppress(ProviderError):
                            await provider.delete(job.provider_video_id)
                        minutes = max(1, round(self.render_deadline_s / 60))
                        await self._fail(job, f"The video service did not finish within {minutes} minutes.")
                        return
                    except ProviderError as exc:
                        await self._fail(job, exc.user_message)
                        return
                    if video is None:
                        return  # interrupted: _drive reads the row and sees the cancellation
                    if video.status is VideoStatus.COMPLETED:
                        await self.store.update_job(
                            job.id, state=JobState.DOWNLOADING, progress=100, expect=[JobState.RENDERING]
                        )
                        return
                    if video.status is VideoStatus.FAILED:
                        error = video.error or ProviderError(ErrorKind.SERVER, "failed without a reason")
                        await self._fail(job, error.user_message)
                        return
                    if video.progress != progress:
                        progress = video.progress
                        current = await self.store.update_job(job.id, progress=progress, expect=[JobState.RENDERING])
                        await self._card(current)
        except StoreError:
            return  # the row left ``rendering`` under us (cancelled, finished elsewhere): _drive looks again
        finally:
            self._watching.pop(job.id, None)

    async def _download(self, job: Job) -> None:
        assert job.provider_video_id is not None
        dest = self.clips_dir / f"{job.id}.mp4"
        try:
            await self.bot.provider_for(job).download(job.provider_video_id, dest)
        except ProviderError as exc:
            if exc.kind is ErrorKind.BAD_RESPONSE:
                await self._fail(job, "The video service sent back something that is not a video.")
                return
            await self._provider_trouble(job, exc, "download")
            return
        with contextlib.suppress(OSError):
            dest.chmod(0o600)  # clips are the requester's: owner-only, whatever the umask or provider
        try:
            await asyncio.to_thread(probe_clip, dest, seconds=job.options.seconds, size=job.options.size)
        except MediaError as exc:
            with contextlib.suppress(OSError):
                dest.unlink()
            await self._fail(job, f"The finished clip was broken ({exc}).")
            return
        self._fresh_deliveries.add(job.id)
        job = await self.store.update_job(
            job.id, state=JobState.DELIVERING, clip_path=str(dest), expect=[JobState.DOWNLOADING]
        )
        await self._card(job, force=True)

    async def _deliver(self, job: Job) -> None:
        delivery = self.bot.deliveries.get(job.platform)
        if delivery is None:
            return
        clip = Path(job.clip_path or "")
        if not clip.exists():
            await self._fail(job, "The rendered clip went missing before it could be delivered.")
            return
        fresh = job.id in self._fresh_deliveries
        self._fresh_deliveries.discard(job.id)
        ref = None
        if not fresh:
            with contextlib.suppress(DeliveryError):
                ref = await delivery.find_clip(job)
        attempts = 0
        while ref is None:
            try:
                ref = await delivery.post_clip(job, clip, texts.caption(job))
            except DeliveryError as exc:
                attempts += 1
                if exc.retryable and attempts < self.max_delivery_tries:
                    await self._sleep(min(30.0, 2.0**attempts))
                    continue
                await self._undelivered(delivery, job, exc.user_message, retryable=exc.retryable)
                return
        finished = await self.store.finish_job(
            job.id, JobState.DELIVERED, delivered_ref=ref, expect=[JobState.DELIVERING]
        )
        if finished is not None:
            await self._card(finished, force=True)
            if self.bot.cameos is not None:
                await self.bot.cameos.record_use(finished)

    async def _undelivered(self, delivery: Delivery, job: Job, reason: str, *, retryable: bool) -> None:
        """Keeps a rendered clip the platform refused; it stays reserved until delivered or cancelled."""
        job = await self.store.update_job(
            job.id, state=JobState.UNDELIVERED, error=reason, expect=[JobState.DELIVERING]
        )
        await self._card(job, force=True)
        # Automatic retries are over; a person can still fix the cause (invite the bot, say) and retry.
        advice = (
            f"Use `/video retry {job.id}` to try again (you will be charged once), "
            f"or `/video cancel {job.id}` (not charged)."
        )
        if not retryable:
            log.info("job %s undelivered for good reason: %s", job.id, reason)
        with contextlib.suppress(DeliveryError):
            text = f"Your clip for job {job.id} is ready but I could not post it: {reason} {advice}"
            await delivery.notify(job, text)

    async def _cancel(self, job: Job) -> None:
        if job.provider_video_id:
            with contextlib.suppress(ProviderError):
                await self.bot.provider_for(job).delete(job.provider_video_id)
        await self._finish(job, JobState.CANCELLED, "cancelled")

    async def _fail(self, job: Job, reason: str) -> None:
        await self._finish(job, JobState.FAILED, reason, tell=True)

    async def _finish(self, job: Job, state: JobState, reason: str, *, tell: bool = False) -> None:
        finished = await self.store.finish_job(job.id, state, error=reason)
        if finished is None:
            return
        await self._card(finished, force=True)
        if tell:
            delivery = self.bot.deliveries.get(job.platform)
            if delivery is not None:
                with contextlib.suppress(DeliveryError):
                    await delivery.notify(finished, f"Job {job.id} {state.value}: {reason} You were not charged.")

    async def _card(self, job: Job, *, force: bool = False) -> None:
        delivery = self.bot.deliveries.get(job.platform)
        if delivery is None or job.card_ref is None:
            return
        interval = getattr(delivery, "min_update_interval", 3.0)
        now = asyncio.get_running_loop().time()
        if not force and now - self._last_card.get(job.id, -1e9) < interval:
            return
        self._last_card[job.id] = now
        await self.bot.refresh_card(job)
