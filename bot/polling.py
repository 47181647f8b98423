"""How long the worker waits before asking a provider about a render again.

Fixed 1 s polling finds a finished clip quickly but spends ~100 calls on a 100 s render (and
rate-limit budget with it); fixed 10 s polling is cheap but leaves the person waiting up to 10 s
after the clip is ready. ``AdaptivePoller`` gets close to the best of both: it polls rarely while
the render is far from done and densely when the progress rate says the end is near.
``benchmarks/bench_polling.py`` measures it against both fixed schedules.
"""

from __future__ import annotations

import math

DEFAULT_FIRST_DELAY = 2.0
# Without progress, the delay is this fraction of the time already waited: the schedule then
# grows geometrically (each delay is 1.5x the previous one once past ``first_delay``).
_NO_PROGRESS_GROWTH = 0.5
# Poll at this fraction of the estimated remaining time, so an estimate that is off by up to
# 2x still does not overshoot the end. Within 2 x min_interval of the estimated end this is
# below min_interval, so the clamp makes the last polls dense.
_REMAINING_FRACTION = 0.5


class AdaptivePoller:
    """A poll schedule from the provider's hint or the render's progress rate.

    The schedule is a pure function of its inputs (no state between calls), so a worker that
    restarts mid-render can build a new poller and carry on with the same schedule.

    Args:
        min_interval: the shortest delay ever returned, in seconds.
        max_interval: the longest delay ever returned, in seconds.
        first_delay: the delay right after creation, before any progress is known (default 2 s,
            clamped to the interval range).
    """

    def __init__(
        self, *, min_interval: float = 1.0, max_interval: float = 10.0, first_delay: float | None = None
    ) -> None:
        if not (math.isfinite(min_interval) and min_interval > 0):
            raise ValueError("min_interval must be a positive number of seconds")
        if not (math.isfinite(max_interval) and max_interval >= min_interval):
            raise ValueError("max_interval must be a number of seconds >= min_interval")
        if first_delay is not None and not math.isfinite(first_delay):
            raise ValueError("first_delay must be a finite number of seconds")
        self.min_interval = float(min_interval)
        self.max_interval = float(max_interval)
        self.first_delay = self._clamp(DEFAULT_FIRST_DELAY if first_delay is None else first_delay)

    def __repr__(self) -> str:
        return (
            f"AdaptivePoller(min_interval={self.min_interval}, max_interval={self.max_interval}, "
            f"first_delay={self.first_delay})"
        )

    def _clamp(self, seconds: float) -> float:
        return min(self.max_interval, max(self.min_interval, seconds))

    def next_delay(self, *, elapsed: float, progress: int, hint: float | None) -> float:
        """Seconds to wait before the next status request.

        Args:
            elapsed: seconds since the render was created (not since the last poll).
            progress: the last reported progress, 0-100.
            hint: the provider's own "poll after" in seconds (``openai-poll-after-ms``), or None. It
                is a floor: asking sooner than the service said is wasted, but when progress says the
                render is far from done there is no reason to ask as soon as allowed.

        Returns:
            A delay in ``[min_interval, max_interval]``, whatever the inputs (NaN and negative
            values are treated as "unknown").
        """
        floor = self.min_interval
        if hint is not None and not math.isnan(hint) and hint > 0:
            floor = self._clamp(hint)
        return max(floor, self._estimate(elapsed=elapsed, progress=progress))

    def _estimate(self, *, elapsed: float, progress: int) -> float:
        if not math.isfinite(elapsed) or elapsed < 0:
            elapsed = 0.0
        if not isinstance(progress, int | float) or not math.isfinite(progress):
            progress = 0
        progress = max(0, min(100, int(progress)))
        if progress >= 100:
            return self.min_interval  # reported done but not yet "completed": look again soon
        if progress == 0 or elapsed == 0:
            return self._clamp(max(self.first_delay, elapsed * _NO_PROGRESS_GROWTH))
        # Linear extrapolation from the average rate since creation. Time spent queued makes the
        # rate look slower, so the estimate errs long early on and converges as progress rises.
        remaining = elapsed * (100 - progress) / progress
        return self._clamp(remaining * _REMAINING_FRACTION)
