"""Watching renders: one poll schedule per render, one request for many when many are due.

Each render the worker waits on keeps its own adaptive schedule (``AdaptivePoller``). When only a
few are due they are asked about one by one, as before. When many are due at once (a busy bot
has hundreds waiting) the provider is asked for all of them in one go with
``VideoProvider.retrieve_many`` (the ``/v1/videos`` list, 100 to a page), and every render that
answer covers is rescheduled as if it had been polled. A thousand renders then cost about one
request a second instead of a hundred, which is what keeps a busy bot under a tenth of a core
(``benchmarks/bench_jobs_in_flight.py``).

The job waiting on a render hears only about changes: a new status or progress, a lasting error,
or an interruption (its job was cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from bot.polling import AdaptivePoller
from bot.providers.base import ProviderError, ProviderVideo, VideoProvider

log = logging.getLogger(__name__)

# Renders due within this many seconds of the earliest one are polled with it: asking a little
# early costs nothing, and it lets one sweep cover a whole crowd.
BATCH_WINDOW_SECONDS = 1.0
# A sweep is used when at least this many renders are due together (and at least twice as many
# as the list pages it may take); fewer are asked one by one.
BATCH_MIN_DUE = 4
_PAGE = 100  # renders per list page
# Single status requests in flight at once (more only queue up in the connection pool).
MAX_CONCURRENT_RETRIEVES = 16


@dataclass(eq=False)
class _Watched:
    video_id: str
    started: float  # unix time the render was asked for: the poll schedule is relative to it
    due: float  # loop time of the next poll
    min_interval: float = 0.0  # while a webhook is expected, polls are a slow safety net
    poll_again: bool = False  # a webhook came while a status request was on its way: ask once more at once
    last: ProviderVideo | None = None
    failures: int = 0
    in_flight: bool = False
    outcome: ProviderVideo | ProviderError | None = None
    interrupted: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class RenderWatch:
    """One render being watched; ``next_change`` waits for news about it."""

    def __init__(self, watched: _Watched) -> None:
        self._watched = watched

    async def next_change(self) -> ProviderVideo | None:
        """The render's status once it differs from the last one returned.

        Returns:
            The new status, or None when the watch was interrupted (see ``RenderWatcher.interrupt``).

        Raises:
            ProviderError: the provider answered with an error that asking again will not fix.
        """
        watched = self._watched
        await watched.changed.wait()
        watched.changed.clear()
        if watched.interrupted:
            watched.interrupted = False
            return None
        outcome, watched.outcome = watched.outcome, None
        if isinstance(outcome, ProviderError):
            raise outcome
        return outcome


class RenderWatcher:
    """Polls every render the worker waits on, from one task.

    Args:
        provider: the video service.
        clock: unix time (the bot's clock), for how long a render has been going.
        poller: the poll schedule (stateless, shared by every render).
        batch_min_due: how many renders must be due together for a sweep.
        rng: jitter, so renders started together drift apart.
        sleep: how the backoff after a failed status request is waited (tests pass a fast one).
    """

    def __init__(
        self,
        *,
        provider: VideoProvider,
        clock: Callable[[], float] = time.time,
        poller: AdaptivePoller | None = None,
        batch_min_due: int = BATCH_MIN_DUE,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._provider = provider
        self._sleep = sleep
        self._clock = clock
        self._poller = poller or AdaptivePoller()
        self._batch_min_due = batch_min_due
        self._rng = rng or random.Random()
        self._watched: dict[str, _Watched] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._retrieves = asyncio.Semaphore(MAX_CONCURRENT_RETRIEVES)
        self._pending: set[asyncio.Task[None]] = set()
        #: Counters, for tests and benchmarks: sweeps made and single retrieves sent.
        self.sweeps = 0
        self.single_retrieves = 0

    @property
    def watching(self) -> int:
        return len(self._watched)

    @contextlib.asynccontextmanager
    async def watch(self, video_id: str, *, started: float, min_interval: float = 0.0) -> AsyncIterator[RenderWatch]:
        """Watches ``video_id`` for as long as the block runs; the first poll is due at once.

        ``min_interval`` spaces the polls at least that far apart: when the provider will call a
        webhook on completion, polling is only the safety net for a webhook that never comes.
        """
        loop = asyncio.get_running_loop()
        watched = _Watched(video_id=video_id, started=started, due=loop.time(), min_interval=min_interval)
        self._watched[video_id] = watched
        self._ensure_running()
        self._wakeup.set()
        try:
            yield RenderWatch(watched)
        finally:
            if self._watched.get(video_id) is watched:
                del self._watched[video_id]

    def poll_now(self, video_id: str) -> bool:
        """Asks about ``video_id`` at once (a webhook said it finished); false when it is not watched."""
        watched = self._watched.get(video_id)
        if watched is None:
            return False
        if watched.in_flight:
            # The answer on its way may predate the completion; it must not push the next look 30 s out.
            watched.poll_again = True
        watched.due = asyncio.get_running_loop().time()
        self._wakeup.set()
        return True

    def interrupt(self, video_id: str) -> None:
        """Makes a pending ``next_change`` for ``video_id`` return None (its job needs a look)."""
        watched = self._watched.get(video_id)
        if watched is not None:
            watched.interrupted = True
            watched.changed.set()

    async def aclose(self) -> None:
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._pending.clear()

    # --- the polling task ------------------------------------------------------------------

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="reelbot-render-watch")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._watched:
            self._wakeup.clear()
            waiting = [w for w in self._watched.values() if not w.in_flight]
            earliest = min((w.due for w in waiting), default=math.inf)
            delay = earliest - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if math.isinf(delay) else delay):
                        await self._wakeup.wait()
                continue
            try:
                await self._poll_due(loop.time())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("render watch pass failed; trying again")
                await asyncio.sleep(1.0)
        self._task = None

    async def _poll_due(self, now: float) -> None:
        due = [w for w in self._watched.values() if not w.in_flight and w.due <= now + BATCH_WINDOW_SECONDS]
        pages = math.ceil(len(self._watched) / _PAGE)
        if len(due) >= max(self._batch_min_due, 2 * pages):
            covered = await self._sweep()
            due = [w for w in due if w.video_id not in covered and w.video_id in self._watched]
        for watched in due:
            watched.in_flight = True
            task = asyncio.create_task(self._retrieve_one(watched))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _sweep(self) -> set[str]:
        """Asks for every watched render at once (not only the due ones); returns the ids the answer covered."""
        watching = [w for w in self._watched.values() if not w.in_flight]
        since = min(w.started for w in watching)
        self.sweeps += 1
        try:
            found = await self._provider.retrieve_many([w.video_id for w in watching], since=since)
        except ProviderError as exc:
            log.info("render watch: listing renders failed (%s); asking one by one", exc.kind)
            return set()
        for watched in watching:
            video = found.get(watched.video_id)
            if video is not None and self._watched.get(watched.video_id) is watched:
                self._apply(watched, video)
        return set(found)

    async def _retrieve_one(self, watched: _Watched) -> None:
        try:
            async with self._retrieves:
                self.single_retrieves += 1
                video = await self._provider.retrieve(watched.video_id)
        except ProviderError as exc:
            if exc.retryable:
                watched.failures += 1
                await self._sleep(exc.retry_after or min(30.0, 1.5**watched.failures))
                watched.due = asyncio.get_running_loop().time()  # and ask again now
            else:
                watched.due = math.inf
                watched.outcome = exc
                watched.changed.set()
            return
        finally:
            watched.in_flight = False
            self._wakeup.set()
        self._apply(watched, video)

    def _apply(self, watched: _Watched, video: ProviderVideo) -> None:
        watched.failures = 0
        previous = watched.last
        watched.last = video
        elapsed = self._clock() - watched.started
        delay = self._poller.next_delay(elapsed=elapsed, progress=video.progress, hint=video.poll_after)
        if video.poll_after is None:
            delay *= self._rng.uniform(0.9, 1.1)  # renders started together drift apart
        delay = max(delay, watched.min_interval)
        if watched.poll_again:
            watched.poll_again, delay = False, 0.0
        watched.due = asyncio.get_running_loop().time() + delay
        seen = (video.status, video.progress, video.queue_position)
        if previous is None or (previous.status, previous.progress, previous.queue_position) != seen:
            watched.outcome = video
            watched.changed.set()
