"""A log line that is written at most once per interval, however often its cause repeats.

A flood of bad requests or ``accept()`` failures must cost a few bytes of log, not one record (or
one traceback) each: the first occurrence is logged at once, later ones are counted and the count
is logged with the next line after the interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    """``note(...)`` logs at most once per ``interval_s`` seconds and says how many were not logged."""

    def __init__(
        self,
        *,
        logger: logging.Logger,
        level: int = logging.WARNING,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._level = level
        self._interval_s = interval_s
        self._clock = clock
        self._next_at = float("-inf")
        self._suppressed = 0

    @property
    def suppressed(self) -> int:
        """How many notes since the last line were not logged."""
        return self._suppressed

    def note(self, message: str, *args: object) -> bool:
        """Logs ``message % args`` unless a line went out less than ``interval_s`` ago; True when logged."""
        now = self._clock()
        if now < self._next_at:
            self._suppressed += 1
            return False
        if self._suppressed:
            message += " (and %d more like it in the last %.0f s)"
            args = (*args, self._suppressed, self._interval_s)
        self._suppressed = 0
        self._next_at = now + self._interval_s
        self._logger.log(self._level, message, *args)
        return True


__all__ = ["RateLimitedLog"]
