"""The worker: takes admitted jobs through submit, render, download, check and delivery.

Each step begins with a claim (``Store.claim``: the lease and one more attempt at the step, in one
transaction) and ends with one ``Store.transition``, so a process killed at any point resumes from
the stored state: a job in ``rendering`` is polled again by its stored provider id, one in
``delivering`` first asks the platform whether its clip is already there. Several processes may
share one data dir: a job is driven by whoever holds its lease.

Crash loops are bounded as in arq (``max_tries``): a step that raised is tried again after a
backoff, and a step begun more than ``max_attempts`` times ends the job (failed and released, or
``undelivered`` when the clip exists), with the reason logged once. A stop (cancel, refusal) asked
for while the worker drives a job is honoured before every step that spends or posts, and
interrupts a render wait, a download and an upload in progress; a clip the platform already
took is deleted again. Consent is checked again before submit, before download and before posting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, TypeVar

from bot import texts
from bot.clip_handoff import ClipHandoff
from bot.core import ReelBot
from bot.delivery import Delivery, DeliveryError
from bot.jobs import ACTIVE_STATES, Job, JobState
from bot.media import MediaError, probe_clip
from bot.polling import AdaptivePoller
from bot.providers.base import (
    ErrorKind,
    ProviderError,
    ReferenceImage,
    RenderSpec,
    Route,
    TakesWebhookResults,
    VideoStatus,
)
from bot.render_watch import RenderWatcher
from bot.routing import may_fail_over, next_route
from bot.store import IllegalTransition, StopRequested, StoreError, lease_owner_id

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# A queued job starts once its card is posted; if posting it crashed, the job starts anyway after this.
CARD_GRACE_SECONDS = 60.0
# A received job older than this was left by a crash before admission: the worker admits it.
RECEIVED_GRACE_SECONDS = 30.0
# Backoff after a crash in a step: base * 2^(attempt-1), at most the cap, with jitter.
CRASH_BACKOFF_S = 1.0
CRASH_BACKOFF_CAP_S = 300.0
# A step that keeps returning without moving the job (and without a stop) is treated as a crash.
MAX_IDLE_ROUNDS = 50

# Providers that call a webhook on completion when reelbot gives them a URL.
WEBHOOK_PROVIDERS = frozenset({"fal", "openrouter"})
# While a webhook is expected, polling is only the safety net for one that is lost.
WEBHOOK_SAFETY_POLL_S = 30.0

_CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


class _Stopped(Exception):
    """The job's stop was asked for while a step waited on the network; the step was abandoned."""


