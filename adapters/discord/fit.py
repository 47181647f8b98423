"""Making a finished clip fit Discord's upload limit, off the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.media import shrink_to_fit

#: Room left under the limit for rounding in Discord's accounting.
SAFETY_BYTES = 4 * 1024


def fitted_path(clip: Path, max_bytes: int) -> Path:
    return clip.with_name(f"{clip.stem}.discord-{max_bytes}.mp4")


async def fit_clip(clip: Path, max_bytes: int) -> Path:
    """A copy of ``clip`` re-encoded with PyAV to at most ``max_bytes`` (same duration, sound kept).

    The resolution is kept while the bitrate allows, else scaled down (``bot.media.shrink_to_fit``).

    Raises:
        bot.media.MediaError: when the clip can't get that small.
    """
    target = max(1, max_bytes - SAFETY_BYTES)
    dest = fitted_path(clip, target)
    return await asyncio.to_thread(shrink_to_fit, clip, dest, max_bytes=target)
