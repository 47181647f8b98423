"""Waiting on a condition in tests: a bounded poll instead of a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(what: str, check: Callable[[], object], timeout: float = 20.0) -> None:
    """Polls ``check`` (sync or async) until it is true; fails with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