class Worker:
    """Runs jobs for the platforms whose deliveries are registered on the bot.

    Args:
        max_attempts: how often one step may be begun (``REELBOT_MAX_ATTEMPTS``) before the job ends.
        undelivered_ttl_s: how long an undelivered clip is kept (``REELBOT_UNDELIVERED_TTL_S``).
        crash_backoff_s: the first pause after a crash in a step (doubling, capped).
    """

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
        max_attempts: int = 5,
        undelivered_ttl_s: float = 7 * 24 * 3600.0,
        crash_backoff_s: float = CRASH_BACKOFF_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        poller_factory: Callable[[], AdaptivePoller] = AdaptivePoller,
        webhook_base_url: str | None = None,
        webhook_safety_poll_s: float = WEBHOOK_SAFETY_POLL_S,
    ) -> None:
        self.bot = bot
        #: The slow safety-net poll interval while a webhook is expected (a lost webhook never loses a job).
        self.webhook_safety_poll_s = webhook_safety_poll_s
        #: ``REELBOT_PUBLIC_URL``: when set, providers that can are asked to call back on completion.
        self.webhook_base_url = webhook_base_url.rstrip("/") if webhook_base_url else None
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
        self.max_attempts = max_attempts
        self.undelivered_ttl_s = undelivered_ttl_s
        self.crash_backoff_s = crash_backoff_s
        self._sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}  # set when a job's stop was asked for
        self._fresh_deliveries: set[str] = set()
        self._handoff = ClipHandoff(
            clips_dir=clips_dir,
            provider_for=lambda job: self.bot.provider_for(job),
            delivery_for=lambda job: self.bot.deliveries.get(job.platform),
        )
        self._positions: dict[str, int] = {}
        self._fresh_submits: set[str] = set()
        self._watching: dict[str, tuple[str, str]] = {}  # job id -> (provider, the render it waits on)
        self._event = asyncio.Event()
        self._passed = asyncio.Event()  # set after every scheduling pass (run_until_idle waits on it)
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rng = random.Random()
        # One watcher per provider (sweeps list one provider's renders). Through self._sleep as it
        # is at the time of the wait: tests replace it after construction.
        self._poller_factory = poller_factory
        self._watchers: dict[str, RenderWatcher] = {}
        self.renders = self.watcher_for(bot.provider.name)
        self._leases_renewed_at = -math.inf
        #: What the ledger check at start found (empty when the books balance); see ``Store.check_ledger``.
        self.ledger_mismatches: list[Any] = []
        bot.on_new_work(self.wake)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts scheduling; unfinished jobs found in the store are resumed on the first pass.

        First checks the ledger against budget usage (differences are logged at ERROR) and
        removes download leftovers (``.part`` files) no live process is writing.
        """
        self.clips_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._stopping = False
        if self._loop_task is None:
            with contextlib.suppress(Exception):
                await self.store.expire_dead_leases()  # jobs of a killed process resume now, not in a minute
            self.ledger_mismatches = await self.store.check_ledger()
            await self._remove_abandoned_parts()
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
        with contextlib.suppress(Exception):
            await self.bot.flush_cards()

    def wake(self) -> None:
        self._event.set()

    async def on_webhook(
        self, provider: str, provider_request_id: str, job_id: str | None, *, result: dict[str, Any] | None = None
    ) -> bool:
        """A provider called back that a render finished: ask about it now, not at the next safety-net poll.

        Without ``result`` the webhook only wakes the watch and the status call that follows decides.
        With it (a signed fal ``OK`` delivery), the provider keeps the clip's URL first, so the look it
        wakes needs no call. Returns whether a watched render was woken.
        """
        watched = self._watching.get(job_id) if job_id else None  # the usual case: no need to read the row
        if watched is not None:
            known_provider, video_id = watched
        else:
            job = await self.store.get_job(job_id) if job_id else None
            known_provider, video_id = (job.provider, job.provider_video_id) if job is not None else ("", None)
        if video_id is None or known_provider != provider:
            log.info("webhook from %s for job %s: no render of that job is known there", provider, job_id)
            return False
        if provider_request_id != video_id and provider_request_id not in video_id.split(":"):
            log.info("webhook from %s names request %s, not job %s's render", provider, provider_request_id, job_id)
            return False
        service = self.bot.providers.get(provider)
        if result is not None and isinstance(service, TakesWebhookResults):
            service.take_webhook_result(video_id, result)
        return self.watcher_for(provider).poll_now(video_id)

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

    async def wait_for(self, job_id: str, *, timeout: float | None = None, interval: float = 0.05) -> Job:
        """Waits until the job is final or undelivered and its card says so (the terminal adapter, tests)."""

        async def _wait() -> Job:
            while True:
                job = await self.store.get_job(job_id)
                if job is None:
                    raise StoreError(f"no job {job_id}")
                if job.state.is_final or job.state is JobState.UNDELIVERED:
                    # ...and its card shows it (an edit may be waiting for its throttle window).
                    if job_id not in self._tasks and not self.bot.cards.pending(job_id):
                        return job
                await asyncio.sleep(interval)

        async with asyncio.timeout(timeout):
            return await _wait()

    async def run_until_idle(self, *, timeout: float) -> None:
        """Drives jobs until none is left to drive here (arq's burst mode), then returns.

        Idle means: no job task running and no queued or active job of this worker's platforms
        in the store. Jobs waiting for a person (consent, an undelivered clip) do not count.

        Raises:
            TimeoutError: still busy after ``timeout`` seconds.
        """
        await self.start()
        async with asyncio.timeout(timeout):
            while True:
                self._passed.clear()
                self.wake()
                await self._passed.wait()
                if self._tasks:
                    await asyncio.wait(list(self._tasks.values()), return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not await self.store.has_work(list(self.bot.deliveries)):
                    return
                self._passed.clear()
                await self._passed.wait()  # a job in its backoff, or behind the caps: the next tick

    async def _loop(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives
        # as the event fires, and the loop would never stop.
        while not self._stopping:
            self._event.clear()
            try:
                await self._renew_leases()
                await self._schedule()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker scheduling pass failed; trying again")
            self._passed.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.tick_seconds):
                    await self._event.wait()

    async def _remove_abandoned_parts(self) -> None:
        """Deletes ``.part`` download files whose job no live process is driving."""
        leased = await self.store.leased_job_ids()
        for part in self.clips_dir.glob("*.part"):
            # the provider clients name them ``.<job id>.mp4.<random>.part``
            job_id = part.name.lstrip(".").split(".", 1)[0]
            if job_id not in leased:
                with contextlib.suppress(OSError):
                    part.unlink()
                    log.info("removed the abandoned download %s", part.name)

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
        await self._expire_undelivered(platforms)
        for job_id in await self.store.cancels_requested(self.owner):
            if job_id in self._tasks:
                self._interrupt(job_id)
        # Jobs this process drives hold renewed leases and are not read again here.
        jobs = await self.store.schedulable_jobs(platforms)
        # A first filter; the claim counts again inside its transaction (other processes share the caps).
        per_user = await self.store.active_counts(platforms)
        active_total = sum(per_user.values())
        now = self.bot.clock()
        for job in jobs:
            if job.id in self._tasks:
                continue
            if job.state is JobState.RECEIVED:
                if now - job.created_at > RECEIVED_GRACE_SECONDS:
                    # Written before a crash that came before admission (or before its consent hold):
                    # a cameo's owner is asked first, anything else is admitted now.
                    if self.bot.cameos is not None:
                        await self.bot.cameos.resume(job)
                    else:
                        await self.bot.admit_and_announce(job)
                continue
            if job.state is JobState.QUEUED and not job.cancel_requested:
                if job.card_ref is None and now - job.updated_at < CARD_GRACE_SECONDS:
                    continue  # its card is still being posted (perhaps waiting out a rate limit)
                if active_total >= self.max_in_flight or per_user.get(job.user_key, 0) >= self.max_per_user:
                    continue
                claimed = await self.store.claim(
                    job.id,
                    self.owner,
                    self.lease_seconds,
                    max_in_flight=self.max_in_flight,
                    max_per_user=self.max_per_user,
                )
                if claimed is None or claimed.state is not JobState.SUBMITTING:
                    continue
                active_total += 1
                per_user[job.user_key] = per_user.get(job.user_key, 0) + 1
                self._fresh_submits.add(job.id)
                self._spawn(claimed)
                await self._card(claimed)
                continue
            claimed = await self.store.claim(job.id, self.owner, self.lease_seconds)
            if claimed is not None:
                self._spawn(claimed)
        await self._refresh_queue_positions(jobs)

    async def _expire_undelivered(self, platforms: list[str]) -> None:
        """Ends undelivered jobs kept longer than their lifetime: failed, released, the requester told."""
        before = self.bot.clock() - self.undelivered_ttl_s
        for job in await self.store.expired_undelivered(before, platforms):
            days = self.undelivered_ttl_s / 86400
            span = f"{days:g} days" if days >= 1 else f"{max(1, round(self.undelivered_ttl_s / 60))} minutes"
            reason = f"The clip could not be posted within {span}, so it was dropped."
            try:
                ended = await self.store.transition(
                    job.id, JobState.FAILED, expect=[JobState.UNDELIVERED], error=reason
                )
            except IllegalTransition:
                continue  # retried or cancelled meanwhile
            self._remove_clip(ended)
            await self._card(ended)
            await self._tell(ended, f"Job {job.id} expired: {reason} Nothing was charged.")

    def _interrupt(self, job_id: str) -> None:
        """Makes a job waiting on the network look at its row again (its stop was asked for)."""
        self._stops.setdefault(job_id, asyncio.Event()).set()
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
                await self._card(job)

    def _spawn(self, job: Job) -> None:
        self._stops.setdefault(job.id, asyncio.Event())
        task = asyncio.create_task(self._drive(job), name=f"reelbot-job-{job.id}")
        self._tasks[job.id] = task
        self._positions.pop(job.id, None)

    # --- one job ---------------------------------------------------------------------------

    async def _drive(self, claimed: Job) -> None:
        """Runs a claimed job step by step; each further step is claimed again (one more attempt)."""
        job_id = claimed.id
        job: Job | None = claimed
        idle_rounds = 0
        try:
            while job is not None and not job.state.is_final and job.state is not JobState.UNDELIVERED:
                idle_rounds += 1
                if idle_rounds > MAX_IDLE_ROUNDS:
                    raise RuntimeError(f"the {job.state.value} step returned {MAX_IDLE_ROUNDS} times without progress")
                if job.cancel_requested:
                    await self._stop(job)
                    break
                if job.state in ACTIVE_STATES and job.attempts > self.max_attempts:
                    await self._give_up(job)
                    break
                step = job.state
                match step:
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
                job = await self.store.get_job(job_id)
                if job is not None and job.state is not step and job.state in ACTIVE_STATES:
                    # A new step: claimed again, which counts its first attempt. A step that only
                    # waited to try again (a rate limit, say) is not a crash and is not counted.
                    job = await self.store.claim(job_id, self.owner, self.lease_seconds)
                    idle_rounds = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug (or a platform library's surprise) must neither hang nor loop
            await self._crashed(job_id, exc)
        finally:
            self._handoff.forget(job_id)
            self._tasks.pop(job_id, None)
            self._fresh_submits.discard(job_id)
            self._stops.pop(job_id, None)
            with contextlib.suppress(Exception):
                await self.store.release_lease(job_id, self.owner)
            self.wake()

    async def _crashed(self, job_id: str, exc: Exception) -> None:
        """A step raised: back off; the next claim counts another attempt (``_give_up`` ends a loop)."""
        job = await self.store.get_job(job_id)
        if job is None or job.state.is_final or job.state is JobState.UNDELIVERED:
            log.warning("job %s: %s after it ended (%s)", job_id, type(exc).__name__, exc)
            return
        delay = min(CRASH_BACKOFF_CAP_S, self.crash_backoff_s * 2.0 ** max(0, job.attempts - 1))
        delay *= self._rng.uniform(0.75, 1.0)
        log.warning(
            "job %s crashed in %s (attempt %d of %d; next in %.1fs): %s: %s",
            job_id,
            job.state.value,
            job.attempts,
            self.max_attempts,
            delay,
            type(exc).__name__,
            exc,
            exc_info=exc if job.attempts <= 1 else None,  # the traceback once, not every retry
        )
        await self.store.delay_step(job_id, self.owner, self.bot.clock() + delay)

    async def _give_up(self, job: Job) -> None:
        """Ends a job whose step kept crashing: undelivered when the clip exists, else failed."""
        step = job.attempt_step or job.state.value
        log.error("job %s: giving up after %d attempts at %s", job.id, job.attempts - 1, step)
        if job.state is JobState.DELIVERING:
            delivery = self.bot.deliveries.get(job.platform)
            reason = f"Posting the clip failed {job.attempts - 1} times."
            if delivery is not None:
                await self._undelivered(delivery, job, reason, retryable=False)
            return
        if job.provider_video_id:
            with contextlib.suppress(ProviderError):
                await self.bot.provider_for(job).delete(job.provider_video_id)
        await self._fail(job, f"reelbot tried {job.attempts - 1} times and could not finish {_doing(step)}.")

    def _route(self, job: Job) -> Route | None:
        """The catalog route of ``job``'s model through the provider now serving it."""
        routes = self.bot.catalog.routes_for(job.options.model, self.bot.providers.names)
        return next((r for r in routes if r.provider == job.provider), None)

    def expects_webhook(self, job: Job) -> bool:
        return self.webhook_base_url is not None and job.provider in WEBHOOK_PROVIDERS

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
        route = self._route(job)
        if route is None:  # a model the catalog no longer routes here: the provider takes the name as is
            route = Route(job.provider or self.bot.provider.name, job.options.model)
        spec = self.bot.catalog.spec_for(job, route, reference)
        if self.expects_webhook(job):
            spec = replace(spec, webhook_url=f"{self.webhook_base_url}/webhooks/{job.provider}?job={job.id}")
        return spec

    async def _recheck(self, job: Job) -> str | None:
        """Consent asked again (None: still allowed; else the sentence why not)."""
        cameos = self.bot.cameos
        if cameos is None or job.options.cameo is None:
            return None
        return await cameos.recheck(job)

    async def _submit(self, job: Job) -> None:
        spec: RenderSpec | None = None
        try:
            refusal = await self._recheck(job)  # before anything is spent: adopted renders too
            if refusal:
                await self._end(job, JobState.REFUSED, refusal)
                return
            spec = await asyncio.to_thread(self._spec, job)
            if job.id not in self._fresh_submits:
                # Resumed after a crash: the create may have been sent before the id was stored.
                if await self._adopt(job, spec, waits=(0.0,), why="started before a restart"):
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
        try:
            job = await self.store.transition(
                job.id,
                JobState.RENDERING,
                expect=[JobState.SUBMITTING],
                provider_video_id=video.id,
                render_started_at=self.bot.clock(),
                progress=video.progress,
            )
        except StopRequested:
            # Stopped while the create was on its way: the render is not wanted; the stop removes it.
            await self.store.update_job(job.id, provider_video_id=video.id)
            return
        await self.store.renew_lease(job.id, self.owner, self.lease_seconds)
        await self._card(job)

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
            try:
                await self.store.transition(
                    job.id,
                    JobState.RENDERING,
                    expect=[JobState.SUBMITTING],
                    provider_video_id=found.id,
                    render_started_at=self.bot.clock(),
                )
            except StopRequested:
                await self.store.update_job(job.id, provider_video_id=found.id)  # the stop deletes it
            return True
        return False

    async def _fail_over(self, job: Job, exc: ProviderError) -> bool:
        """Moves a job whose submission started nothing to its model's next provider; False when there is none.

        The price is the model's whichever provider serves it, so nothing more is reserved; the
        card and the thread say where the job went and why.
        """
        routes = self.bot.catalog.routes_for(job.options.model, self.bot.providers.names)
        following = next_route(routes, job.provider)
        if following is None or following.provider not in self.bot.providers:
            return False
        previous = job.provider
        job = await self.store.update_job(job.id, provider=following.provider, tries=0)
        log.warning(
            "job %s: %s could not take the render (%s: %s); moving it to %s",
            job.id,
            previous,
            exc.kind,
            exc.detail[:200],
            following.provider,
        )
        await self._tell(job, texts.failover_text(job, previous, exc))
        await self._card(job)
        return True

    async def _provider_trouble(self, job: Job, exc: ProviderError, step: str) -> None:
        if (
            step == "submit"
            and not job.remix_of
            and may_fail_over(exc, retries_left=exc.retryable and job.tries + 1 < self.max_submit_tries)
            and await self._fail_over(job, exc)
        ):
            return
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
            with contextlib.suppress(_Stopped):
                await self._unless_stopped(job.id, self._sleep(delay))
            await self.store.renew_lease(job.id, self.owner, self.lease_seconds)
            return
        if exc.kind in (ErrorKind.QUOTA, ErrorKind.AUTH):
            # Only an admin can fix these; the person is told so in plain words, the admin reads why here.
            log.error("job %s: %s needs an admin: %s", job.id, job.provider, exc.detail)
        await self._fail(job, exc.user_message)

    async def _await_render(self, job: Job) -> None:
        """Waits for the render through the shared watcher, writing each new progress to the row.

        Returns when the job moved on (downloading, failed) or needs a fresh look (a stop was
        asked for); ``_drive`` then claims the row again.
        """
        assert job.provider_video_id is not None
        started = job.started_at or job.created_at  # the deadline covers the whole job, submission included
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.render_deadline_s - (self.bot.clock() - started)
        progress, position = job.progress, job.provider_position
        provider = self.bot.provider_for(job)
        self._watching[job.id] = (provider.name, job.provider_video_id)
        watcher = self.watcher_for(provider.name)
        try:
            if self._stops.get(job.id, asyncio.Event()).is_set():
                return
            safety_net = self.webhook_safety_poll_s if self.expects_webhook(job) else 0.0
            async with watcher.watch(
                job.provider_video_id, started=job.render_started_at or started, min_interval=safety_net
            ) as watch:
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
                        return  # interrupted: _drive reads the row and sees the stop
                    if video.status is VideoStatus.COMPLETED:
                        if await self._recheck(job) is None:
                            self._handoff.download(job)  # the bytes come while the row moves on
                        await self.store.transition(
                            job.id,
                            JobState.DOWNLOADING,
                            expect=[JobState.RENDERING],
                            progress=100,
                            provider_position=None,
                        )
                        return
                    if video.status is VideoStatus.FAILED:
                        error = video.error or ProviderError(ErrorKind.SERVER, "failed without a reason")
                        await self._fail(job, error.user_message)
                        return
                    waiting = video.queue_position if video.status is VideoStatus.QUEUED else None
                    if (video.progress, waiting) != (progress, position):
                        progress, position = video.progress, waiting
                        current = await self.store.update_job(
                            job.id, progress=progress, provider_position=position, expect=[JobState.RENDERING]
                        )
                        await self._card(current)
        except StoreError:
            return  # the row left ``rendering`` under us (stopped, finished elsewhere): _drive looks again
        finally:
            self._watching.pop(job.id, None)

    async def _download(self, job: Job) -> None:
        assert job.provider_video_id is not None
        refusal = await self._recheck(job)
        if refusal:
            await self._end(job, JobState.REFUSED, refusal)
            return
        dest = self._handoff.clip_file(job.id)
        try:
            await self._unless_stopped(job.id, self._handoff.download(job))
        except _Stopped:
            self._handoff.unstage(job.id)
            return  # _drive claims the row again and ends the job as asked
        except ProviderError as exc:
            self._handoff.unstage(job.id)
            if exc.kind is ErrorKind.BAD_RESPONSE:
                await self._fail(job, "The video service sent back something that is not a video.")
                return
            await self._provider_trouble(job, exc, "download")
            return
        finally:
            self._handoff.downloaded(job.id)
        with contextlib.suppress(OSError):
            dest.chmod(0o600)  # clips are the requester's: owner-only, whatever the umask or provider
        try:
            promise = self.bot.catalog.promise_for(job)
            await asyncio.to_thread(probe_clip, dest, **asdict(promise))
        except MediaError as exc:
            self._handoff.unstage(job.id)
            with contextlib.suppress(OSError):
                dest.unlink()
            await self._fail(job, f"The finished clip was broken ({exc}).")
            return
        try:
            job = await self.store.transition(
                job.id, JobState.DELIVERING, expect=[JobState.DOWNLOADING], clip_path=str(dest)
            )
        except StopRequested:
            self._handoff.unstage(job.id)
            await self.store.update_job(job.id, clip_path=str(dest))  # the stop removes it
            return
        self._fresh_deliveries.add(job.id)
        await self._card(job)

    async def _deliver(self, job: Job) -> None:
        delivery = self.bot.deliveries.get(job.platform)
        if delivery is None:
            raise RuntimeError(f"no delivery for {job.platform} is registered")
        clip = Path(job.clip_path or "")
        if not clip.exists():
            await self._fail(job, "The rendered clip went missing before it could be delivered.")
            return
        refusal = await self._recheck(job)
        if refusal:
            await self._end(job, JobState.REFUSED, refusal)
            return
        fresh = job.id in self._fresh_deliveries
        self._fresh_deliveries.discard(job.id)
        ref = None
        if not fresh:
            with contextlib.suppress(DeliveryError):
                ref = await delivery.find_clip(job)
            if ref is None and not await self._still_whole(job, clip):
                return
        attempts = 0
        while ref is None:
            try:
                ref = await self._unless_stopped(job.id, self._handoff.post(delivery, job, clip))
            except _Stopped:
                await self._unpost(delivery, job, None)  # the platform may have the clip already
                return
            except DeliveryError as exc:
                attempts += 1
                if exc.retryable and attempts < self.max_delivery_tries:
                    try:
                        await self._unless_stopped(job.id, self._sleep(min(30.0, 2.0**attempts)))
                    except _Stopped:
                        return
                    continue
                await self._undelivered(delivery, job, exc.user_message, retryable=exc.retryable)
                return
        try:
            finished = await self.store.transition(
                job.id, JobState.DELIVERED, expect=[JobState.DELIVERING], delivered_ref=ref
            )
        except StopRequested:
            # The stop came first: the person was (or will be) told nothing was posted or charged.
            await self._unpost(delivery, job, ref)
            return
        await self._card(finished)
        if self.bot.cameos is not None:
            await self.bot.cameos.record_use(finished)

    async def _still_whole(self, job: Job, clip: Path) -> bool:
        """Checks again a clip this process did not download (downloads are not fsynced; see ``_download``)."""
        try:
            await asyncio.to_thread(probe_clip, clip, **asdict(self.bot.catalog.promise_for(job)))
        except MediaError as exc:
            await self._fail(job, f"The finished clip was damaged before it could be posted ({exc}).")
            return False
        return True

    async def _unpost(self, delivery: Delivery, job: Job, ref: str | None) -> None:
        """Deletes a clip the platform took for a job that was stopped meanwhile."""
        if ref is None:
            with contextlib.suppress(DeliveryError):
                ref = await delivery.find_clip(job)
        if ref is None:
            return
        try:
            await delivery.delete_message(job, ref)
            log.info("job %s: removed its clip %s, posted as the job was stopped", job.id, ref)
        except DeliveryError as exc:
            log.error("job %s was stopped but its clip %s could not be removed: %s", job.id, ref, exc.user_message)

    async def _unless_stopped(self, job_id: str, step: Awaitable[_T]) -> _T:
        """Runs one network step, abandoned (``_Stopped``) as soon as the job's stop is asked for."""
        stop = self._stops.setdefault(job_id, asyncio.Event())
        if stop.is_set():
            if asyncio.iscoroutine(step):
                step.close()
            elif isinstance(step, asyncio.Future):
                step.cancel()
            raise _Stopped
        work = asyncio.ensure_future(step)
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
        if work.cancelled():
            raise _Stopped
        return work.result()

    async def _undelivered(self, delivery: Delivery, job: Job, reason: str, *, retryable: bool) -> None:
        """Keeps a rendered clip the platform refused; it stays reserved until delivered, cancelled or expired."""
        try:
            job = await self.store.transition(job.id, JobState.UNDELIVERED, expect=[JobState.DELIVERING], error=reason)
        except StopRequested:
            return  # _drive claims the row again and ends the job as asked
        await self._card(job)
        # Automatic retries are over; a person can still fix the cause (invite the bot, say) and retry.
        days = self.undelivered_ttl_s / 86400
        keep = f"{days:g} days" if days >= 1 else f"{max(1, round(self.undelivered_ttl_s / 60))} minutes"
        advice = (
            f"Use `/video retry {job.id}` to try again (you will be charged once), "
            f"or `/video cancel {job.id}` (not charged). I keep the clip for {keep}."
        )
        if not retryable:
            log.info("job %s undelivered for good reason: %s", job.id, reason)
        await self._tell(job, f"Your clip for job {job.id} is ready but I could not post it: {reason} {advice}")

    async def _stop(self, job: Job) -> None:
        """Ends a job whose stop was asked for, as asked (cancelled or refused), then tells the person."""
        to = job.stop_to or JobState.CANCELLED
        await self._end(job, to, job.stop_reason or "cancelled")

    async def _end(self, job: Job, to: JobState, reason: str) -> None:
        """Ends an unfinished job unpaid (cancelled, refused or failed): nothing of it is left to post.

        The provider's render is deleted, the clip file removed, the reservation released and the
        requester told "nothing was charged" only once all of that is true.
        """
        await self._handoff.drop(job.id)
        if job.provider_video_id and to is not JobState.FAILED:  # a failed render is the provider's to keep
            with contextlib.suppress(ProviderError):
                await self.bot.provider_for(job).delete(job.provider_video_id)
        try:
            ended = await self.store.transition(job.id, to, error=reason)
        except IllegalTransition as exc:
            log.info("job %s already ended (%s)", job.id, exc.job.state.value)
            return
        self._remove_clip(ended)
        with contextlib.suppress(OSError):
            self._handoff.clip_file(job.id).unlink()  # a download that finished before the row knew of it
        await self._card(ended)
        if self.bot.job_ended(ended):
            return  # a ``stop_job`` call is waiting on this job: it answers the person
        said = reason.strip()
        said = said if said.endswith((".", "!", "?")) else f"{said}."
        if to is JobState.CANCELLED:
            text = f"Job {job.id} cancelled. Nothing was charged."
        elif to is JobState.REFUSED:
            text = f"Job {job.id} was stopped: {said} Nothing was charged."
        else:
            text = f"Job {job.id} failed: {said} You were not charged."
        await self._tell(ended, text)

    def _remove_clip(self, job: Job) -> None:
        if job.clip_path:
            with contextlib.suppress(OSError):
                Path(job.clip_path).unlink()

    async def _fail(self, job: Job, reason: str) -> None:
        await self._end(job, JobState.FAILED, reason)

    async def _tell(self, job: Job, text: str) -> None:
        delivery = self.bot.deliveries.get(job.platform)
        if delivery is not None:
            with contextlib.suppress(DeliveryError):
                await delivery.notify(job, text)

    async def _card(self, job: Job) -> None:
        """Shows the job's latest state on its card (the core throttles and coalesces the edits)."""
        await self.bot.refresh_card(job)


def _doing(step: str) -> str:
    return {
        "submitting": "starting the render",
        "rendering": "waiting for the render",
        "downloading": "downloading the clip",
        "delivering": "posting the clip",
    }.get(step, step)
